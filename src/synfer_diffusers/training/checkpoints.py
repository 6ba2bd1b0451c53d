"""Checkpoints: safetensors + JSON only (nothing is unpickled), written atomically, the last `K` kept."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"


@dataclass
class TrainingState:
    """What [`load_training_state`] restored: the step reached, the caller's `extra` dict and the folder."""

    step: int
    extra: dict[str, Any]
    path: str


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (`requires_grad=True`). Frozen weights are not stored: a resumed run rebuilds
    them from the pretrained model (or the seed) exactly as the first run did."""
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def _flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors, with their few scalars for JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, python_state, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(python_state, dtype=torch.int64)
    return tensors, {"numpy": [kind, position, has_gauss, cached_gaussian], "python": [version, gauss_next]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, position, has_gauss, cached_gaussian = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(tensors["python"].tolist()), gauss_next))


def _checkpoint_step(name: str) -> int | None:
    suffix = name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Complete `checkpoint-{step}` folders of `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(step, name) for name in os.listdir(output_dir) if (step := _checkpoint_step(name)) is not None]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_training_state(
    output_dir: str | os.PathLike,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra: Mapping[str, Any] | None = None,
    total_limit: int | None = None,
) -> str:
    """Writes `output_dir/checkpoint-{step}` and returns its path.

    Layout: `{name}.safetensors` per module ([`trainable_state_dict`]), `optimizer.safetensors` (per-parameter
    state tensors, keys `"{param index}.{name}"`), `rng_state.safetensors`, and `training_state.json` (step,
    `extra`, optimizer param groups and scalars, LR-scheduler state, RNG scalars). The folder is written under a
    temporary name and renamed, so a killed run never leaves a partial `checkpoint-*`; then only the newest
    `total_limit` checkpoints are kept.
    """
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    temporary = os.path.join(output_dir, f".{CHECKPOINT_PREFIX}{step}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    for name, module in modules.items():
        save_file(trainable_state_dict(module), os.path.join(temporary, f"{name}.safetensors"))
    optimizer_tensors, optimizer_meta = _flatten_optimizer_state(optimizer.state_dict())
    save_file(optimizer_tensors, os.path.join(temporary, "optimizer.safetensors"))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, os.path.join(temporary, "rng_state.safetensors"))
    state = {
        "step": step,
        "modules": list(modules),
        "optimizer": optimizer_meta,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "rng": rng_meta,
        "extra": dict(extra or {}),
    }
    with open(os.path.join(temporary, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1)
    if os.path.exists(final):  # a rerun reached the same step: swap the folders, never mix their files
        shutil.rmtree(final)
    os.replace(temporary, final)
    if total_limit is not None:
        for stale in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(stale)
    return final


def _load_module_state(module: nn.Module, path: str) -> None:
    tensors = load_file(path)
    expected = trainable_state_dict(module).keys()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint file {path} does not match the model being trained (same options as the first run?): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    module.load_state_dict(tensors, strict=False)


def load_training_state(
    checkpoint_dir: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> TrainingState:
    """Restores what [`save_training_state`] wrote into the given (already built) modules, optimizer, scheduler
    and the global RNGs."""
    with open(os.path.join(checkpoint_dir, STATE_FILE)) as f:
        state = json.load(f)
    if sorted(state["modules"]) != sorted(modules):
        raise ValueError(f"Checkpoint {checkpoint_dir} holds modules {state['modules']}, expected {list(modules)}.")
    for name, module in modules.items():
        _load_module_state(module, os.path.join(checkpoint_dir, f"{name}.safetensors"))
    optimizer_tensors = load_file(os.path.join(checkpoint_dir, "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer_state(optimizer_tensors, state["optimizer"]))
    if lr_scheduler is not None and state["lr_scheduler"] is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    _set_rng_state(load_file(os.path.join(checkpoint_dir, "rng_state.safetensors")), state["rng"])
    return TrainingState(step=state["step"], extra=state["extra"], path=str(checkpoint_dir))


def load_latest_training_state(
    output_dir: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> TrainingState | None:
    """[`load_training_state`] from the newest `checkpoint-*` of `output_dir`; `None` when there is none."""
    latest = find_latest_checkpoint(output_dir)
    return load_training_state(latest, modules, optimizer, lr_scheduler) if latest else None
