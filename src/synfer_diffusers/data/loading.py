"""Dataset loading shared by storage (FEText), the command line and the training scripts: one split of a local folder,
parquet shards or a Hub dataset, memory-mapped or streamed; its column checks (a `ValueError` naming the column
before any model loads); expression labels matched by name; images decoded into tensors."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetGenerationError
from PIL import Image
from tqdm.auto import tqdm

from ..facs import EXPRESSIONS, AUSpace, ExpressionVocabulary
from ..hub_utils import is_hub_repo_id, load_error_reason
from ..image_utils import resize_and_crop

__all__ = [
    "AnyDataset",
    "ExpressionLabels",
    "dataset_columns",
    "dataset_label_names",
    "expression_label_ids",
    "first_row",
    "is_local_path",
    "is_number_list",
    "load_action_units",
    "load_images",
    "load_training_dataset",
    "num_examples",
    "pixel_tensor",
    "validate_action_units_column",
    "validate_columns",
    "validate_image_column",
]


def is_local_path(name_or_path: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, `./`, `~`, deeper paths) is a local path
    (the complement of [`~synfer_diffusers.hub_utils.is_hub_repo_id`])."""
    return not is_hub_repo_id(name_or_path)


AnyDataset = datasets.Dataset | datasets.IterableDataset


def load_training_dataset(
    name_or_path: str, split: str, max_samples: int | None = None, streaming: bool = False, imagefolder: bool = False
) -> AnyDataset:
    """Loads one split of a dataset, memory-mapped (a `Dataset`) or streamed (an `IterableDataset`).

    Neither decodes anything: rows are read when a batch asks for them, so resident memory does not grow with
    the dataset's size.

    Args:
        name_or_path: a folder written by `Dataset.save_to_disk` (read with `load_from_disk`), any folder that
            `datasets.load_dataset(folder)` reads (parquet shards, imagefolder; works offline), or a Hub id.
        split: the split to return (a `save_to_disk` folder holding a single `Dataset` has no split names).
        max_samples: keep only the first `max_samples` rows.
        streaming: return an `IterableDataset` (`load_dataset(..., streaming=True)`; a `save_to_disk` folder is
            turned into one with `to_iterable_dataset`).
        imagefolder: `name_or_path` is a local folder for the `imagefolder` builder (diffusers' `--train_data_dir`:
            images and a `metadata.jsonl` / `metadata.csv`); errors then name `train_data_dir`.
    """
    option = "train_data_dir" if imagefolder else "dataset_name"
    if imagefolder or is_local_path(name_or_path):
        path = os.path.expanduser(name_or_path)
        if not os.path.isdir(path):
            raise ValueError(f"`{option}`: no dataset folder at {name_or_path!r}.")
        saved_to_disk = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
        try:
            if imagefolder:
                loaded = datasets.load_dataset("imagefolder", data_dir=path, streaming=streaming)
            elif saved_to_disk:
                loaded = datasets.load_from_disk(path)
            else:
                loaded = datasets.load_dataset(path, streaming=streaming)
        except (OSError, ValueError, DatasetGenerationError) as error:  # no data files, a corrupt parquet file, ...
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"`{option}`: {name_or_path!r} could not be read as a dataset: {reason}") from error
    else:
        try:
            loaded = datasets.load_dataset(name_or_path, streaming=streaming)
        except Exception as error:  # offline, unknown repo, ...: say which option is wrong
            raise ValueError(
                f"`dataset_name`: {name_or_path!r} is not a local folder and could not be loaded from the Hub: "
                f"{load_error_reason(error)}"
            ) from error
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in loaded:
            raise ValueError(f"`dataset_split`: {name_or_path!r} has splits {list(loaded)}, not {split!r}.")
        loaded = loaded[split]
    if streaming and isinstance(loaded, datasets.Dataset):
        loaded = loaded.to_iterable_dataset(num_shards=max(1, min(64, len(loaded) // 1024)))
    if max_samples is not None:
        loaded = loaded.take(max_samples) if streaming else loaded.select(range(min(max_samples, len(loaded))))
    if (len(loaded) if isinstance(loaded, datasets.Dataset) else first_row(loaded)) in (0, None):
        raise ValueError(f"`{option}`: split {split!r} of {name_or_path!r} is empty.")
    return loaded


def first_row(dataset: AnyDataset, columns: Sequence[str] | None = None) -> dict | None:
    """The first row (only `columns`, when given, so no image is decoded for a column check); `None` if empty."""
    if columns is not None:
        dataset = dataset.select_columns(list(columns))
    if isinstance(dataset, datasets.Dataset):
        return dataset[0] if len(dataset) else None
    return next(iter(dataset.take(1)), None)


def dataset_columns(dataset: AnyDataset) -> list[str]:
    """Column names, read from the first row where a stream does not declare its features."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(first_row(dataset) or {})


def num_examples(dataset: AnyDataset) -> int | None:
    """Rows of the split, or `None` for a stream whose metadata does not say."""
    if isinstance(dataset, datasets.Dataset):
        return len(dataset)
    splits = dataset.info.splits
    return splits[dataset.split].num_examples if splits and dataset.split in splits else None


def validate_columns(dataset: AnyDataset, required: Mapping[str, str]) -> None:
    """Raises a `ValueError` listing every required column the dataset lacks.

    Args:
        required: `{column: what it must hold}`, e.g. `{"text": "captions (--text_column)"}`.
    """
    columns = dataset_columns(dataset)
    missing = [f"{column!r} ({description})" for column, description in required.items() if column not in columns]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {', '.join(missing)}; its columns are {columns}. "
            "Point the `--*_column` options at the right names."
        )


def validate_action_units_column(dataset: AnyDataset, column: str, au_space: AUSpace) -> None:
    """Checks that `column` is a list of AU values whose length matches `au_space`: the declared fixed length, or
    else the first row's. Every row's values are checked when its batch is read ([`ExampleTransform`])."""
    feature = dataset.features[column] if dataset.features is not None else None
    if feature is not None and not is_number_list(feature):
        raise ValueError(
            f"Column {column!r} must hold a list of {au_space.num_aus} AU values (numbers) per row, got {feature}."
        )
    length = getattr(feature, "length", -1)
    if length in (-1, None):
        length = len(first_row(dataset, [column])[column])
    if length != au_space.num_aus:
        raise ValueError(
            f"Column {column!r} holds {length} AU values per row but the AU space has {au_space.num_aus} "
            f"({', '.join(au_space.names)}); choose the matching `--au_space`."
        )


def is_number_list(feature: datasets.features.FeatureType) -> bool:
    """Whether `feature` is a list of numbers (ints or floats, not strings or booleans)."""
    return (
        isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList))
        and isinstance(feature.feature, datasets.Value)
        and feature.feature.dtype.startswith(("float", "int", "uint"))
    )


def load_action_units(dataset: datasets.Dataset, column: str, au_space: AUSpace) -> torch.Tensor:
    """The AU column as a validated `(N, num_aus)` float32 tensor (width, NaN/inf and range checked)."""
    rows = dataset.with_format("numpy", columns=[column])[:][column]  # (N, num_aus), or an object array if ragged
    try:
        values = torch.from_numpy(np.stack(list(rows)).astype(np.float32))
    except ValueError as error:
        raise ValueError(
            f"Column {column!r} has rows of different lengths; expected {au_space.num_aus} values each."
        ) from error
    return au_space.validate_tensor(values, field=f"dataset column {column!r}")


@dataclass(frozen=True)
class ExpressionLabels:
    """Maps a column's values to ids into a label set by name (default [`EXPRESSIONS`]): a `ClassLabel` whose
    names are in the set, or strings. Built from the features ([`from_dataset`], which checks the class names);
    unknown strings raise a `ValueError` naming the column and the allowed values when their batch is read."""

    column: str
    class_ids: tuple[int, ...] | None  # ClassLabel index -> id in `vocabulary`; None: the column holds names
    vocabulary: ExpressionVocabulary = EXPRESSIONS

    @classmethod
    def from_dataset(
        cls, dataset: AnyDataset, column: str, vocabulary: ExpressionVocabulary = EXPRESSIONS
    ) -> ExpressionLabels:
        feature = dataset.features[column] if dataset.features is not None else datasets.Value("string")
        if isinstance(feature, datasets.ClassLabel):
            field = f"class names of column {column!r}"
            return cls(column, tuple(vocabulary.label_id(name, field=field) for name in feature.names), vocabulary)
        if feature == datasets.Value("string"):
            return cls(column, None, vocabulary)
        raise ValueError(f"Column {column!r} must be a ClassLabel or strings naming expressions, got {feature}.")

    def __call__(self, values: Sequence[int | str]) -> torch.Tensor:  # (N,) int64
        if self.class_ids is not None:
            return torch.tensor([self.class_ids[i] for i in values], dtype=torch.long)
        return torch.tensor([self.vocabulary.label_id(name, field=f"column {self.column!r}") for name in values])


def dataset_label_names(dataset: AnyDataset, column: str) -> ExpressionVocabulary:
    """The label set of an expression column, in id order: a `ClassLabel`'s names (any set, e.g. AffectNet-8 with
    "contempt"), or [`EXPRESSIONS`] for a column of strings."""
    feature = dataset.features[column] if dataset.features is not None else datasets.Value("string")
    return ExpressionVocabulary(feature.names) if isinstance(feature, datasets.ClassLabel) else EXPRESSIONS


def expression_label_ids(
    dataset: datasets.Dataset, column: str, vocabulary: ExpressionVocabulary = EXPRESSIONS
) -> torch.Tensor:
    """The whole expression column as `(N,)` ids into `vocabulary` (see [`ExpressionLabels`])."""
    return ExpressionLabels.from_dataset(dataset, column, vocabulary)(dataset[column])


def load_images(
    dataset: datasets.Dataset, column: str, resolution: int, desc: str = "Loading images"
) -> torch.Tensor:  # (N, 3, R, R) uint8
    """Decodes every image of `column`, resized (shorter side) and centre-cropped to `resolution`, into one uint8
    tensor. For bounded sets only (a test split, the first `K` training images): training batches are decoded
    when read ([`ExampleTransform`])."""
    validate_image_column(dataset, column)
    images = torch.empty((len(dataset), 3, resolution, resolution), dtype=torch.uint8)
    rows = dataset.select_columns([column]).iter(batch_size=256)
    start = 0
    for batch in tqdm(rows, desc=desc, total=-(-len(dataset) // 256), leave=False):
        pixels = torch.stack([pixel_tensor(image, resolution) for image in batch[column]])  # (b, 3, R, R)
        images[start : start + len(pixels)] = pixels
        start += len(pixels)
    return images


def validate_image_column(dataset: AnyDataset, column: str) -> None:
    """Checks that `column` is an `Image` feature whose first image decodes (each other row's is decoded when its
    batch is read)."""
    feature = dataset.features[column] if dataset.features is not None else datasets.Image()
    if not isinstance(feature, datasets.Image):
        raise ValueError(f"Column {column!r} must be an `Image` feature, got {feature}.")
    try:
        first_row(dataset, [column])
    except OSError as error:  # PIL's UnidentifiedImageError, a truncated file
        raise ValueError(f"Column {column!r}: the first image cannot be read: {error}") from error


def pixel_tensor(
    image: Image.Image, resolution: int, position: tuple[float, float] | None = None, flip: bool = False
) -> torch.Tensor:  # (3, R, R) uint8
    """The image resized and cropped (centre, or at `position`: see [`resize_and_crop`]), flipped left-right with
    `flip`."""
    pixels = torch.from_numpy(resize_and_crop(image, resolution, position).copy()).permute(2, 0, 1)
    return pixels.flip(-1) if flip else pixels
