"""Checkpoints in diffusers' convention: `output_dir/checkpoint-{step}` folders written by
`accelerator.save_state` (prepared models as safetensors, optimizer, registered objects such as the learning-rate
scheduler and an `EMAModel`, RNG states) and read by `accelerator.load_state`, so they work under DDP, DeepSpeed
and FSDP alike. Before a save, the oldest folders are removed so that at most `checkpoints_total_limit` remain.
"""

from __future__ import annotations

import os
import shutil

from accelerate import Accelerator

CHECKPOINT_PREFIX = "checkpoint-"


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
    none: a fresh start), else a `checkpoint-{step}` path or a name inside `output_dir`."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = resume_from_checkpoint
    if not os.path.isdir(path):
        path = os.path.join(output_dir, resume_from_checkpoint)
    if not os.path.isdir(path) or checkpoint_step(path) is None:
        raise ValueError(
            f"`resume_from_checkpoint`: {resume_from_checkpoint!r} is neither `latest` nor a `checkpoint-<step>` "
            f"folder (in {output_dir!r} or as a path)."
        )
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: int | None) -> str:
    """`accelerator.save_state` into `output_dir/checkpoint-{step}` (every process takes part, as DeepSpeed and
    FSDP need), after the main process removed the oldest folders beyond `total_limit - 1`."""
    if accelerator.is_main_process and total_limit is not None:
        existing = [path for path in list_checkpoints(output_dir) if checkpoint_step(path) != step]
        for stale in existing[: max(0, len(existing) - total_limit + 1)]:
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    path = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    accelerator.save_state(path)
    return path
