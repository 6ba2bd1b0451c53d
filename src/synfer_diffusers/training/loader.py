"""Training batches through a `torch.utils.data.DataLoader`: rows are decoded by the per-example
[`ExampleTransform`] in `dataloader_num_workers` worker processes, one batch at a time, so resident memory does not
depend on the dataset's size.

- **Memory-mapped datasets** (`Dataset`): the main process chooses the rows of micro-batch `m`
  ([`BatchOrder`], process `p` of `K` taking rows `p::K` of the global batch) and hands them to the DataLoader as
  a batch sampler; workers only decode. A resumed run starts the sampler at its micro-step, so it reads exactly
  the rows the uninterrupted run read, whatever the number of workers or processes.
- **Streams** (`IterableDataset`, `--streaming`): each process reads its shards
  (`datasets.distributed.split_dataset_by_node`) through a seeded shuffle buffer, repeated over epochs; a resumed
  run skips the examples already consumed before decoding anything. The order is a function of the seed, the
  number of processes and the number of workers; with more than one worker a resumed stream skips the same
  number of examples split over the workers' shards, so the exact order after a resume is guaranteed with
  `dataloader_num_workers` 0 or 1 only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Sampler

from ..data.loading import AnyDataset, load_training_dataset, num_examples, validate_columns, validate_image_column
from .config import TrainingConfig
from .data import ExampleTransform
from .determinism import AUGMENTATION_STREAM, BatchOrder, StepRandom


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields micro-batches `start, start + 1, ..., stop - 1` of a [`BatchOrder`] as `(micro_step, row index)`
    keys (the micro-step tells [`StepRows`] which augmentation draws the batch gets)."""

    def __init__(self, order: BatchOrder, start: int, stop: int):
        self.order, self.start, self.stop = order, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for micro_step in range(self.start, self.stop):
            yield [(micro_step, index) for index in self.order.indices(micro_step).tolist()]

    def __len__(self) -> int:
        return self.stop - self.start


def resolve_max_train_steps(config: TrainingConfig, dataset: AnyDataset, num_processes: int) -> int:
    """`max_train_steps`, or else `num_train_epochs` epochs of optimizer steps (diffusers' rule: the last partial
    batch dropped, `gradient_accumulation_steps` micro-batches a step). Raises before any model loads when
    neither is known."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    rows = num_examples(dataset)
    if rows is None:
        raise ValueError(
            "`max_train_steps` is required with a streamed dataset whose length is unknown (its metadata has no "
            "row count), since epochs cannot be counted."
        )
    micro_batches = rows // (config.train_batch_size * num_processes)
    steps = config.num_train_epochs * (micro_batches // config.gradient_accumulation_steps)
    if steps < 1:
        raise ValueError(
            f"The dataset's {rows} rows give no full optimizer step of `train_batch_size` {config.train_batch_size} x "
            f"{num_processes} processes x `gradient_accumulation_steps` {config.gradient_accumulation_steps}."
        )
    return steps


class AugmentationDraws:
    """`micro_step -> StepRandom` of the image augmentations of that micro-batch on this process (see
    [`StepRandom.for_micro_step`]); picklable, for DataLoader workers."""

    def __init__(self, config: TrainingConfig, process_index: int, num_processes: int):
        self.seed, self.accumulation = config.seed, config.gradient_accumulation_steps
        self.process_index, self.num_processes = process_index, num_processes

    def __call__(self, micro_step: int) -> StepRandom:
        return StepRandom.for_micro_step(
            self.seed, micro_step, self.accumulation, self.process_index, self.num_processes, AUGMENTATION_STREAM
        )


class StepRows(torch.utils.data.Dataset):
    """A memory-mapped dataset read one micro-batch at a time by `(micro_step, row index)` keys: the rows are
    decoded by the transform with that micro-step's augmentation draws."""

    def __init__(self, rows: datasets.Dataset, transform: ExampleTransform, draws: AugmentationDraws):
        self.rows, self.transform, self.draws = rows, transform, draws

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        micro_step = keys[0][0]
        batch = self.transform(self.rows[[index for _, index in keys]], self.draws(micro_step))
        return [dict(zip(batch, values)) for values in zip(*batch.values())]


def _collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def training_batches(
    dataset: AnyDataset, transform: ExampleTransform, config: TrainingConfig, process_index: int, num_processes: int
) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
    """`start_micro_step -> iterator of this process's micro-batches` (dicts of stacked [`ExampleTransform`]
    outputs), from that micro-step to the end of training."""
    stop = config.max_train_steps * config.gradient_accumulation_steps
    workers = {"num_workers": config.dataloader_num_workers, "collate_fn": _collate}
    draws = AugmentationDraws(config, process_index, num_processes)
    if isinstance(dataset, datasets.Dataset):
        order = BatchOrder(len(dataset), config.train_batch_size, config.seed, process_index, num_processes)
        rows = StepRows(dataset.select_columns(transform.columns), transform, draws)

        def mapped(start: int) -> Iterator[dict[str, torch.Tensor]]:
            return iter(DataLoader(rows, batch_sampler=StepBatchSampler(order, start, stop), **workers))

        return mapped

    stream = split_dataset_by_node(dataset.select_columns(transform.columns), process_index, num_processes)
    stream = stream.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer_size).repeat(None)

    def streamed(start: int) -> Iterator[dict[str, torch.Tensor]]:
        def decode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            return transform(batch, draws(start + indices[0] // config.train_batch_size))

        rows = stream.skip(start * config.train_batch_size).map(
            decode, with_indices=True, batched=True, batch_size=config.train_batch_size,
            remove_columns=transform.columns,
        )  # fmt: skip
        loader = DataLoader(rows, batch_size=config.train_batch_size, **workers)
        return (batch for _, batch in zip(range(stop - start), loader))

    return streamed


def load_train_split(config: TrainingConfig, required: Mapping[str, str], num_processes: int) -> AnyDataset:
    """The training split (memory-mapped, or streamed with `--streaming`) with its columns checked, and
    `config.max_train_steps` resolved ([`resolve_max_train_steps`]): every data error surfaces here, before any
    model loads.

    Args:
        required: `{column: what it must hold}` besides the image column.
    """
    dataset = load_config_split(config, config.dataset_split, config.max_train_samples, config.streaming)
    validate_columns(dataset, {config.image_column: "images (--image_column)", **required})
    validate_image_column(dataset, config.image_column)
    if isinstance(dataset, datasets.Dataset):  # the global batch must fit: BatchOrder raises otherwise
        BatchOrder(len(dataset), config.train_batch_size, config.seed, num_processes=num_processes)
    config.max_train_steps = resolve_max_train_steps(config, dataset, num_processes)
    return dataset


def load_config_split(
    config: TrainingConfig, split: str, max_samples: int | None = None, streaming: bool = False
) -> AnyDataset:
    """One split of the configured data: `--dataset_name`, or `--train_data_dir` through the `imagefolder` builder
    (see [`load_training_dataset`])."""
    return load_training_dataset(
        config.dataset_source, split, max_samples, streaming, imagefolder=config.train_data_dir is not None
    )
