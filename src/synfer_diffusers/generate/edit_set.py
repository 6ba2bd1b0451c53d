"""Identity-controlled edit sets (`synfer generate --edit-dataset`): each source face edited into each requested
expression with [`SynFERPipeline.edit`], planned sample by sample like a generated set.

Sample `i` of an edit set is face `i // E` edited into expression `i % E` of [`SyntheticSetConfig.edit_expressions`]
(`E` of them), with the seed [`sample_seed`]`(seed, i)`; its target AUs (EMFACS prototype + jitter) and both prompts
come from the pipeline's own planner, so the pipeline is given the plan's values and enriches nothing.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import PIL.Image
import torch

from ..data.loading import is_number_list
from ..pipelines.synfer.conditions import plan_image_condition
from ..pipelines.synfer.pipeline_synfer import SynFERPipeline
from .config import SyntheticSetConfig
from .plan import PlannedSample, SourceFace, sample_seed, with_pipeline_kwargs

if TYPE_CHECKING:
    from .persons import SyntheticPersons

ESTIMATE_BATCH_SIZE = 64
"""Source faces per AU-estimator call."""


@dataclass
class EditSource:
    """Source faces of an edit set: images at the generation size, their captions and AUs (given by the dataset's
    `action_units` column or estimated by the model's AU estimator), and the sha256 of each stored image file."""

    name: str
    images: list[PIL.Image.Image]
    captions: list[str | None]
    action_units: np.ndarray  # (num_faces, num_aus) float32
    image_sha256: list[str]
    fingerprint: str
    is_person: ClassVar[bool] = False

    @classmethod
    def from_dataset(cls, path: str, size: tuple[int, int], pipe: SynFERPipeline, split: str = "train") -> EditSource:
        """Reads a dataset folder or Hub id with an `image` column (optional `text` and `action_units`); raises
        `ValueError` naming `edit_dataset` when it cannot be used."""
        import datasets

        try:
            dataset = datasets.load_dataset(path, split=split)
        except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
            raise ValueError(f"`edit_dataset` {path!r} could not be loaded: {error}") from error
        if not isinstance(dataset.features.get("image"), datasets.Image) or len(dataset) == 0:
            raise ValueError(f"`edit_dataset` {path!r} needs an `image` column with rows; has {dataset.features}.")
        stored = dataset.cast_column("image", datasets.Image(decode=False))["image"]
        files = [item["bytes"] if item["bytes"] is not None else _read(item["path"]) for item in stored]
        images = [_decoded(data, size, path, row) for row, data in enumerate(files)]
        captions = list(dataset["text"]) if "text" in dataset.column_names else [None] * len(images)
        if "action_units" in dataset.column_names:
            if not is_number_list(dataset.features["action_units"]):
                raise ValueError(
                    f"`edit_dataset` {path!r}: `action_units` must hold a list of numbers per row, got "
                    f"{dataset.features['action_units']}."
                )
            action_units = np.asarray(dataset["action_units"], dtype=np.float32).reshape(len(images), -1)
            if action_units.shape[1] != pipe.au_space.num_aus:
                raise ValueError(
                    f"`edit_dataset` {path!r} has {action_units.shape[1]} AU values per row; the model's AU space has "
                    f"{pipe.au_space.num_aus}."
                )
            pipe.au_space.validate_tensor(torch.from_numpy(action_units), field=f"edit_dataset {path!r} action_units")
        else:
            action_units = estimate_action_units(pipe, images)
        sha256 = [hashlib.sha256(data).hexdigest() for data in files]
        digest = hashlib.sha256("".join(sha256).encode() + repr(captions).encode() + action_units.tobytes())
        return cls(str(path), images, captions, action_units, sha256, digest.hexdigest())

    def __len__(self) -> int:
        return len(self.images)


def estimate_action_units(pipe: SynFERPipeline, images: Sequence[PIL.Image.Image]) -> np.ndarray:  # (N, num_aus)
    """The source faces' AUs by the pipeline's AU estimator, in batches; without one, a `ValueError` naming
    `edit_dataset`."""
    try:
        estimator = pipe.pipeline_au_estimator("`edit_dataset` without an `action_units` column")
    except ValueError as error:
        raise ValueError(
            "`edit_dataset` has no `action_units` column and the model has no `au_estimator` component to estimate "
            "them: add the column, or use a model with an AU estimator."
        ) from error
    batches = [estimator(images[i : i + ESTIMATE_BATCH_SIZE]) for i in range(0, len(images), ESTIMATE_BATCH_SIZE)]
    return torch.cat(batches).numpy().astype(np.float32)


def plan_edit_sample(
    config: SyntheticSetConfig, sample_id: int, pipe: SynFERPipeline, source: EditSource | SyntheticPersons
) -> PlannedSample:
    """Sample `sample_id` of an edit set ([`PlannedSample`] with its `source`): face `sample_id // E` and target
    expression `sample_id % E`; the target AUs are the expression's prototype with jitter from a generator seeded by
    the sample's RNG, and the source and target prompts the face's caption enriched with the source AUs and with the
    target expression and AUs."""
    expressions = config.edit_expressions()
    face = sample_id // len(expressions)
    expression = expressions[sample_id % len(expressions)]
    seed = sample_seed(config.seed, sample_id)
    rng = np.random.default_rng(seed)
    jitter = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    caption = source.captions[face]
    space = pipe.au_space
    prompt, action_units = plan_image_condition(
        space, caption, expression, None, jitter, config.prototype_intensity, config.au_jitter, enrich=True
    )
    source_prompt, _ = plan_image_condition(
        space, caption, None, torch.from_numpy(source.action_units[face]), None, None, 0.0, enrich=True
    )
    return PlannedSample(
        sample_id, seed, expression, caption or "", prompt, action_units.numpy().astype(np.float32),
        source=SourceFace(face, source.image_sha256[face], source.images[face], source.action_units[face], source_prompt,
                          source.is_person),
    )  # fmt: skip


def edit_inputs(
    config: SyntheticSetConfig, samples: Sequence[PlannedSample], pipeline_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of the `SynFERPipeline.edit` call that makes `samples`: the plan's images, prompts and AU
    vectors as they are (no enrichment), one generator per image, PIL output. `pipeline_kwargs` add arguments; one
    the config or the plan sets raises a `ValueError`."""
    inputs = {
        "image": [s.source.image for s in samples],
        "target_expression": [s.expression for s in samples],
        "target_action_units": torch.from_numpy(np.stack([s.action_units for s in samples])),  # (B, num_aus)
        "source_action_units": torch.from_numpy(np.stack([s.source.action_units for s in samples])),
        "source_prompt": [s.source.prompt for s in samples],
        "prompt": [s.prompt for s in samples],
        "enrich_prompt": False,
        "edit_strength": config.edit_strength,
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "au_guidance_scale": config.au_guidance_scale,
        "mutual_self_attention_window": config.mutual_self_attention_window,
        "mutual_self_attention_start_layer": config.mutual_self_attention_start_layer,
        "semantic_guidance_scale": config.semantic_guidance_scale,
        "guidance_label_mapping": config.guidance_label_mapping,
        "au_scale": config.au_scale,
        "height": config.height,
        "width": config.width,
        "generator": [torch.Generator().manual_seed(s.seed) for s in samples],
        "output_type": "pil",
    }
    return with_pipeline_kwargs(inputs, pipeline_kwargs)


def _decoded(data: bytes, size: tuple[int, int], path: str, row: int) -> PIL.Image.Image:
    """Row `row`'s stored image as RGB at `size` (height, width); a `ValueError` naming `edit_dataset` and the row
    if its bytes are not an image."""
    try:
        image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError, a truncated file
        raise ValueError(f"`edit_dataset` {path!r}: the image of row {row} cannot be read: {error}") from error
    height, width = size
    return image if image.size == (width, height) else image.resize((width, height), PIL.Image.BICUBIC)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()
