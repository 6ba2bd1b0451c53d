"""FEText builder (SynFER stage 1): face images -> an FEText-style training set (captions + AUs + labels).

Users bring their own faces (FFHQ, CelebA-HQ, AffectNet, in-house data) as an image folder, an imagefolder /
parquet / `save_to_disk` folder or a Hub dataset, optionally with expression labels. [`build_fetext_dataset`]
(CLI: `synfer build-fetext`) writes the dataset that `examples/train_text_to_image.py` and
`examples/train_au_adapter.py` read:

| column | meaning |
|---|---|
| `image` | the face (cropped / resized when asked) |
| `text` | the caption ([`~synfer_diffusers.annotators.TemplateCaptioner`] or an image-text-to-text model) |
| `action_units` | the estimated AUs in the chosen `AUSpace` ([`~synfer_diffusers.annotators.AUEstimator`]) |
| `label` | the expression (`ClassLabel` of `EXPRESSIONS`), only when the source has labels |
| `source`, `source_index`, `source_file` | provenance: source dataset, its row, its file (`""` if none) |
| `caption_source`, `au_source` | the captioner and AU estimator that annotated the row |
| `sample_id` | index of the row in the FEText set |

Steps:

1. **Scan** every source row once: decode (unreadable files and non-images are *bad images*), crop (a face box
   from `face_box_column` with a margin, or a centre square), resize to `image_size`, then the quality filters:
   shorter side below `min_image_size` (before resizing) is *too small*, variance of the Laplacian of the grey
   image below `min_sharpness` is *blurry*. With `bad_images="skip"` (default) such rows are left out and
   counted (log, card, [`FETextResult`]); with `"error"` the first one stops the run before anything is
   written. The kept rows, their content hash and the annotators form the *plan*.
2. **Annotate** the kept rows in batches (AU estimator, then captioner, which may use label and AUs) and write
   them with the synthetic-set writer ([`~synfer_diffusers.data.writer.SyntheticSetWriter`]): parquet shards
   written atomically with a manifest, verified and completed with `resume`, a different plan refused unless
   `overwrite`, and the dataset card (`model_cards/fetext_dataset.md`) once complete.

The FaceWorld AU estimator is a stock transformers image model trained by the existing example script, with
another seed than the judges' AU regressor that measures results (`--seed 0`); FaceWorld images without their AU
labels then go in and estimated AUs and captions come out, offline. Measured on a busy 2-core CPU: 800 steps
(400 s) give a test MAE of 0.29 (predicting the train mean: 1.11); `--architecture convnext` is the more
independent choice but had not converged after 220 steps (MAE 0.89).

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000 --seed 0
python examples/train_fer_classifier.py --dataset_name runs/faceworld --output_dir runs/fetext_au_estimator \\
    --task action_units --architecture resnet --seed 7 --train_batch_size 64 --max_train_steps 800
synfer build-fetext --dataset runs/faceworld --split test --label-column label \\
    --au-estimator runs/fetext_au_estimator --output-dir runs/fetext_faceworld
```

One process writes all shards (no `accelerate` split yet); annotation dominates the cost, the scan decodes each
image once more.

This module imports `facs`, `annotators`, `data.loading`, `data.writer` and the HF libraries, never `models/`
or `pipelines/`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from ..annotators import AUEstimator, CaptionBatch, Captioner, ModelCaptioner, TemplateCaptioner
from ..facs import EXPRESSIONS, AUSpace
from ..hub_utils import inherited_license, license_label, load_card_metadata, split_hub_ids
from ..image_utils import tile_images
from ..value_checks import check_int
from .fetext_config import FETextConfig
from .loading import expression_label_ids, is_local_path, load_training_dataset, validate_columns
from .writer import SyntheticSetWriter

logger = logging.getLogger(__name__)

__all__ = [
    "BadImageError",
    "FETextConfig",
    "FETextResult",
    "FETextWriter",
    "build_fetext_dataset",
    "fetext_features",
    "laplacian_variance",
    "prepare_image",
]

CARD_TEMPLATE = "fetext_dataset.md"
SKIP_REASONS = ("unreadable", "too_small", "blurry")
_PREVIEW_SIZE = 64


@dataclass
class FETextResult:
    """What [`build_fetext_dataset`] did: rows written (kept), source rows, rows skipped per reason, shards."""

    output_dir: str
    num_samples: int
    num_source_rows: int
    skipped: dict[str, int]
    num_shards: int
    num_shards_written: int


def fetext_features(au_space: AUSpace, labelled: bool) -> datasets.Features:
    """Features of an FEText set with AU vectors of `au_space`; `label` only when the source is `labelled`."""
    columns = {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "action_units": datasets.List(datasets.Value("float32"), length=au_space.num_aus),
        **({"label": datasets.ClassLabel(names=list(EXPRESSIONS))} if labelled else {}),
        "source": datasets.Value("string"),
        "source_index": datasets.Value("int64"),
        "source_file": datasets.Value("string"),
        "caption_source": datasets.Value("string"),
        "au_source": datasets.Value("string"),
        "sample_id": datasets.Value("int64"),
    }
    return datasets.Features(columns)


class FETextWriter(SyntheticSetWriter):
    """The synthetic-set writer with [`fetext_features`], the FEText card and an unlabelled preview grid."""

    card_template = CARD_TEMPLATE

    def __init__(self, output_dir: str | os.PathLike, plan: Mapping[str, Any]):
        super().__init__(output_dir, plan)
        labelled = self.plan["config"]["label_column"] is not None
        self.features = fetext_features(AUSpace.from_config(self.plan["au_space"]), labelled)
        self.schema = self.features.arrow_schema

    def preview_grid(self, num_samples: int = 32, columns: int = 8) -> PIL.Image.Image:
        """The first `num_samples` images as 64x64 tiles, `columns` per row."""
        head = datasets.load_dataset(
            "parquet", data_files=str(self.output_dir / self.shards[0].filename), split="train"
        )
        images = [image.convert("RGB").resize((_PREVIEW_SIZE,) * 2) for image in head[:num_samples]["image"]]
        return tile_images([images[i : i + columns] for i in range(0, len(images), columns)])


# ----------------------------------------------------------------------------------------------------------
# Scan: decode, crop, resize, filter
# ----------------------------------------------------------------------------------------------------------


class BadImageError(ValueError):
    """A source image to skip or reject; `reason` is one of [`SKIP_REASONS`]."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _open_image(value: Mapping[str, Any]) -> PIL.Image.Image:
    """Decodes an undecoded `Image` value (`{"bytes", "path"}`) fully, so truncated files fail here."""
    try:
        data = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, TypeError, PIL.Image.DecompressionBombError) as error:
        raise BadImageError("unreadable", f"not a readable image ({error})") from error


def _crop_box(image: PIL.Image.Image, box: Sequence[float], margin: float) -> PIL.Image.Image:
    x0, y0, x1, y1 = map(float, box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"`face_box_column`: box {list(box)} is not [x0, y0, x1, y1] with x1 > x0 and y1 > y0.")
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return image.crop((max(0, round(x0 - dx)), max(0, round(y0 - dy)),
                       min(image.width, round(x1 + dx)), min(image.height, round(y1 + dy))))  # fmt: skip


def laplacian_variance(image: PIL.Image.Image) -> float:
    """Sharpness: variance of the 4-neighbour Laplacian of the grey image (0-255 units); low means blurry."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)  # (H, W)
    laplacian = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(laplacian.var()) if laplacian.size else 0.0


def prepare_image(row: Mapping[str, Any], config: FETextConfig) -> PIL.Image.Image:
    """Decodes, crops, checks the size, resizes and checks the sharpness of one source row's image.

    Raises [`BadImageError`] with the reason (`unreadable`, `too_small`, `blurry`) for a row to skip or reject."""
    image = _open_image(row[config.image_column])
    if config.face_box_column is not None:
        image = _crop_box(image, row[config.face_box_column], config.face_box_margin)
    if config.center_crop:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if min(image.size) < config.min_image_size:
        raise BadImageError(
            "too_small", f"{image.width}x{image.height} is below min_image_size={config.min_image_size}"
        )
    if config.image_size is not None and image.size != (config.image_size, config.image_size):
        image = image.resize((config.image_size, config.image_size), PIL.Image.Resampling.BICUBIC)
    if config.min_sharpness is not None and laplacian_variance(image) < config.min_sharpness:
        raise BadImageError(
            "blurry", f"sharpness {laplacian_variance(image):.1f} is below min_sharpness={config.min_sharpness}"
        )
    return image


def _source_file(row: Mapping[str, Any], config: FETextConfig) -> str:
    return row[config.image_column].get("path") or ""


@dataclass
class _Scan:
    kept: list[int]  # source indices of the rows to write, in source order
    skipped: dict[str, int]
    sha256: str  # of the kept rows' image bytes, boxes and labels


def scan_source(
    source: datasets.Dataset, config: FETextConfig, labels: list[int] | None, show_progress: bool
) -> _Scan:
    """Checks every source row (see the module docstring, step 1); with `bad_images="error"` raises a
    `ValueError` naming the first bad row."""
    digest, kept, skipped = hashlib.sha256(), [], Counter()
    for index, row in enumerate(tqdm(source, desc="Scanning images", unit="img", disable=not show_progress)):
        try:
            prepare_image(row, config)
        except BadImageError as bad:
            where = _source_file(row, config) or f"row {index}"
            if config.bad_images == "error":
                raise ValueError(f"`{config.image_column}` of {where}: {bad} (bad_images='error').") from bad
            logger.debug(f"Skipping {where}: {bad}")
            skipped[bad.reason] += 1
            continue
        value = row[config.image_column]
        digest.update(value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes())
        digest.update(repr((row.get(config.face_box_column), labels[index] if labels else None)).encode())
        kept.append(index)
    if not kept:
        raise ValueError(f"No usable image among the {len(source)} source rows (skipped: {dict(skipped)}).")
    return _Scan(kept, {reason: skipped[reason] for reason in SKIP_REASONS}, digest.hexdigest())


# ----------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------


def load_source(
    source: str | os.PathLike | datasets.Dataset, split: str, config: FETextConfig, max_samples: int | None = None
) -> datasets.Dataset:
    """The source split with its image column undecoded (decoding is the scan's job), its columns checked."""
    if isinstance(source, datasets.Dataset):
        dataset = source.select(range(min(max_samples, len(source)))) if max_samples is not None else source
    else:
        try:
            dataset = load_training_dataset(str(source), split, max_samples)
        except ValueError as error:  # named for the training scripts' option: here it is `dataset`
            raise ValueError(str(error).replace("`dataset_name`", "`dataset`", 1)) from error
    required = {config.image_column: "images (--image-column)"}
    for name, what in (("label_column", "expression labels"), ("description_column", "descriptions"),
                       ("face_box_column", "face boxes")):  # fmt: skip
        if getattr(config, name) is not None:
            required[getattr(config, name)] = f"{what} (--{name.replace('_', '-')})"
    validate_columns(dataset, required)
    if not isinstance(dataset.features[config.image_column], datasets.Image):
        raise ValueError(
            f"`image_column` {config.image_column!r} must be an Image feature, got {dataset.features[config.image_column]}."
        )
    return dataset.cast_column(config.image_column, datasets.Image(decode=False))


def load_captioner(config: FETextConfig) -> Captioner:
    """The captioner named by `config.captioner` ('template' or a model folder / Hub id)."""
    if config.captioner == "template":
        return TemplateCaptioner(seed=config.caption_seed)
    return ModelCaptioner.from_pretrained(config.captioner, config.caption_prompt, config.caption_max_new_tokens)


def build_fetext_dataset(
    source: str | os.PathLike | datasets.Dataset,
    output_dir: str | os.PathLike,
    config: FETextConfig,
    split: str = "train",
    max_samples: int | None = None,
    source_name: str | None = None,
    batch_size: int = 32,
    resume: bool = False,
    overwrite: bool = False,
    au_estimator: AUEstimator | None = None,
    captioner: Captioner | None = None,
    card_data: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> FETextResult:
    r"""
    Turns face images into an FEText-style dataset folder (parquet shards + dataset card); see the module docstring.

    Args:
        source (`str`, `os.PathLike` or `datasets.Dataset`): a folder of images, any folder
            `datasets.load_dataset` reads (imagefolder, parquet) or a `save_to_disk` folder, a Hub dataset id, or a
            `Dataset` with an `Image` column.
        output_dir (`str` or `os.PathLike`): the dataset folder to write.
        config ([`FETextConfig`]): annotators, columns, crop and filters.
        split (`str`, defaults to `"train"`): split of `source` to read.
        max_samples (`int`, *optional*): read only the first rows of the split.
        source_name (`str`, *optional*): name in the `source` column (default: `source`'s path or id).
        batch_size (`int`, defaults to 32): images per annotator call (not part of the plan).
        resume (`bool`): complete an interrupted run of the same plan.
        overwrite (`bool`): replace a folder holding another plan.
        au_estimator ([`~synfer_diffusers.annotators.AUEstimator`], *optional*): a loaded estimator, instead of
            loading `config.au_estimator` (the plan records the estimator's name).
        captioner (*optional*): a loaded captioner, instead of the one `config.captioner` names.
        card_data (`Mapping`, *optional*): YAML metadata of the card (`license`, `tags`, ...).
        show_progress (`bool`, defaults to True): progress bars over the scan and the annotation.

    Returns:
        [`FETextResult`].

    Raises:
        `ValueError`: bad config, missing columns, labels that are not expressions, an estimator that cannot fill
            the AU space, a prompt for a model that takes none, a bad image with `bad_images="error"`, no usable
            image. Nothing is written before these checks pass.
        `FileExistsError`: `output_dir` holds a different plan or other files (see `SyntheticSetWriter.prepare`).

    Example:

    ```py
    >>> from synfer_diffusers.data.fetext import FETextConfig, build_fetext_dataset
    >>> config = FETextConfig(au_estimator="runs/fetext_au_estimator", label_column="label")
    >>> result = build_fetext_dataset("runs/faceworld", "runs/fetext_faceworld", config, split="test")
    >>> datasets.load_dataset("runs/fetext_faceworld", split="train").column_names[:4]
    ['image', 'text', 'action_units', 'label']
    ```
    """
    check_int("batch_size", batch_size, 1)
    check_int("max_samples", max_samples, 0, optional=True)
    if not isinstance(source, datasets.Dataset) and is_local_path(str(source)):
        if not os.path.isdir(os.path.expanduser(str(source))):  # before loading any model
            raise ValueError(f"`dataset`: no dataset folder at {str(source)!r}.")
    space = config.space
    if au_estimator is None:
        try:
            au_estimator = AUEstimator.from_pretrained(
                config.au_estimator, space, config.au_fill_missing, config.occurrence_threshold
            )
        except (OSError, ValueError) as error:  # a missing folder, an unknown or unreachable repo, a bad config
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"`au_estimator` {config.au_estimator!r} could not be loaded: {reason}") from error
    if au_estimator.au_space != space:
        raise ValueError(
            f"`au_estimator` maps onto {au_estimator.au_space.names}, not the `au_space` {config.au_space!r}."
        )
    captioner = captioner or load_captioner(config)
    dataset = load_source(source, split, config, max_samples)
    labels = expression_label_ids(dataset, config.label_column).tolist() if config.label_column else None
    scan = scan_source(dataset, config, labels, show_progress)
    if any(scan.skipped.values()):
        logger.warning(f"Skipping {sum(scan.skipped.values())} of {len(dataset)} source rows: {scan.skipped}.")
    source_name = source_name or (str(source) if not isinstance(source, datasets.Dataset) else "in-memory dataset")
    plan = {
        "num_samples": len(scan.kept), "shard_size": config.shard_size, "au_space": space.to_config(),
        "config": asdict(config), "au_estimator": au_estimator.to_config(), "captioner": captioner.to_config(),
        "source": {"name": source_name, "split": split, "num_rows": len(dataset), "kept_sha256": scan.sha256,
                   "skipped": scan.skipped},
    }  # fmt: skip
    writer = FETextWriter(output_dir, plan)
    writer.prepare(resume=resume, overwrite=overwrite)
    pending = writer.pending_shards()
    done = len(scan.kept) - sum(len(spec.sample_ids) for spec in pending)
    with tqdm(
        total=len(scan.kept), initial=done, unit="img", desc="synfer build-fetext", disable=not show_progress
    ) as progress:
        for spec in pending:
            rows = []
            for start in range(spec.start, spec.end, batch_size):
                sample_ids = range(start, min(start + batch_size, spec.end))
                rows += _annotate(dataset, scan, sample_ids, labels, config, au_estimator, captioner, source_name)
                progress.update(len(sample_ids))
            writer.write_shard(spec, rows)
    writer.finalize(_card_fields(plan, source_name, source), card_data)
    return FETextResult(str(output_dir), len(scan.kept), len(dataset), scan.skipped, len(writer.shards), len(pending))


def _annotate(
    dataset: datasets.Dataset,
    scan: _Scan,
    sample_ids: range,
    labels: list[int] | None,
    config: FETextConfig,
    au_estimator: AUEstimator,
    captioner: Captioner,
    source_name: str,
) -> list[dict[str, Any]]:
    """Rows of the writer's features for the samples `sample_ids` of the plan."""
    indices = [scan.kept[i] for i in sample_ids]
    source_rows = [dataset[i] for i in indices]
    images = [prepare_image(row, config) for row in source_rows]
    action_units = config.space.to_dicts(au_estimator(images))
    expressions = [EXPRESSIONS[labels[i]] for i in indices] if labels else [None] * len(indices)
    descriptions = (
        [row[config.description_column] for row in source_rows] if config.description_column else [None] * len(indices)
    )
    captions = captioner(CaptionBatch(images, expressions, action_units, descriptions, indices))
    return [
        {
            "image": image,
            "text": caption,
            "action_units": list(aus.values()),
            **({"label": labels[index]} if labels else {}),
            "source": source_name,
            "source_index": index,
            "source_file": _source_file(row, config),
            "caption_source": captioner.name,
            "au_source": au_estimator.name,
            "sample_id": sample_id,
        }
        for sample_id, index, row, image, caption, aus in zip(
            sample_ids, indices, source_rows, images, captions, action_units
        )
    ]


def _card_fields(
    plan: Mapping[str, Any], source_name: str, source: str | os.PathLike | datasets.Dataset
) -> dict[str, Any]:
    """Card metadata (the source's licence, read from its card; `source_datasets`: the source if on the Hub, else
    `original`) and the template's text fields."""
    space = plan["au_space"]
    labelled = plan["config"]["label_column"] is not None
    in_memory = isinstance(source, datasets.Dataset)
    source_card = None if in_memory else load_card_metadata(source, repo_type="dataset")
    hub_sources = [] if in_memory else split_hub_ids(source)[0]
    return {
        **inherited_license(source_card),
        # the Hub's convention: `extended|<id>` for data made from a Hub dataset, `original` for data new to the Hub
        "source_datasets": [f"extended|{hub_id}" for hub_id in hub_sources] or ["original"],
        "task_categories": ["text-to-image", "image-classification"] if labelled else ["text-to-image"],
        "tags": ["synfer", "fetext", "facial-expression-recognition", "action-units"],
        "source_license": license_label(source_card),
        "num_samples": plan["num_samples"], "source_name": source_name, "source": plan["source"],
        "au_names": space["names"], "au_kind": space["kind"], "au_estimator": plan["au_estimator"],
        "captioner": plan["captioner"], "labelled": labelled,
        "config": plan["config"], "expressions": list(EXPRESSIONS),
        "plan_json": json.dumps(plan, indent=2, sort_keys=True),
    }  # fmt: skip
