"""FaceWorld datasets: `datasets.Dataset` builds and parquet splits with a dataset card."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
from datasets.utils import tqdm as hf_tqdm
from PIL import Image

from ...facs import EXPRESSIONS
from ...value_checks import check_int
from .captions import faceworld_captions
from .config import (
    AU_NAMES,
    FACEWORLD_CONFUSABLE_PAIRS,
    FACEWORLD_REGIMES,
    SUBTLE_PEAK_INTENSITY,
    FaceWorldConfig,
)
from .features import _ATTRIBUTE_KEYS, FACEWORLD_FEATURES
from .rendering import render_faces
from .sampling import faceworld_expression_prototypes, sample_faceworld_attributes
from .statistics import faceworld_label_statistics

SAMPLES_PER_CHUNK = 1000
"""Faces drawn from one random stream; chunk `c` of a split uses the seed `(seed, split, c)`, so a smaller
dataset with the same seed is a prefix of a larger one."""
_SPLIT_KEYS = {"train": 0, "test": 1, "validation": 2}


def _chunk_dataset(attributes: dict[str, np.ndarray], config: FaceWorldConfig) -> datasets.Dataset:
    images = render_faces(attributes, config)
    columns = {
        "image": [Image.fromarray(image) for image in images],
        "text": faceworld_captions(attributes, config),
        **{key: attributes[key].tolist() for key in _ATTRIBUTE_KEYS},
    }
    return datasets.Dataset.from_dict(columns, features=FACEWORLD_FEATURES)


def build_faceworld_dataset(
    num_samples: int,
    seed: int = 0,
    config: FaceWorldConfig | str | None = None,
    split: str = "train",
    show_progress: bool = False,
) -> datasets.Dataset:
    """Builds `num_samples` FaceWorld faces as a `datasets.Dataset` with [`FACEWORLD_FEATURES`].

    Faces are drawn in chunks of [`SAMPLES_PER_CHUNK`], chunk `c` from the seed `(seed, split, c)`: the same
    seed and split give identical images, captions and labels; different splits never share a random stream.

    Args:
        num_samples: number of faces.
        seed: dataset seed.
        config: renderer, label and caption settings, or the name of a regime of [`FACEWORLD_REGIMES`]
            (`"hard"` = [`FaceWorldConfig.hard`]); default `FaceWorldConfig()`.
        split: `"train"`, `"test"` or `"validation"`; mixed into the seed.
        show_progress: show a progress bar over chunks.

    Example:

    ```py
    >>> dataset = build_faceworld_dataset(16, seed=0)
    >>> dataset[0]["image"].size, len(dataset[0]["action_units"])
    ((64, 64), 12)
    ```
    """
    check_int("num_samples", num_samples, 0)
    if split not in _SPLIT_KEYS:
        raise ValueError(f"`split` must be one of {list(_SPLIT_KEYS)}, got {split!r}.")
    config = _resolve_config(config)
    chunks = []
    num_chunks = max(1, math.ceil(num_samples / SAMPLES_PER_CHUNK))
    for chunk in hf_tqdm(range(num_chunks), desc=f"FaceWorld {split}", disable=not show_progress):
        rng = np.random.default_rng([seed, _SPLIT_KEYS[split], chunk])
        size = min(SAMPLES_PER_CHUNK, num_samples - chunk * SAMPLES_PER_CHUNK)
        attributes = sample_faceworld_attributes(size, rng, config)
        attributes["sample_id"] = attributes["sample_id"] + chunk * SAMPLES_PER_CHUNK
        chunks.append(_chunk_dataset(attributes, config))
    return datasets.concatenate_datasets(chunks) if len(chunks) > 1 else chunks[0]


def _resolve_config(config: FaceWorldConfig | str | None) -> FaceWorldConfig:
    """`config` itself, the settings of a regime named by it, or `FaceWorldConfig()`."""
    if isinstance(config, str):
        return FaceWorldConfig.from_regime(config)
    return config or FaceWorldConfig()


def _regime_name(config: FaceWorldConfig) -> str:
    """The regime whose settings `config` has (resolution aside), or "custom"."""
    presets = {name: FaceWorldConfig.from_regime(name, resolution=config.resolution) for name in FACEWORLD_REGIMES}
    return next((name for name, preset in presets.items() if preset == config), "custom")


def _label_summary(statistics: dict) -> str:
    pairs = ", ".join("/".join(pair) for pair in FACEWORLD_CONFUSABLE_PAIRS)
    means = ", ".join(f"{name} {mean:.2f}" for name, mean in statistics["intensity_means"].items())
    return (
        f"{statistics['label_noise']:.1%} of the train labels differ from `clean_label`; of the wrong labels of "
        f"classes with a confusable partner ({pairs}), {statistics['partner_noise']:.0%} name the partner "
        f"(random noise: 17%). {statistics['blend']:.1%} of faces are blends, and {statistics['subtle']:.1%} of "
        f"the non-neutral faces are subtle (no prototype AU reaches {SUBTLE_PEAK_INTENSITY}). Mean prototype AU "
        f"intensity per expression (neutral: all AUs): {means}."
    )


def _dataset_card(num_train: int, num_test: int, seed: int, config: FaceWorldConfig, statistics: dict) -> str:
    prototypes, optional = faceworld_expression_prototypes()
    rows = "\n".join(
        f"| {name} | {', '.join(au for au, on in zip(AU_NAMES, prototypes[e]) if on) or '-'} | "
        f"{', '.join(au for au, on in zip(AU_NAMES, optional[e]) if on) or '-'} |"
        for e, name in enumerate(EXPRESSIONS)
    )
    settings = "\n".join(f"- `{key}`: {value}" for key, value in vars(config).items())
    return f"""---
license: cc0-1.0
pretty_name: FaceWorld
language:
- en
annotations_creators:
- machine-generated
source_datasets:
- original
task_categories:
- image-classification
- text-to-image
tags:
- synthetic
- facial-expression-recognition
- action-units
---

# FaceWorld

Procedurally rendered {config.resolution}x{config.resolution} faces with known DISFA-12 action-unit
intensities (0-5), seven expression labels and FEText-style captions, made by
`synfer_diffusers.data.faceworld` (seed {seed}; {num_train} train and {num_test} test faces, drawn from
different random streams), in the `{_regime_name(config)}` regime (`FaceWorldConfig.from_regime`).

Who is in the data: nobody. Every face is drawn by a procedural renderer from sampled attributes (face shape, skin
tone, hair, eyes, glasses, beard); no photograph or real person went into it, and no face depicts one.

Columns: `image`, `text` (caption), `action_units` (12 floats in the order {", ".join(AU_NAMES)}),
`label` (annotated expression, with annotator noise), `clean_label` (true expression), `is_blend` (an ambiguous
mix of two prototypes; the true class is the dominant one), identity attributes, nuisances (background, lighting, pose, noise) and the render `seed`:
`render_faces` re-renders any row from its attribute columns. Captions describe the person;
{config.caption_expression_probability:.0%} of them also name the annotated expression, and
{config.caption_action_unit_probability:.0%} of those the strongest AUs in FACS words.

Labels (measured by `faceworld_label_statistics`): {_label_summary(statistics)}

Prototypes (AUs active at intensity U{tuple(config.active_intensity_range)}):

| expression | AUs | optional AUs (p={config.optional_au_probability}) |
|---|---|---|
{rows}

Anger adds AU17 (chin raiser) because DISFA-12 has no AU23/AU24.

Settings:

{settings}
"""


def _write_parquet_shards(dataset: datasets.Dataset, data_dir: Path, split: str, rows_per_shard: int) -> None:
    num_shards = max(1, math.ceil(len(dataset) / rows_per_shard))
    for index in range(num_shards):
        path = data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        temporary = path.with_suffix(".parquet.tmp")
        dataset.shard(num_shards, index, contiguous=True).to_parquet(str(temporary))
        os.replace(temporary, path)  # never leaves a half-written shard under its final name


def write_faceworld_splits(
    output_dir: str | os.PathLike,
    num_train: int,
    num_test: int,
    seed: int = 0,
    config: FaceWorldConfig | str | None = None,
    rows_per_shard: int = 10_000,
    show_progress: bool = True,
) -> datasets.DatasetDict:
    """Writes FaceWorld train and test splits as parquet shards plus a dataset card.

    Layout: `output_dir/data/train-00000-of-0000N.parquet`, `output_dir/data/test-...parquet`,
    `output_dir/README.md`; `datasets.load_dataset(output_dir)` loads it with [`FACEWORLD_FEATURES`]. Test
    faces come from the `"test"` random stream of the same seed, so no face repeats across splits. The card
    names the regime and the label statistics measured on the train split. `config` is a [`FaceWorldConfig`] or
    the name of a regime of [`FACEWORLD_REGIMES`] (`"hard"` = [`FaceWorldConfig.hard`]).

    The card declares no `configs:` data files on purpose: with them, datasets 5 keys its cache on the
    patterns alone and `load_dataset` of a rewritten folder of the same name returns the old rows; the
    splits are found from the file names instead.

    Example:

    ```py
    >>> splits = write_faceworld_splits("runs/faceworld", num_train=20_000, num_test=2_000, seed=0)  # doctest: +SKIP
    >>> datasets.load_dataset("runs/faceworld")["test"].features == FACEWORLD_FEATURES  # doctest: +SKIP
    True
    >>> hard = write_faceworld_splits("runs/faceworld_hard", 20_000, 2_000, config="hard")  # doctest: +SKIP
    ```
    """
    check_int("rows_per_shard", rows_per_shard, 1)
    for name, value in (("num_train", num_train), ("num_test", num_test)):  # before anything in the folder changes
        check_int(name, value, 0)
    config = _resolve_config(config)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {str(output_dir)!r} is not a folder.")
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("*.parquet"):
        stale.unlink()
    splits = datasets.DatasetDict(
        train=build_faceworld_dataset(num_train, seed, config, split="train", show_progress=show_progress),
        test=build_faceworld_dataset(num_test, seed, config, split="test", show_progress=show_progress),
    )
    for split, dataset in splits.items():
        _write_parquet_shards(dataset, data_dir, split, rows_per_shard)
    columns = splits["train"].select_columns(["action_units", "label", "clean_label", "is_blend"])
    statistics = faceworld_label_statistics(columns.with_format("numpy")[:])
    (output_dir / "README.md").write_text(_dataset_card(num_train, num_test, seed, config, statistics))
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m synfer_diffusers.data.faceworld --output-dir D ...`: the same as `synfer faceworld ...`."""
    from ...cli import main as cli_main

    return cli_main(["faceworld", *(sys.argv[1:] if argv is None else argv)])
