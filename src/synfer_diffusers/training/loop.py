"""The training loop shared by the examples: progress bar, checkpoints, resume and the validation callback."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import load_latest_training_state, save_training_state
from .config import TrainingConfig
from .determinism import step_generator


@dataclass
class TrainingSummary:
    """What one call of [`run_training_loop`] did: the step it started from (> 0 after a resume), the step it
    reached, and the loss of every step it ran (averaged over processes)."""

    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)


def run_training_loop(
    accelerator: Accelerator,
    config: TrainingConfig,
    compute_loss: Callable[[int, torch.Generator], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    checkpoint_modules: Mapping[str, nn.Module],
    after_step: Callable[[int], None] | None = None,
    validate: Callable[[int], None] | None = None,
    description: str = "Training",
) -> TrainingSummary:
    """Runs optimizer steps up to `config.max_train_steps`, resuming first if `config.resume`. Creates
    `output_dir` and writes the configuration to `training_config.json` there.

    Args:
        compute_loss: `(step, generator) -> scalar loss` for that step's batch; all its random draws must come
            from `generator` (see [`step_generator`]).
        checkpoint_modules: unwrapped modules whose trained parameters go into checkpoints (an EMA copy too).
        after_step: called with the number of completed steps after each optimizer step (e.g. an EMA update).
        validate: called on the main process every `config.validation_steps` steps and at the last step.
    """
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "training_config.json"), "w") as f:
            json.dump(asdict(config), f, indent=2)
    start_step = 0
    if config.resume:
        state = load_latest_training_state(config.output_dir, checkpoint_modules, optimizer, lr_scheduler)
        if state is None:
            accelerator.print(f"--resume: no checkpoint in {config.output_dir}, starting from step 0.")
        else:
            start_step = state.step
            accelerator.print(f"Resumed from {state.path} at step {start_step}.")
    summary = TrainingSummary(start_step=start_step, final_step=start_step)
    progress = tqdm(
        total=config.max_train_steps,
        initial=start_step,
        desc=description,
        disable=not accelerator.is_local_main_process,
    )
    for step in range(start_step, config.max_train_steps):
        loss = compute_loss(step, step_generator(config.seed, step, accelerator.process_index))
        accelerator.backward(loss)
        if config.max_grad_norm > 0 and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if after_step is not None:
            after_step(done)
        summary.losses.append(accelerator.gather(loss.detach()[None]).mean().item())
        summary.final_step = done
        progress.set_postfix(loss=f"{summary.losses[-1]:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        progress.update()
        last = done == config.max_train_steps
        if done % config.checkpointing_steps == 0 or last:
            if accelerator.is_main_process:
                save_training_state(
                    config.output_dir, done, checkpoint_modules, optimizer, lr_scheduler,
                    total_limit=config.checkpoints_total_limit,
                )  # fmt: skip
            accelerator.wait_for_everyone()
        if validate is not None and (done % config.validation_steps == 0 or last) and accelerator.is_main_process:
            validate(done)
    progress.close()
    return summary
