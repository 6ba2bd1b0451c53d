"""Deterministic data order and randomness: the batch of step `s` ([`BatchOrder`]) and every random draw of that
step ([`step_generator`]) are functions of `(seed, s)`, so a run resumed from a checkpoint repeats the
uninterrupted run exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def step_generator(seed: int, step: int, process_index: int = 0) -> torch.Generator:
    """The CPU generator for every random draw of `step` (noise, timesteps, dropout masks, AU smoothing): a
    function of `(seed, step, process)`, so a resumed run draws exactly what the uninterrupted run drew."""
    return _generator(seed, step, process_index, 1)


@dataclass
class BatchOrder:
    """Which rows form each step's batch: epoch `e` walks a permutation seeded by `(seed, e)`, dropping the last
    partial batch. With several processes the global batch of `batch_size * num_processes` rows is split
    between them."""

    num_samples: int
    batch_size: int
    seed: int
    process_index: int = 0
    num_processes: int = 1

    def __post_init__(self) -> None:
        global_batch = self.batch_size * self.num_processes
        if global_batch > self.num_samples:
            raise ValueError(
                f"`train_batch_size` x processes ({global_batch}) exceeds the {self.num_samples} training rows."
            )
        self.steps_per_epoch = self.num_samples // global_batch

    def indices(self, step: int) -> torch.Tensor:  # (batch_size,)
        epoch, position = divmod(step, self.steps_per_epoch)
        permutation = torch.randperm(self.num_samples, generator=_generator(self.seed, epoch, 0))
        global_batch = self.batch_size * self.num_processes
        batch = permutation[position * global_batch : (position + 1) * global_batch]
        return batch[self.process_index :: self.num_processes]
