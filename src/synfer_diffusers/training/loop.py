"""The training loop shared by the examples: gradient accumulation, clipping, trackers, progress bar,
`accelerator.save_state` checkpoints, `--resume_from_checkpoint` and the validation callback."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..hub_utils import push_folder_to_hub
from .checkpoints import (
    CHECKPOINT_PREFIX,
    Stateful,
    checkpoint_step,
    register_checkpoint_hooks,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig
from .determinism import StepRandom


@dataclass
class TrainingSummary:
    """What one call of [`run_training_loop`] did: the step it started from (> 0 after a resume), the step it
    reached, the loss of every optimizer step it ran (averaged over micro-batches and processes) and, where the loss
    has named parts ([`LossParts`]), each part's values the same way."""

    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class LossParts:
    """A loss with named parts, e.g. `LossParts(total, {"diffusion": d, "au_consistency": a})`: the loop optimises
    `loss`, logs each part as `loss/<name>` and records it in [`TrainingSummary.parts`]."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


def tracker_config(config: TrainingConfig) -> dict[str, Any]:
    """The configuration as tracker hyper-parameters (TensorBoard takes scalars and strings only)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(config).items()}


def _start(accelerator: Accelerator, config: TrainingConfig, project: str) -> int:
    """Creates `output_dir`, writes `training_config.json`, starts the trackers and loads the checkpoint that
    `--resume_from_checkpoint` names; returns the step to start from."""
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "training_config.json"), "w") as f:
            json.dump(asdict(config), f, indent=2)
    if config.report_to is not None:
        accelerator.init_trackers(project, config=tracker_config(config))
    checkpoint = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
    if checkpoint is None:
        if config.resume_from_checkpoint is not None:
            accelerator.print(f"No checkpoint in {config.output_dir}: starting from step 0.")
        return 0
    accelerator.load_state(checkpoint)
    accelerator.print(f"Resumed from {checkpoint}.")
    return checkpoint_step(checkpoint)


def run_training_loop(
    accelerator: Accelerator,
    config: TrainingConfig,
    batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    compute_loss: Callable[[dict[str, torch.Tensor], StepRandom], torch.Tensor | LossParts],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    models: Mapping[str, nn.Module],
    after_step: Callable[[int], None] | None = None,
    validate: Callable[[int], None] | None = None,
    project: str = "training",
    states: Mapping[str, Stateful] | None = None,
) -> TrainingSummary:
    """Runs optimizer steps up to `config.max_train_steps`, after loading `--resume_from_checkpoint`.

    The models and optimizer must be `accelerator.prepare`d; the learning-rate scheduler is stepped here once per
    optimizer step. Checkpoints hold the trainable part of the models, the optimizer, the learning-rate scheduler
    and `states` (see [`~synfer_diffusers.training.checkpoints.register_checkpoint_hooks`]).

    Args:
        batches: `start_micro_step -> iterator of this process's micro-batches` (see
            [`~synfer_diffusers.training.loader.training_batches`]).
        compute_loss: `(micro-batch, random) -> scalar loss` (or [`LossParts`]); all its random draws must come
            from `random`.
        models: the prepared models being trained (gradients are synchronised once per optimizer step).
        after_step: called with the number of completed steps after each optimizer step (e.g. an EMA update).
        validate: called on the main process every `config.validation_steps` steps and at the last step, under
            `accelerator.autocast()`.
        states: more objects with `state_dict`/`load_state_dict` to checkpoint, by name (e.g. an `EMAModel`).
    """
    register_checkpoint_hooks(accelerator, {"lr_scheduler": lr_scheduler, **(states or {})})
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    start_step = _start(accelerator, config, project)
    summary = TrainingSummary(start_step=start_step, final_step=start_step)
    accumulation = config.gradient_accumulation_steps
    micro_batches = batches(start_step * accumulation)
    progress = tqdm(
        total=config.max_train_steps, initial=start_step, desc=project, disable=not accelerator.is_local_main_process
    )
    for step in range(start_step, config.max_train_steps):
        step_loss, step_parts = 0.0, {}
        for micro in range(accumulation):
            random = StepRandom(
                config.seed, step, micro, accumulation, accelerator.process_index, accelerator.num_processes
            )
            with accelerator.accumulate(*models.values()):
                loss = compute_loss(next(micro_batches), random)
                if isinstance(loss, LossParts):
                    for name, part in loss.parts.items():
                        value = accelerator.gather(part.detach().float()[None]).mean().item() / accumulation
                        step_parts[name] = step_parts.get(name, 0.0) + value
                    loss = loss.loss
                accelerator.backward(loss)
                if config.max_grad_norm > 0 and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += accelerator.gather(loss.detach()[None]).mean().item() / accumulation
        lr_scheduler.step()
        done = step + 1
        if after_step is not None:
            after_step(done)
        summary.losses.append(step_loss)
        for name, value in step_parts.items():
            summary.parts.setdefault(name, []).append(value)
        summary.final_step = done
        logs = {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0], **{f"loss/{n}": v for n, v in step_parts.items()}}
        accelerator.log(logs, step=done)
        progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{logs['lr']:.2e}")
        progress.update()
        last = done == config.max_train_steps
        if done % config.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, config.output_dir, done, config.checkpoints_total_limit)
        if validate is not None and (done % config.validation_steps == 0 or last) and accelerator.is_main_process:
            with accelerator.autocast():  # frozen parts may be in half precision, what trains in float32
                validate(done)
    progress.close()
    return summary


def push_output_to_hub(output_dir: str, hub_model_id: str | None, logging_dir: str = "logs") -> str:
    """Uploads `output_dir` (the model and its card, without `checkpoint-*` folders and tracker logs) to
    `hub_model_id` (default: the folder's name) in one commit; returns the commit URL."""
    repo_id = hub_model_id or os.path.basename(os.path.abspath(output_dir))
    ignore = [f"{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**", f"{logging_dir}/**"]
    return push_folder_to_hub(output_dir, repo_id, commit_message="End of training", ignore_patterns=ignore)


def finish_run(accelerator: Accelerator, config: TrainingConfig) -> None:
    """After the main process saved the model and card: `--push_to_hub`, then `accelerator.end_training()`."""
    if accelerator.is_main_process and config.push_to_hub:
        url = push_output_to_hub(config.output_dir, config.hub_model_id, config.logging_dir)
        accelerator.print(f"Pushed {config.output_dir}: {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
