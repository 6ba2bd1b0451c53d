"""Training data: a local folder or Hub dataset, its column checks (a `ValueError` naming the column before
anything trains), and the per-batch conversions (images, captions, AUs, expression labels)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..facs import EXPRESSIONS, AUSpace
from ..hub_utils import is_hub_repo_id
from ..image_utils import resize_and_center_crop


def is_local_path(name_or_path: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, `./`, `~`, deeper paths) is a local path
    (the complement of [`~synfer_diffusers.hub_utils.is_hub_repo_id`])."""
    return not is_hub_repo_id(name_or_path)


def load_training_dataset(name_or_path: str, split: str, max_samples: int | None = None) -> datasets.Dataset:
    """Loads one split of a dataset.

    Args:
        name_or_path: a folder written by `Dataset.save_to_disk` (read with `load_from_disk`), any folder that
            `datasets.load_dataset(folder)` reads (parquet shards, imagefolder; works offline), or a Hub id.
        split: the split to return (a `save_to_disk` folder holding a single `Dataset` has no split names).
        max_samples: keep only the first `max_samples` rows.
    """
    if is_local_path(name_or_path):
        path = os.path.expanduser(name_or_path)
        if not os.path.isdir(path):
            raise ValueError(f"`dataset_name`: no dataset folder at {name_or_path!r}.")
        saved_to_disk = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
        loaded = datasets.load_from_disk(path) if saved_to_disk else datasets.load_dataset(path)
    else:
        try:
            loaded = datasets.load_dataset(name_or_path)
        except Exception as error:  # offline, unknown repo, ...: say which option is wrong
            raise ValueError(
                f"`dataset_name`: {name_or_path!r} is not a local folder and could not be loaded from the Hub ({error})."
            ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"`dataset_split`: {name_or_path!r} has splits {list(loaded)}, not {split!r}.")
        loaded = loaded[split]
    if max_samples is not None:
        loaded = loaded.select(range(min(max_samples, len(loaded))))
    if len(loaded) == 0:
        raise ValueError(f"`dataset_name`: split {split!r} of {name_or_path!r} is empty.")
    return loaded


def validate_columns(dataset: datasets.Dataset, required: Mapping[str, str]) -> None:
    """Raises a `ValueError` listing every required column the dataset lacks.

    Args:
        required: `{column: what it must hold}`, e.g. `{"text": "captions (--text_column)"}`.
    """
    missing = [
        f"{column!r} ({description})" for column, description in required.items() if column not in dataset.column_names
    ]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {', '.join(missing)}; its columns are {dataset.column_names}. "
            "Point the `--*_column` options at the right names."
        )


def validate_action_units_column(dataset: datasets.Dataset, column: str, au_space: AUSpace) -> None:
    """Checks from the features alone (no data read) that `column` is a list of AU values whose fixed length, if
    declared, matches `au_space`. Values are checked by [`load_action_units`]."""
    feature = dataset.features[column]
    if not isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)):
        raise ValueError(f"Column {column!r} must hold a list of {au_space.num_aus} AU values per row, got {feature}.")
    length = getattr(feature, "length", -1)
    if length not in (-1, None, au_space.num_aus):
        raise ValueError(
            f"Column {column!r} holds {length} AU values per row but the AU space has {au_space.num_aus} "
            f"({', '.join(au_space.names)}); choose the matching `--au_space`."
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


def expression_label_ids(dataset: datasets.Dataset, column: str) -> torch.Tensor:
    """The expression column as `(N,)` ids into [`EXPRESSIONS`], mapped by name: a `ClassLabel` whose names are
    expressions, or strings. Unknown names raise a `ValueError` naming the column and the allowed values."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        to_global = [EXPRESSIONS.label_id(name, field=f"class names of column {column!r}") for name in feature.names]
        return torch.tensor([to_global[i] for i in dataset[column]], dtype=torch.long)
    if feature == datasets.Value("string"):
        return torch.tensor([EXPRESSIONS.label_id(name, field=f"column {column!r}") for name in dataset[column]])
    raise ValueError(f"Column {column!r} must be a ClassLabel or strings naming expressions, got {feature}.")


def load_images(
    dataset: datasets.Dataset, column: str, resolution: int, desc: str = "Loading images"
) -> torch.Tensor:  # (N, 3, R, R) uint8
    """Decodes every image of `column`, resized (shorter side) and centre-cropped to `resolution`, into one uint8
    tensor: 20k FaceWorld faces take 250 MB, and batches are then plain indexing."""
    if not isinstance(dataset.features[column], datasets.Image):
        raise ValueError(f"Column {column!r} must be an `Image` feature, got {dataset.features[column]}.")
    images = torch.empty((len(dataset), 3, resolution, resolution), dtype=torch.uint8)
    rows = dataset.select_columns([column]).iter(batch_size=256)
    start = 0
    for batch in tqdm(rows, desc=desc, total=-(-len(dataset) // 256), leave=False):
        array = np.stack([resize_and_center_crop(image, resolution) for image in batch[column]])  # (b, R, R, 3)
        images[start : start + len(array)] = torch.from_numpy(array).permute(0, 3, 1, 2)
        start += len(array)
    return images


def drop_captions(input_ids: torch.Tensor, drop_mask: torch.Tensor, empty_ids: torch.Tensor) -> torch.Tensor:
    """Token ids `(B, L)` with the rows where `drop_mask` is True replaced by the empty prompt's ids `(1, L)`."""
    return torch.where(drop_mask[:, None], empty_ids, input_ids)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` in [0, 255] -> float32 in [-1, 1], the range of `AutoencoderKL`."""
    return images.float() / 127.5 - 1.0


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]) -> torch.Tensor:  # (N, L)
    """Token ids padded / truncated to the tokenizer's `model_max_length`, as `SynFERPipeline.encode_prompt`."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
