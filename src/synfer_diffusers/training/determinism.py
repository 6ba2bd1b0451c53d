"""Deterministic data order and randomness.

The rows of each micro-batch ([`BatchOrder`]) and every random draw made for them ([`StepRandom`]) are functions
of the seed, the step and each row's position in the step's *global* batch, never of the process that handles
the row:

- a run resumed from a checkpoint repeats the uninterrupted run exactly (same rows, same noise);
- K processes with batch `B`, or one process accumulating K micro-batches of `B`, draw what one process with
  batch `K * B` draws, so their result equals the one-process run at the same global batch (up to the order of
  float reductions);
- DataLoader workers only decode rows the main process chose, so their number changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


AUGMENTATION_STREAM = 2
"""[`StepRandom`] stream of the image augmentations (random crops and flips), independent of the loss's draws."""


class StepRandom:
    """Every random draw of one micro-batch (noise, timesteps, dropout masks, AU smoothing, posterior samples).

    An optimizer step covers `accumulation * num_processes * B` rows: micro-batch `k` holds rows
    `[k * P * B, (k + 1) * P * B)` of the step, of which process `p` takes `p::P` (as [`BatchOrder`] hands out
    rows). Each method takes the *local* batch size (the first dimension of `shape`), draws for the whole step
    from the CPU generator of `(seed, step)` and returns this micro-batch's and process's rows. So 1 process with
    batch `K * A * B`, `K` processes with batch `A * B`, or `K` processes accumulating `A` micro-batches of `B`
    draw the same numbers for the same rows; with one process and no accumulation this is a plain draw.
    `stream` separates independent sequences of one step: 1 for the loss, [`AUGMENTATION_STREAM`] for the image
    augmentations drawn in DataLoader workers.
    """

    def __init__(
        self,
        seed: int,
        step: int,
        micro_batch: int = 0,
        accumulation: int = 1,
        process_index: int = 0,
        num_processes: int = 1,
        stream: int = 1,
    ):
        self.generator = _generator(seed, step, stream)
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.process_index, self.num_processes = process_index, num_processes

    @classmethod
    def for_micro_step(
        cls, seed: int, micro_step: int, accumulation: int, process_index: int, num_processes: int, stream: int
    ) -> StepRandom:
        """The draws of micro-batch `micro_step` counted over the whole run (`step * accumulation + micro`)."""
        step, micro = divmod(micro_step, accumulation)
        return cls(seed, step, micro, accumulation, process_index, num_processes, stream)

    def _draw(self, sample: Callable[..., torch.Tensor], shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        rows = shape[0] * self.num_processes  # one micro-batch over all processes
        values = sample((rows * self.accumulation, *shape[1:]), generator=self.generator)
        return values[self.micro_batch * rows : (self.micro_batch + 1) * rows][
            self.process_index :: self.num_processes
        ]

    def randn(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        return self._draw(torch.randn, shape)

    def rand(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        return self._draw(torch.rand, shape)

    def randint(self, high: int, batch_size: int) -> torch.Tensor:  # (batch_size,) int64 in [0, high)
        return self._draw(partial(torch.randint, 0, high), (batch_size,))

    @contextmanager
    def global_rng(self) -> Iterator[None]:
        """Seeds torch's global RNG (CPU and CUDA) from this micro-batch's and process's draw for the block and
        restores it after, for draws that modules make from the global RNG (dropout masks). Without it a resumed
        run gets other masks: creating the resumed DataLoader's iterator advances the global RNG."""
        seed = int(self.randint(2**62, 1))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            yield


@dataclass
class BatchOrder:
    """Which rows form each micro-batch: epoch `e` walks a permutation seeded by `(seed, e)`, dropping the last
    partial batch. With several processes the global batch of `batch_size * num_processes` rows is split
    between them (process `p` takes rows `p::num_processes`)."""

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
