"""Checkpoints in diffusers' convention: `output_dir/checkpoint-{step}` folders written by
`accelerator.save_state` and read by `accelerator.load_state`, so they work under DDP, DeepSpeed and FSDP alike.
Before a save, the oldest folders are removed so that at most `checkpoints_total_limit` remain.

[`register_checkpoint_hooks`] shapes what a folder holds, as diffusers' LoRA scripts do with accelerate's state
hooks:

- `trainable_model_{i}.safetensors`: of each prepared model, only what trains (parameters with `requires_grad`)
  and its buffers, so a LoRA or AU-adapter checkpoint of Stable Diffusion 1.5 weighs megabytes, not the 3.4 GB
  frozen base (which the run loads from its pretrained folder again on resume);
- `{name}.safetensors` + `{name}.json`: the tensors and the rest of each extra state (the learning-rate
  scheduler, an `EMAModel`), in place of accelerate's `custom_checkpoint_{i}.pkl`, which `load_state` unpickles
  without restriction;
- accelerate's own `optimizer.bin` and `random_states_{i}.pkl`, which it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written; `checkpoint_step` does not read it
TRAINABLE_WEIGHTS_NAME = "trainable_model_{index}.safetensors"
CHECKPOINT_FILES = (
    TRAINABLE_WEIGHTS_NAME.format(index=0), "lr_scheduler.safetensors", "lr_scheduler.json", "random_states_0.pkl"
)
"""Files every checkpoint of the training loop holds: the first model's trainable weights, the learning-rate
scheduler and the main process's random states."""
_TENSOR = "__tensor__"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a `checkpoint-{step}` folder name; `None` for other names."""
    name = os.path.basename(os.path.normpath(path))
    suffix = name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """The `checkpoint-{step}` folders of `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(step, name) for name in os.listdir(output_dir) if (step := checkpoint_step(name)) is not None]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> str | None:
    """The folder `--resume_from_checkpoint` names: `latest` -> the newest of `output_dir` (`None` when there is
    none: a fresh start), else a `checkpoint-{step}` path or a name inside `output_dir`. A damaged folder raises a
    `ValueError` ([`check_checkpoint`])."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            return None
        path = checkpoints[-1]
    else:
        path = resume_from_checkpoint
        if not os.path.isdir(path):
            path = os.path.join(output_dir, resume_from_checkpoint)
    if not os.path.isdir(path) or checkpoint_step(path) is None:
        raise ValueError(
            f"`resume_from_checkpoint`: {resume_from_checkpoint!r} is neither `latest` nor a `checkpoint-<step>` "
            f"folder (in {output_dir!r} or as a path)."
        )
    check_checkpoint(path)
    return path


def checkpoint_damage(path: str) -> str | None:
    """What is wrong with a checkpoint folder (a save killed half-way, a damaged disk), `None` if nothing: a file
    every checkpoint of [`run_training_loop`] holds is missing ([`CHECKPOINT_FILES`]), or a safetensors, JSON or
    `torch.save` file cannot be read (its header, its length, its zip directory; tensor values are not read)."""
    for name in CHECKPOINT_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            return f"{name} is missing"
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        try:
            if name.endswith(".safetensors"):
                with safe_open(file, "pt"):
                    pass
            elif name.endswith(".json"):
                with open(file) as f:
                    json.load(f)
            elif name.endswith((".bin", ".pkl")) and not zipfile.is_zipfile(file):
                return f"{name} is not a complete torch.save file"
        except (SafetensorError, ValueError, OSError) as error:
            return f"{name} cannot be read: {str(error).splitlines()[0]}"
    return None


def check_checkpoint(path: str) -> None:
    """Raises a `ValueError` naming `resume_from_checkpoint` if [`checkpoint_damage`] finds the folder damaged."""
    damage = checkpoint_damage(path)
    if damage is not None:
        raise ValueError(
            f"`resume_from_checkpoint`: {path} is damaged ({damage}); delete it to resume from an earlier "
            "checkpoint, or name one."
        )


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: int | None) -> str:
    """`accelerator.save_state` into `output_dir/checkpoint-{step}` (every process takes part, as DeepSpeed and
    FSDP need), written as `checkpoint-{step}.partial` and renamed once complete, so a kill at any instant leaves the
    previous checkpoints whole and `latest` never names a half-written folder; then the main process keeps it and the
    newest `total_limit - 1` others."""
    path = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    partial = path + PARTIAL_SUFFIX
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)  # left by a save killed half-way
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(partial, path)
        others = [other for other in list_checkpoints(output_dir) if other != path]
        for stale in others[: max(0, len(others) - total_limit + 1)] if total_limit is not None else ():
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return path


def frozen_parameter_names(model: nn.Module) -> set[str]:
    """State-dict names of `model`'s parameters that do not train (every alias of a shared one)."""
    return {name for name, param in model.named_parameters(remove_duplicate=False) if not param.requires_grad}


def _split_tensors(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """`value` with every tensor moved into `tensors[key...]` and replaced by `{"__tensor__": key...}`."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"State {key!r} has non-string keys; it cannot be saved as JSON.")
        return {k: _split_tensors(v, tensors, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    return value


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of [`_split_tensors`]."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {k: _join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    return value


def save_training_state(state: Stateful, directory: str, name: str) -> None:
    """`state.state_dict()` as `{name}.safetensors` (its tensors) and `{name}.json` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _split_tensors(state.state_dict(), tensors, name)
    save_file(tensors, os.path.join(directory, f"{name}.safetensors"))
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(structure, f)


def load_training_state(state: Stateful, directory: str, name: str) -> None:
    """Restores what [`save_training_state`] wrote."""
    with open(os.path.join(directory, f"{name}.json")) as f:
        structure = json.load(f)
    state.load_state_dict(_join_tensors(structure, load_file(os.path.join(directory, f"{name}.safetensors"))))


def load_trainable_weights(model: nn.Module, path: str) -> None:
    """Loads a `trainable_model_{i}.safetensors` into `model`; every key it lacks must be a frozen parameter."""
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    absent = set(missing) - frozen_parameter_names(model)
    if unexpected or absent:
        raise ValueError(
            f"{path} does not match the model being trained (unexpected: {sorted(unexpected)[:3]}, missing trainable:"
            f" {sorted(absent)[:3]}): resume with the options of the run that wrote it."
        )


def register_checkpoint_hooks(accelerator: Accelerator, states: Mapping[str, Stateful]) -> None:
    """Makes `accelerator.save_state` / `load_state` write and read the trainable part of each prepared model and
    `states` (name -> object with `state_dict`/`load_state_dict`) as safetensors and JSON (see the module doc)."""

    def save_hook(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
        if accelerator.is_main_process:
            for index, (model, state) in enumerate(zip(models, weights)):
                frozen = frozen_parameter_names(model)
                trainable = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in frozen}
                save_file(trainable, os.path.join(output_dir, TRAINABLE_WEIGHTS_NAME.format(index=index)))
            for name, state in states.items():
                save_training_state(state, output_dir, name)
        weights.clear()  # accelerate writes no whole-model files

    def load_hook(models: list[nn.Module], input_dir: str) -> None:
        for index, model in enumerate(models):
            load_trainable_weights(model, os.path.join(input_dir, TRAINABLE_WEIGHTS_NAME.format(index=index)))
        models.clear()  # loaded here, not by accelerate
        for name, state in states.items():
            load_training_state(state, input_dir, name)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
