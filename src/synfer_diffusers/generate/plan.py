"""The plan of a synthetic set: one [`PlannedSample`] per sample, drawn from that sample's seed alone, and the JSON
plan (config + model + sources + labeller) that a resume must match."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..facs import EXPRESSIONS, AUSpace
from ..hub_utils import load_error_reason
from ..pipelines.synfer.conditions import plan_image_condition
from ..pipelines.synfer.pipeline_synfer import SynFERPipeline
from .config import DEFAULT_DESCRIPTIONS, SyntheticSetConfig
from .labelers import Labeler
from .model import pipeline_fingerprint


def sample_seed(master_seed: int, sample_id: int) -> int:
    """The seed of sample `sample_id`: 63 bits of `sha256("synfer:<master_seed>:<sample_id>")`, stable across
    Python versions and platforms (unlike `hash`)."""
    digest = hashlib.sha256(f"synfer:{master_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class AUSource:
    """AU vectors to sample from, by expression (`au_policy="dataset"`)."""

    name: str
    vectors: dict[str, np.ndarray]  # expression -> (rows, num_aus) float32
    fingerprint: str

    @classmethod
    def from_dataset(cls, path: str, au_space: AUSpace, split: str = "train") -> AUSource:
        """Reads the `action_units` and `label` columns of a dataset folder or Hub id (e.g. FaceWorld, or a
        synthetic set). Its AU vectors must be in `au_space` (same width and value range); raises `ValueError`
        naming `au_dataset` otherwise."""
        import datasets

        try:
            dataset = datasets.load_dataset(path, split=split)
        except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
            raise ValueError(f"`au_dataset` {path!r} could not be loaded: {load_error_reason(error)}") from error
        missing = {"action_units", "label"} - set(dataset.column_names)
        label_feature = dataset.features.get("label")
        if missing or not isinstance(label_feature, datasets.ClassLabel):
            raise ValueError(
                f"`au_dataset` {path!r} needs an `action_units` column and a ClassLabel `label` column; "
                f"has {dataset.features}."
            )
        unknown = sorted(set(label_feature.names) - set(EXPRESSIONS))
        if unknown:
            raise ValueError(f"`au_dataset` labels {unknown} are not in {list(EXPRESSIONS)}.")
        columns = dataset.select_columns(["action_units", "label"]).with_format("numpy")[:]
        action_units = np.asarray(columns["action_units"], dtype=np.float32).reshape(len(dataset), -1)
        labels = np.asarray(columns["label"])
        if action_units.shape[1] != au_space.num_aus:
            raise ValueError(
                f"`au_dataset` {path!r} has {action_units.shape[1]} AU values per row, but the model's AU space has "
                f"{au_space.num_aus} ({', '.join(au_space.names)}): it is a different AU space."
            )
        au_space.validate_tensor(torch.from_numpy(action_units), field=f"au_dataset {path!r} action_units")
        names = np.array(label_feature.names)[labels]
        vectors = {name: action_units[names == name] for name in EXPRESSIONS if (names == name).any()}
        digest = hashlib.sha256(action_units.tobytes() + names.astype("U").tobytes()).hexdigest()
        return cls(name=str(path), vectors=vectors, fingerprint=digest)

    def check_covers(self, probabilities: np.ndarray) -> None:
        lacking = [name for name, p in zip(EXPRESSIONS, probabilities) if p > 0 and name not in self.vectors]
        if lacking:
            raise ValueError(f"`au_dataset` {self.name!r} has no rows labelled {lacking}, which the plan draws.")

    def draw(self, expression: str, rng: np.random.Generator) -> np.ndarray:  # (num_aus,)
        rows = self.vectors[expression]
        return rows[rng.integers(len(rows))]


@dataclass
class LayoutSource:
    """Real face images to start denoising from (`layout_dataset`), resized to the generation size."""

    name: str
    images: list[PIL.Image.Image]
    fingerprint: str

    @classmethod
    def from_dataset(
        cls, path: str, size: tuple[int, int], split: str = "train", max_images: int = 1024
    ) -> LayoutSource:
        """The first `max_images` images (`image` column) of a dataset folder or Hub id, as RGB `size` (H, W);
        raises `ValueError` naming `layout_dataset` when it cannot be read or has no `image` column."""
        import datasets

        try:
            dataset = datasets.load_dataset(path, split=split)
        except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
            raise ValueError(f"`layout_dataset` {path!r} could not be loaded: {error}") from error
        if not isinstance(dataset.features.get("image"), datasets.Image):
            raise ValueError(f"`layout_dataset` {path!r} needs an `image` column of images; has {dataset.features}.")
        height, width = size
        rows = dataset.select(range(min(len(dataset), max_images)))["image"]
        images = [image.convert("RGB").resize((width, height), PIL.Image.BICUBIC) for image in rows]
        digest = hashlib.sha256(b"".join(image.tobytes() for image in images)).hexdigest()
        return cls(name=str(path), images=images, fingerprint=digest)

    def draw(self, rng: np.random.Generator) -> PIL.Image.Image:
        return self.images[rng.integers(len(self.images))]


@dataclass(frozen=True)
class SourceFace:
    """The source of an edited sample: its row in the edit dataset (or, with `is_person`, the synthetic person's id),
    the sha256 of its stored image file (PNG of a person's generated face), the image (at the generation size), its
    AUs and the prompt it is inverted under."""

    source_id: int
    image_sha256: str
    image: PIL.Image.Image
    action_units: np.ndarray  # (num_aus,) float32
    prompt: str
    is_person: bool = False


@dataclass(frozen=True)
class PlannedSample:
    """Everything that decides sample `sample_id`'s image, besides the set's sampling configuration: its seed (the
    image's noise), target expression, coarse description, final prompt and AU vector (what the pipeline is given,
    unchanged, and what the dataset row records), negative prompt, layout image (`None`: denoising starts from
    noise) and, in an edit set, the source face it edits."""

    sample_id: int
    seed: int
    expression: str
    description: str
    prompt: str
    action_units: np.ndarray  # (num_aus,) float32, in the model's AU order
    negative_prompt: str | None = None
    layout_image: PIL.Image.Image | None = None
    source: SourceFace | None = None


def draw_target(
    master_seed: int, sample_id: int, probabilities: np.ndarray, descriptions: Sequence[str]
) -> tuple[int, np.random.Generator, str, str]:
    """The first draws of sample `sample_id`: its seed, its RNG (for the draws that follow), its target expression
    (from `probabilities`, in [`EXPRESSIONS`] order) and its coarse description, the person its prompt asks for."""
    seed = sample_seed(master_seed, sample_id)
    rng = np.random.default_rng(seed)
    expression = EXPRESSIONS[rng.choice(len(EXPRESSIONS), p=probabilities)]
    return seed, rng, expression, descriptions[rng.integers(len(descriptions))]


def plan_sample(
    config: SyntheticSetConfig,
    sample_id: int,
    au_space: AUSpace,
    au_source: AUSource | None = None,
    layout_source: LayoutSource | None = None,
) -> PlannedSample:
    """Sample `sample_id` of the plan, drawn from an RNG seeded by its own seed only: expression, description, AU
    vector (a row of `au_source`, or the EMFACS prototype with jitter from a generator seeded by that RNG) and prompt
    through the pipeline's own planner ([`plan_image_condition`]), and a layout image."""
    seed, rng, expression, description = draw_target(
        config.seed, sample_id, config.expression_probabilities(), config.descriptions or DEFAULT_DESCRIPTIONS
    )
    drawn = torch.from_numpy(au_source.draw(expression, rng)) if au_source is not None else None
    layout_image = layout_source.draw(rng) if layout_source is not None else None
    jitter = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    prompt, action_units = plan_image_condition(
        au_space, description, expression, drawn, jitter, config.prototype_intensity, config.au_jitter, enrich=True
    )
    return PlannedSample(
        sample_id, seed, expression, description, prompt, action_units.numpy().astype(np.float32),
        config.negative_prompt, layout_image,
    )  # fmt: skip


def pipeline_inputs(
    config: SyntheticSetConfig, samples: Sequence[PlannedSample], pipeline_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of the `SynFERPipeline` call that generates `samples`: the plan's prompts and AU vectors as
    they are (no enrichment, no prototype jitter in the pipeline), one generator per image, PIL output.
    `pipeline_kwargs` add arguments; one the config or the plan sets raises a `ValueError`."""
    layout = {}
    if samples[0].layout_image is not None:
        layout = {"layout_image": [s.layout_image for s in samples], "layout_strength": config.layout_strength}
    negatives = [s.negative_prompt for s in samples]
    inputs = {
        "prompt": [s.prompt for s in samples],
        "expression": [s.expression for s in samples],
        "action_units": torch.from_numpy(np.stack([s.action_units for s in samples])),  # (B, num_aus)
        "enrich_prompt": False,
        "au_scale": config.au_scale,
        "height": config.height,
        "width": config.width,
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "au_guidance_scale": config.au_guidance_scale,
        "au_feedback_passes": config.au_feedback_passes,
        "au_feedback_gain": config.au_feedback_gain,
        "negative_prompt": None if all(n is None for n in negatives) else [n or "" for n in negatives],
        "eta": config.eta,
        "semantic_guidance_scale": config.semantic_guidance_scale,
        "semantic_guidance_window": config.semantic_guidance_window,
        "semantic_guidance_interval": config.semantic_guidance_interval,
        "semantic_guidance_normalization": config.semantic_guidance_normalization,
        "guidance_label_mapping": config.guidance_label_mapping,
        "generator": [torch.Generator().manual_seed(s.seed) for s in samples],
        "output_type": "pil",
        **layout,
    }
    return with_pipeline_kwargs(inputs, pipeline_kwargs)


def with_pipeline_kwargs(inputs: dict[str, Any], pipeline_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """`inputs` plus the caller's extra pipeline arguments; one that `inputs` already sets raises a `ValueError`."""
    repeated = sorted(set(inputs) & set(pipeline_kwargs or {}))
    if repeated:
        raise ValueError(f"`pipeline_kwargs` must not set {repeated}: they come from the config and the plan.")
    return {**inputs, **(pipeline_kwargs or {})}


def build_plan(
    config: SyntheticSetConfig,
    pipe: SynFERPipeline,
    model_name: str,
    au_source: AUSource | None,
    labeler: Labeler,
    pipeline_kwargs: Mapping[str, Any] | None,
    layout_source: LayoutSource | None = None,
    edit_source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON plan, what a resume compares: the config, the image size, the sampler's class and the device type
    (CPU and GPU kernels round differently), the model (name + weight fingerprint), its AU space, the AU and layout
    sources' fingerprints, the labeller's full configuration ([`Labeler.config`]), extra pipeline arguments and, for an
    edit set, its source faces (`edit_source`: name, fingerprint, number of faces; the writer adds the source
    columns for it)."""
    return {
        **asdict(config),
        "image_size": list(config.check_image_size(pipe.unet.config.sample_size * pipe.vae_scale_factor)),
        "scheduler_class": type(pipe.scheduler).__name__,
        "device_type": pipe.device.type,
        "model": {"name": model_name, "fingerprint": pipeline_fingerprint(pipe)},
        "au_space": pipe.au_space.to_config(),
        "au_source": {"name": au_source.name, "fingerprint": au_source.fingerprint} if au_source else None,
        "layout_source": (
            {"name": layout_source.name, "fingerprint": layout_source.fingerprint} if layout_source else None
        ),
        "labeler": labeler.config,
        "pipeline_kwargs": dict(pipeline_kwargs or {}),
        **({"edit_source": edit_source} if edit_source is not None else {}),
    }
