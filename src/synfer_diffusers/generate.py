"""Synthetic-set generation (SynFER stage 3): plan -> `SynFERPipeline` -> labels -> parquet shards + card.

This is the one module that ties the pipeline to the data writer (`data/` never imports `pipelines/`).

1. **Plan.** [`SyntheticSetConfig`] holds everything that determines the samples, sampler, dtype, device and
   voting options included. Sample `i` gets the seed [`sample_seed`]`(seed, i)` (a sha256, not Python's `hash`),
   and its expression, coarse description and AU vector are drawn from an RNG seeded by that seed alone
   ([`plan_sample`]): the set does not depend on batch size, process count or resume point. The plan (config +
   scheduler class + device type + model fingerprint + AU space + AU source + labeller) is stored as `plan.json`;
   a rerun must match it.
2. **Generate** in batches with one `torch.Generator` per image (`pipe(..., generator=[...])`), so image `i` is
   reproduced alone from its seed.
3. **Label.** A [`Labeler`] maps the pipeline output + targets to `label`, `label_probs`, `agreement`. The default
   is [`TargetLabeler`] (label = target, one-hot, agreement 1.0); FERAnno pseudo-labels and ensemble voting
   (SynFER Sec. 3.3) plug in here as another `Labeler`, and extra pipeline arguments (those the config does not
   set) through `pipeline_kwargs`; both are recorded in the plan.
4. **Write** shards with [`~synfer_diffusers.data.writer.SyntheticSetWriter`] (atomic, verified on resume), then
   the card and preview, then optionally push to the Hub in one commit.

Several processes (`accelerate launch`) split the shards round-robin: process `p` of `K` writes shards
`p, p + K, ...`; the main process writes the card once all are done. The result equals a one-process run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import diffusers
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .data.hub import check_push_target, push_synthetic_dataset
from .data.writer import SyntheticSetWriter
from .facs import EXPRESSIONS, AUSpace
from .hub_utils import inherited_license, license_label, load_card_metadata, split_hub_ids
from .labels import ClassifierVoter, EnsembleVoter, VotingConfig
from .pipelines.synfer.pipeline_output import SynFERPipelineOutput
from .pipelines.synfer.pipeline_synfer import SynFERPipeline
from .pipelines.synfer.semantic_guidance import SG_DECODES, SG_NORMALIZATIONS, check_semantic_guidance_inputs

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_ENV = "SYNFER_DEFAULT_MODEL"
"""Environment variable naming another folder to use when no model is given."""


def default_model_dir() -> Path:
    """The checkpoint used when no model is given: `$SYNFER_DEFAULT_MODEL` if set, else the embedded default."""
    return Path(os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL_DIR)


"""The embedded default checkpoint (a FaceWorld-trained `SynFERPipeline` folder), used when no model is named."""
TINY_MODEL_NAME = "synfer-tiny-random"
"""Name recorded for the stand-in used while no embedded default exists: tiny random weights, 64x64 noise."""

DEFAULT_DESCRIPTIONS: tuple[str, ...] = (
    "a photo of a young woman",
    "a photo of an elderly man with glasses",
    "a portrait of a middle-aged man with a beard",
    "a photo of a teenage girl with long hair",
    "a close-up photo of a bald man",
    "a photo of a woman with short curly hair",
    "a portrait of an old woman with grey hair",
    "a photo of a young man with a fringe",
)
"""Coarse descriptions enriched with the expression and AU words by the pipeline (`prompts.enrich_prompt`)."""

AU_POLICIES = ("prototype", "dataset")
SCHEDULERS = (
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
)
"""Samplers `scheduler` may name (diffusers classes, built from the checkpoint's scheduler config)."""
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _check_device(name: str) -> torch.device:
    """`name` (`"cpu"`, `"cuda"`, `"cuda:N"` or `"mps"`) as a `torch.device`; a `ValueError` naming `device` when it
    is malformed or not available on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES or (device.index is not None and device.type != "cuda"):
        raise ValueError(f"`device` must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"`device` {name!r} is not available: this machine has {torch.cuda.device_count()} CUDA devices."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`device` {name!r} is not available: torch reports no MPS backend on this machine.")
    return device


def _check_eta(eta: float, scheduler_class: type) -> None:
    """Refuses `eta > 0` with a scheduler whose `step` has no `eta` (it would be ignored silently)."""
    if eta > 0 and "eta" not in inspect.signature(scheduler_class.step).parameters:
        raise ValueError(
            f"`eta` > 0 needs a scheduler with DDIM's eta (DDIMScheduler); {scheduler_class.__name__} ignores it."
        )


@dataclass
class SyntheticSetConfig:
    r"""
    Everything that determines a synthetic set's samples (stored in `plan.json`): what is drawn, how it is sampled
    (scheduler, dtype, device, negative prompt, eta, semantic guidance) and how it is labelled (voting options of the
    default labeller). Values are checked here, naming the field; those that depend on the model (`prototype_intensity`
    against its AU space, `eta` against its own scheduler) once it is loaded, before anything is written.

    Example:

    ```py
    >>> config = SyntheticSetConfig(num_samples=1000, seed=0, expression_distribution={"happy": 0.5, "sad": 0.5})
    >>> generate_synthetic_dataset(config, "outputs/happy-sad")  # doctest: +SKIP
    >>> fast = SyntheticSetConfig(scheduler="DPMSolverMultistepScheduler", dtype="bfloat16", device="cuda",
    ...                           semantic_guidance_scale=2.0, discard_rule="disagreement")  # doctest: +SKIP
    ```
    """

    num_samples: int = field(default=64, metadata={"help": "Number of images to generate (>= 1)."})
    seed: int = field(default=0, metadata={"help": "Master seed; sample i uses sha256 of (seed, i)."})
    expression_distribution: dict[str, float] | None = field(
        default=None,
        metadata={"help": "Probability of each expression (names from EXPRESSIONS, summing to 1); None: balanced."},
    )
    au_policy: str = field(
        default="prototype",
        metadata={"help": "'prototype': EMFACS prototype of the target with seeded intensity jitter; 'dataset': "
                          "the AU vector of a random `au_dataset` row with the target label."},
    )  # fmt: skip
    au_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Folder or Hub id of a dataset with `action_units` and `label` columns (au_policy='dataset')."
        },
    )
    prototype_intensity: float | None = field(
        default=None,
        metadata={"help": "Value of the prototype's active AUs, in the model's AU range; None: 3.0 on intensity "
                          "spaces, 1.0 on occurrence spaces."},
    )  # fmt: skip
    au_jitter: float = field(default=0.5, metadata={"help": "Std of the Gaussian jitter on prototype AUs."})
    descriptions: list[str] | None = field(
        default=None, metadata={"help": "Coarse descriptions drawn per sample; None: DEFAULT_DESCRIPTIONS."}
    )
    num_inference_steps: int = field(default=25, metadata={"help": "Denoising steps per image."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance scale (<= 1: off)."})
    au_scale: float = field(default=1.0, metadata={"help": "Weight of the AU cross-attention branch."})
    height: int | None = field(default=None, metadata={"help": "Image height in pixels; None: the model's."})
    width: int | None = field(default=None, metadata={"help": "Image width in pixels; None: the model's."})
    shard_size: int = field(default=256, metadata={"help": "Samples per parquet shard (the unit of resume)."})
    layout_dataset: str | None = field(
        default=None,
        metadata={"help": "Folder or Hub id of real face images (an `image` column) for layout initialisation: "
                          "each sample starts from a DDIM-inverted random image of it (None: from noise)."},
    )  # fmt: skip
    layout_strength: float = field(
        default=1.0, metadata={"help": "Layout initialisation strength in [0, 1] (1.0: full inversion, the paper's)."}
    )
    scheduler: str | None = field(
        default=None,
        metadata={"help": f"Sampler, a diffusers class built from the checkpoint's scheduler config: one of "
                          f"{', '.join(SCHEDULERS)}; None: the checkpoint's own."},
    )  # fmt: skip
    dtype: str = field(
        default="float32", metadata={"help": f"Weights and activations dtype: one of {', '.join(DTYPES)}."}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "'cpu', 'cuda', 'cuda:N' or 'mps'; None: accelerate's device for this process (with "
                          "several processes, 'cuda' is each process's own GPU)."},
    )  # fmt: skip
    negative_prompt: str | None = field(
        default=None, metadata={"help": "The unconditional prompt of classifier-free guidance; None: ''."}
    )
    eta: float = field(
        default=0.0, metadata={"help": "DDIM eta in [0, 1] (0: deterministic); only DDIMScheduler uses it."}
    )
    semantic_guidance_scale: float = field(
        default=0.0, metadata={"help": "Semantic guidance lambda_g with the model's guide classifier (0: off)."}
    )
    semantic_guidance_window: tuple[float, float] = field(
        default=(0.6, 1.0),
        metadata={"help": "(start, end), 0 <= start < end <= 1: the guided share of the denoising steps."},
    )
    semantic_guidance_interval: int = field(
        default=2, metadata={"help": "Take a semantic-guidance gradient every this many steps of the window (>= 1)."}
    )
    semantic_guidance_normalization: str = field(
        default="global",
        metadata={"help": f"Gradient normalisation of semantic guidance: one of {', '.join(SG_NORMALIZATIONS)}."},
    )
    agreement_threshold: float = field(
        default=1.0,
        metadata={"help": "Voting: a label is agreed when voters weighing at least this fraction vote for it "
                          "(1.0: unanimity, the paper's rule)."},
    )  # fmt: skip
    voter_weights: dict[str, float] | None = field(
        default=None,
        metadata={"help": "Voting: weight per voter name ('feranno', 'guide', 'target', a classifier's name); "
                          "others weigh 1, 0 silences a voter."},
    )  # fmt: skip
    label_type: str = field(
        default="mixed",
        metadata={"help": "Voting: 'mixed' one-hot where agreed and averaged where not (paper), 'hard' always "
                          "one-hot, 'soft' always averaged."},
    )  # fmt: skip
    discard_rule: str = field(
        default="none",
        metadata={"help": "Voting: rows marked keep=False: 'none', 'disagreement' (label not agreed) or "
                          "'target_mismatch' (label differs from the target)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name, minimum in (("num_samples", 1), ("seed", 0), ("num_inference_steps", 1), ("shard_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
        if self.prototype_intensity is not None:  # the range is the model's AU space's, checked once it is known
            _check_number("prototype_intensity", self.prototype_intensity, 0.0)
        for name, minimum in (("au_jitter", 0.0), ("guidance_scale", 0.0)):
            _check_number(name, getattr(self, name), minimum)
        _check_number("au_scale", self.au_scale)
        _check_number("layout_strength", self.layout_strength, 0.0)
        if self.layout_strength > 1:
            raise ValueError(f"`layout_strength` must be in [0, 1], got {self.layout_strength!r}.")
        if self.expression_distribution is not None:
            self.expression_distribution = _check_distribution(self.expression_distribution)
        if self.au_policy not in AU_POLICIES:
            raise ValueError(f"`au_policy` must be one of {list(AU_POLICIES)}, got {self.au_policy!r}.")
        if (self.au_policy == "dataset") != (self.au_dataset is not None):
            raise ValueError("`au_dataset` must be given exactly when `au_policy` is 'dataset'.")
        if self.descriptions is not None:
            self.descriptions = list(self.descriptions)
            if not self.descriptions or not all(isinstance(d, str) and d.strip() for d in self.descriptions):
                raise ValueError(
                    f"`descriptions` must be a non-empty list of non-empty strings, got {self.descriptions!r}."
                )

        self._check_sampler()
        self._check_voting()

    def _check_sampler(self) -> None:
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {list(SCHEDULERS)} or None, got {self.scheduler!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {self.dtype!r}.")
        if self.device is not None:
            _check_device(self.device)
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError(f"`negative_prompt` must be a string or None, got {self.negative_prompt!r}.")
        _check_number("eta", self.eta, 0.0)
        if self.eta > 1:
            raise ValueError(f"`eta` must be in [0, 1], got {self.eta!r}.")
        if self.scheduler is not None:
            _check_eta(self.eta, getattr(diffusers, self.scheduler))
        check_semantic_guidance_inputs(
            self.semantic_guidance_scale, self.semantic_guidance_window, self.semantic_guidance_normalization,
            self.semantic_guidance_interval, SG_DECODES[0],
        )  # fmt: skip
        self.semantic_guidance_window = tuple(float(bound) for bound in self.semantic_guidance_window)

    def _check_voting(self) -> None:
        if self.voter_weights is not None:
            if not isinstance(self.voter_weights, Mapping):
                raise ValueError(f"`voter_weights` must be a dict voter name -> weight, got {self.voter_weights!r}.")
            self.voter_weights = {str(name): weight for name, weight in self.voter_weights.items()}
            for name, weight in self.voter_weights.items():
                _check_number(f"voter_weights[{name!r}]", weight, 0.0)
        VotingConfig(use_target=True, **self.voting_options())  # the other fields keep VotingConfig's names

    def voting_options(self) -> dict[str, Any]:
        """The [`VotingConfig`] fields this config sets (the labeller adds the voters)."""
        return {
            "agreement_threshold": self.agreement_threshold,
            "weights": dict(self.voter_weights or {}),
            "label_type": self.label_type,
            "discard_rule": self.discard_rule,
        }

    def expression_probabilities(self) -> np.ndarray:  # (7,) in EXPRESSIONS order
        if self.expression_distribution is None:
            return np.full(len(EXPRESSIONS), 1.0 / len(EXPRESSIONS))
        return np.array([self.expression_distribution.get(name, 0.0) for name in EXPRESSIONS])


def _check_number(name: str, value: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")


def _check_distribution(distribution: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(distribution, Mapping) or not distribution:
        raise ValueError(
            f"`expression_distribution` must be a non-empty dict name -> probability, got {distribution!r}."
        )
    for name, probability in distribution.items():
        EXPRESSIONS.label_id(name, field="expression_distribution")
        _check_number(f"expression_distribution[{name!r}]", probability, 0.0)
    total = sum(distribution.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"`expression_distribution` must sum to 1, got {total:g}.")
    return {name: float(distribution[name]) for name in EXPRESSIONS if name in distribution}


# ----------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------


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
            raise ValueError(f"`au_dataset` {path!r} could not be loaded: {error}") from error
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
class PlannedSample:
    """What sample `sample_id` is generated from. `action_units` is `None` under the prototype policy (the
    pipeline jitters the prototype with the image's own generator); `layout_image` is `None` without a layout
    source (denoising starts from noise)."""

    sample_id: int
    seed: int
    expression: str
    description: str
    action_units: np.ndarray | None
    layout_image: PIL.Image.Image | None = None


def plan_sample(
    config: SyntheticSetConfig,
    sample_id: int,
    au_source: AUSource | None = None,
    layout_source: LayoutSource | None = None,
) -> PlannedSample:
    """Sample `sample_id` of the plan, drawn from an RNG seeded by its own seed only."""
    seed = sample_seed(config.seed, sample_id)
    rng = np.random.default_rng(seed)
    expression = EXPRESSIONS[rng.choice(len(EXPRESSIONS), p=config.expression_probabilities())]
    descriptions = config.descriptions or DEFAULT_DESCRIPTIONS
    description = descriptions[rng.integers(len(descriptions))]
    action_units = au_source.draw(expression, rng) if au_source is not None else None
    layout_image = layout_source.draw(rng) if layout_source is not None else None
    return PlannedSample(sample_id, seed, expression, description, action_units, layout_image)


def pipeline_inputs(
    config: SyntheticSetConfig, samples: Sequence[PlannedSample], pipeline_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of the `SynFERPipeline` call that generates `samples` (PIL output, one generator per
    image). `pipeline_kwargs` add arguments; one the config already sets raises a `ValueError`."""
    action_units = None
    if samples[0].action_units is not None:
        action_units = torch.from_numpy(np.stack([s.action_units for s in samples]))  # (B, num_aus)
    layout = {}
    if samples[0].layout_image is not None:
        layout = {"layout_image": [s.layout_image for s in samples], "layout_strength": config.layout_strength}
    inputs = {
        "prompt": [s.description for s in samples],
        "expression": [s.expression for s in samples],
        "action_units": action_units,
        "au_scale": config.au_scale,
        "height": config.height,
        "width": config.width,
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "negative_prompt": config.negative_prompt,
        "eta": config.eta,
        "prototype_intensity": config.prototype_intensity,
        "au_jitter": config.au_jitter,
        "semantic_guidance_scale": config.semantic_guidance_scale,
        "semantic_guidance_window": config.semantic_guidance_window,
        "semantic_guidance_interval": config.semantic_guidance_interval,
        "semantic_guidance_normalization": config.semantic_guidance_normalization,
        "generator": [torch.Generator().manual_seed(s.seed) for s in samples],
        "output_type": "pil",
        **layout,
    }
    repeated = sorted(set(inputs) & set(pipeline_kwargs or {}))
    if repeated:
        raise ValueError(f"`pipeline_kwargs` must not set {repeated}: they come from the config and the plan.")
    return {**inputs, **(pipeline_kwargs or {})}


# ----------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SampleLabels:
    """Labels of a batch: `label` (class ids), `label_probs` `(batch, 7)`, `agreement` in [0, 1] and `keep` (False
    where the voting discard rule drops the image; `None`: all kept)."""

    label: list[int]
    label_probs: np.ndarray
    agreement: list[float]
    keep: list[bool] | None = None


class Labeler(Protocol):
    """Maps a generated batch (the pipeline output: PIL `images`, and `feranno_probabilities` when the pipeline
    has a `feranno_head`) and its target class ids to [`SampleLabels`]. `name` goes into the plan, `description`
    into the card."""

    name: str
    description: str

    def __call__(self, output: SynFERPipelineOutput, target_labels: list[int]) -> SampleLabels: ...


class TargetLabeler:
    """The generation target as the label: one-hot `label_probs`, `agreement` 1.0. [`default_labeler`] uses it
    when there is nothing to vote with (no FERAnno head, no classifiers); otherwise [`VotingLabeler`]."""

    name = "target"
    description = (
        "the generation target (no pseudo-labeller): `label` = `target_label`, one-hot `label_probs`, `agreement` 1.0"
    )

    def __call__(self, output: SynFERPipelineOutput, target_labels: list[int]) -> SampleLabels:
        probs = np.eye(len(EXPRESSIONS), dtype=np.float32)[target_labels]
        return SampleLabels(label=list(target_labels), label_probs=probs, agreement=[1.0] * len(target_labels))


class VotingLabeler:
    """Labels rectified by an [`EnsembleVoter`]: FERAnno's in-loop probabilities (when the pipeline has a
    `feranno_head`), the voter's classifiers on the images and, with `use_target`, the generation target.
    `label_probs` are the voter's output (the paper's rule by default: one-hot where voters agree, averaged
    probabilities where they disagree) and `agreement` its agreement score."""

    def __init__(self, voter: EnsembleVoter):
        self.voter = voter
        voters = list(voter.voter_names)
        self.name = "vote:" + ",".join(voters)
        config = voter.config
        weights = f", weights {config.weights}" if config.weights else ""
        discard = f", `keep` False by the {config.discard_rule!r} rule" if config.discard_rule != "none" else ""
        self.description = (
            f"ensemble vote of {', '.join(voters)} ({config.label_type} labels, agreement threshold "
            f"{config.agreement_threshold}{weights}{discard}); `agreement` is the weighted fraction of voters for "
            "the label"
        )

    def __call__(self, output: SynFERPipelineOutput, target_labels: list[int]) -> SampleLabels:
        probabilities = {}
        if "feranno" in self.voter.config.probability_voters:
            if output.feranno_probabilities is None:
                raise ValueError("The voter expects FERAnno probabilities but the pipeline has no `feranno_head`.")
            probabilities["feranno"] = output.feranno_probabilities
        targets = [EXPRESSIONS[i] for i in target_labels]
        result = self.voter(output.images, probabilities=probabilities, targets=targets)
        return SampleLabels(
            label=result.label_ids.tolist(),
            label_probs=result.probabilities.numpy().astype(np.float32),
            agreement=result.agreement.tolist(),
            keep=result.keep.tolist(),
        )


def default_labeler(
    pipe: SynFERPipeline, classifiers: Sequence[ClassifierVoter] = (), voting: Mapping[str, Any] | None = None
) -> Labeler:
    """The target voted with FERAnno (when the pipeline has a `feranno_head`), the pipeline's guide classifier (when
    it has a `guidance_classifier` and its image processor, as voter `"guide"`) and the given classifiers; the
    target alone ([`TargetLabeler`]) when there is nothing to vote with. With FERAnno and the target only, the
    paper's averaging rule always keeps the target label (a one-hot vote outweighs any one distribution), so a
    third opinion is what lets a vote overrule the target.

    `voting` holds [`VotingConfig`] fields (threshold, weights, label type, discard rule; see
    [`SyntheticSetConfig.voting_options`]); other than the defaults they need something to vote with."""
    voting = dict(voting or {})
    if pipe.guidance_classifier is not None and pipe.guidance_image_processor is not None:
        classifiers = [
            ClassifierVoter(pipe.guidance_classifier, pipe.guidance_image_processor, name="guide"),
            *classifiers,
        ]
    if pipe.feranno_head is None and not classifiers:
        changed = _changed_voting_options(voting)
        if changed:
            raise ValueError(
                f"Voting options {changed} need voters: the model has no `feranno_head` or guide classifier and no "
                "`voters` were given."
            )
        return TargetLabeler()
    probability_voters = ("feranno",) if pipe.feranno_head is not None else ()
    return VotingLabeler(
        EnsembleVoter(classifiers, VotingConfig(probability_voters=probability_voters, use_target=True, **voting))
    )


def _changed_voting_options(voting: Mapping[str, Any]) -> list[str]:
    """Names of the [`VotingConfig`] fields in `voting` that differ from their defaults."""
    defaults = asdict(VotingConfig())
    return sorted(name for name, value in voting.items() if value != defaults[name])


def build_rows(
    samples: Sequence[PlannedSample], output: SynFERPipelineOutput, labels: SampleLabels, au_space: AUSpace
) -> list[dict[str, Any]]:
    """Dataset rows (the writer's features) of a generated, labelled batch."""
    return [
        {
            "image": output.images[i],
            "text": output.prompts[i],
            "action_units": [output.action_units[i][name] for name in au_space.names],
            "target_label": EXPRESSIONS.label_id(sample.expression),
            "label": int(labels.label[i]),
            "label_probs": labels.label_probs[i].tolist(),
            "agreement": float(labels.agreement[i]),
            "keep": True if labels.keep is None else bool(labels.keep[i]),
            "seed": sample.seed,
            "sample_id": sample.sample_id,
        }
        for i, sample in enumerate(samples)
    ]


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


def resolve_pipeline(model: str | None = None, dtype: torch.dtype | None = None) -> tuple[SynFERPipeline, str]:
    """Loads `model` (a `SynFERPipeline` folder or Hub repo id) in `dtype` (default float32); with `None`, the default
    checkpoint ([`default_model_dir`]: the embedded FaceWorld model in `synfer_diffusers/default_model/` unless
    `$SYNFER_DEFAULT_MODEL` names another folder), or, where that folder holds none, tiny random components (64x64
    images of noise, with a warning; float32). Returns `(pipeline, name)`."""
    dtype = dtype or torch.float32  # the embedded default is stored in float16 to keep the package small
    if model is None:
        folder = default_model_dir()
        if (folder / "model_index.json").is_file():
            default = SynFERPipeline.from_pretrained(folder, dtype=dtype)
            return default, "synfer_diffusers/default_model" if folder == DEFAULT_MODEL_DIR else str(folder)
        from .tiny import make_tiny_components

        logger.warning(
            f"No default checkpoint in {folder}: using tiny RANDOM components "
            f"({TINY_MODEL_NAME}); the images are noise. Pass --model to use a trained SynFERPipeline."
        )
        return SynFERPipeline(**make_tiny_components(seed=0, sample_size=32)), TINY_MODEL_NAME
    try:
        return SynFERPipeline.from_pretrained(model, dtype=dtype), str(model)
    except (OSError, ValueError) as error:
        raise ValueError(f"`model` {model!r} is not a loadable SynFERPipeline folder or Hub repo: {error}") from error


def configure_pipeline(pipe: SynFERPipeline, config: SyntheticSetConfig, device: torch.device) -> SynFERPipeline:
    """Gives `pipe` (in place) the config's sampler (`scheduler` built from the checkpoint's scheduler config; DDIM
    with `clip_sample=False`, as latents need), `dtype` and `device`, and checks that `prototype_intensity` fits the
    model's AU space and `eta` the scheduler. Returns `pipe`."""
    pipe.au_space.prototype_value(config.prototype_intensity, field="prototype_intensity")
    if config.scheduler is not None:
        scheduler_class = getattr(diffusers, config.scheduler)
        latent_options = {"clip_sample": False} if scheduler_class is diffusers.DDIMScheduler else {}
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **latent_options)
    _check_eta(config.eta, type(pipe.scheduler))
    dtype = DTYPES[config.dtype]
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(parameter.dtype != dtype for module in modules for parameter in module.parameters()):
        pipe.to(dtype=dtype)
    return pipe.to(device)


def pipeline_fingerprint(pipe: SynFERPipeline) -> str:
    """sha256 over the components' public configs, weights and tokenizer vocabulary: the model's identity in a
    plan, the same in every process and wherever the checkpoint is stored."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        digest.update(name.encode())
        config = getattr(component, "config", None)
        if config is not None:
            config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            public = {k: v for k, v in config.items() if not k.startswith("_")}  # private keys: paths, set order
            digest.update(json.dumps(public, sort_keys=True, default=str).encode())
        if isinstance(component, torch.nn.Module):
            for key, tensor in component.state_dict().items():
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif hasattr(component, "get_vocab"):
            digest.update(json.dumps(component.get_vocab(), sort_keys=True).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticSetResult:
    """What a [`generate_synthetic_dataset`] call did: `shards_written` by this process, whether the set is
    `complete` (card written), and the Hub `commit_url` if pushed."""

    output_dir: str
    num_samples: int
    num_shards: int
    shards_written: int
    complete: bool
    commit_url: str | None = None


def build_plan(
    config: SyntheticSetConfig,
    pipe: SynFERPipeline,
    model_name: str,
    au_source: AUSource | None,
    labeler: Labeler,
    pipeline_kwargs: Mapping[str, Any] | None,
    layout_source: LayoutSource | None = None,
) -> dict[str, Any]:
    """The JSON plan: the config, the image size, the sampler's class and the device type (CPU and GPU kernels round
    differently), the model (name + weight fingerprint), its AU space, the AU and layout sources' fingerprints, the
    labeller and extra pipeline arguments."""
    scale = pipe.vae_scale_factor
    default_side = pipe.unet.config.sample_size * scale
    return {
        **asdict(config),
        "image_size": [config.height or default_side, config.width or default_side],
        "scheduler_class": type(pipe.scheduler).__name__,
        "device_type": pipe.device.type,
        "model": {"name": model_name, "fingerprint": pipeline_fingerprint(pipe)},
        "au_space": pipe.au_space.to_config(),
        "au_source": {"name": au_source.name, "fingerprint": au_source.fingerprint} if au_source else None,
        "layout_source": (
            {"name": layout_source.name, "fingerprint": layout_source.fingerprint} if layout_source else None
        ),
        "labeler": labeler.name,
        "pipeline_kwargs": dict(pipeline_kwargs or {}),
    }


def generate_synthetic_dataset(
    config: SyntheticSetConfig,
    output_dir: str | os.PathLike,
    model: str | None = None,
    pipeline: SynFERPipeline | None = None,
    batch_size: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    labeler: Labeler | None = None,
    voters: Sequence[str] = (),
    pipeline_kwargs: Mapping[str, Any] | None = None,
    card_data: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
    show_progress: bool = True,
) -> SyntheticSetResult:
    r"""
    Generates, labels and writes a synthetic facial-expression dataset folder (and optionally publishes it).

    Args:
        config ([`SyntheticSetConfig`]): what to generate.
        output_dir (`str` or `os.PathLike`): the dataset folder (`datasets.load_dataset(output_dir)` reads it).
        model (`str`, *optional*): a `SynFERPipeline` folder or Hub repo id; default: [`resolve_pipeline`]`(None)`.
        pipeline ([`SynFERPipeline`], *optional*): an already loaded pipeline, instead of `model`; it gets the
            config's scheduler, dtype and device in place ([`configure_pipeline`]).
        batch_size (`int`, defaults to 8): images per pipeline call. Not part of the plan: results agree across
            batch sizes up to float rounding, and exactly for the same batch size.
        resume (`bool`): complete an interrupted run of the same plan (verifying the shards already written).
        overwrite (`bool`): replace a folder holding another plan.
        push_to_hub (`str`, *optional*): Hub dataset repo id `"user/name"`; the complete set is uploaded in one
            commit, with retries. The repo id and token are checked before anything is generated.
        token (`str`, *optional*), private (`bool`, *optional*): for the push.
        labeler ([`Labeler`], *optional*): default [`default_labeler`]: FERAnno + target voting when the pipeline
            has a `feranno_head` (or `voters` are given), with the config's voting options, else [`TargetLabeler`].
        voters (`list[str]`, *optional*): extra voting classifiers (transformers image-classifier folders or repo
            ids, `id2label` mappable onto `EXPRESSIONS`) for the default labeler.
        pipeline_kwargs (`dict`, *optional*): extra JSON-serialisable pipeline arguments (recorded in the plan),
            other than those the config sets.
        card_data (`dict`, *optional*): YAML metadata of the card (`license`, `tags`, `pretty_name`, ...).
        process_index, num_processes (`int`, *optional*): this process's share (shards `process_index::num_processes`).
            Default: accelerate's state, so `accelerate launch --num_processes K -m synfer_diffusers.cli generate`
            splits the work, with barriers. Given explicitly there is no barrier: the call that finds every shard
            written finalises the set, so run process 0 first (it prepares the folder) or together.
        show_progress (`bool`, defaults to True): a progress bar with rate and ETA.

    Returns:
        [`SyntheticSetResult`].

    Example:

    ```py
    >>> from datasets import load_dataset
    >>> from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset

    >>> config = SyntheticSetConfig(num_samples=16, seed=0, num_inference_steps=4, shard_size=8)
    >>> generate_synthetic_dataset(config, "outputs/demo")  # no model: the embedded default
    >>> load_dataset("outputs/demo", split="train").features["label"].names[:2]
    ['neutral', 'happy']
    ```
    """
    if not isinstance(config, SyntheticSetConfig):
        raise TypeError(f"`config` must be a SyntheticSetConfig, got {type(config).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    if resume and overwrite:
        raise ValueError("`resume` and `overwrite` exclude each other: pick one.")
    if push_to_hub is not None:
        token = check_push_target(push_to_hub, token)
    if labeler is not None and _changed_voting_options(config.voting_options()):
        raise ValueError("The config's voting options are for the default labeler; pass them to your `labeler`.")
    rank, world, barrier, process_device = _process_layout(process_index, num_processes)
    distributed = process_index is None and world > 1
    device = _resolve_device(config.device, process_device)

    if pipeline is not None:
        pipe, model_name = pipeline, str(getattr(pipeline, "name_or_path", None) or "custom")
    else:
        pipe, model_name = resolve_pipeline(model, DTYPES[config.dtype])
    if pipe.au_space is None:
        raise ValueError("`model` has no AU adapter (AUConditionedUNet2DConditionModel): cannot record action units.")
    configure_pipeline(pipe, config, device)
    pipe.set_progress_bar_config(disable=True)
    au_source = AUSource.from_dataset(config.au_dataset, pipe.au_space) if config.au_policy == "dataset" else None
    if au_source is not None:
        au_source.check_covers(config.expression_probabilities())
    layout_source = None
    if config.layout_dataset is not None:
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        layout_source = LayoutSource.from_dataset(config.layout_dataset, (config.height or side, config.width or side))
    pipeline_inputs(config, [plan_sample(config, 0, au_source, layout_source)], pipeline_kwargs)  # checks them
    classifiers = [ClassifierVoter.from_pretrained(path) for path in voters]
    labeler = labeler or default_labeler(pipe, classifiers, config.voting_options())
    plan = build_plan(config, pipe, model_name, au_source, labeler, pipeline_kwargs, layout_source)
    writer = SyntheticSetWriter(output_dir, plan)

    if distributed and rank > 0:
        barrier()  # the main process prepares the folder first
    writer.prepare(resume=resume, overwrite=overwrite, is_main_process=rank == 0)
    if distributed and rank == 0:
        barrier()

    mine = writer.shards[rank::world]
    pending = writer.pending_shards(mine)
    total = sum(len(spec.sample_ids) for spec in mine)
    done = total - sum(len(spec.sample_ids) for spec in pending)
    with tqdm(total=total, initial=done, unit="img", desc=f"synfer generate [{rank + 1}/{world}]",
              disable=not show_progress, position=rank, dynamic_ncols=True) as progress:  # fmt: skip
        for spec in pending:
            rows = []
            for ids in _chunks(spec.sample_ids, batch_size):
                samples = [plan_sample(config, i, au_source, layout_source) for i in ids]
                output = pipe(**pipeline_inputs(config, samples, pipeline_kwargs))
                labels = labeler(output, [EXPRESSIONS.label_id(s.expression) for s in samples])
                rows.extend(build_rows(samples, output, labels, pipe.au_space))
                progress.update(len(samples))
            writer.write_shard(spec, rows)

    if distributed:
        barrier()
    result = SyntheticSetResult(str(output_dir), config.num_samples, len(writer.shards), len(pending), complete=False)
    if (rank == 0 or not distributed) and not writer.pending_shards():
        writer.finalize(_card_fields(plan, labeler, push_to_hub), {**_DEFAULT_CARD_DATA, **(card_data or {})})
        result.complete = True
        if push_to_hub is not None:
            result.commit_url = push_synthetic_dataset(output_dir, push_to_hub, token=token, private=private)
    elif not distributed:
        logger.info(f"Shards of other processes are still missing in {output_dir}; the last process writes the card.")
    return result


_DEFAULT_CARD_DATA: dict[str, Any] = {
    "task_categories": ["image-classification", "text-to-image"],
    "tags": ["synfer", "synthetic", "facial-expression-recognition", "action-units"],
}


def _card_fields(plan: Mapping[str, Any], labeler: Labeler, repo_id: str | None) -> dict[str, Any]:
    """Card metadata (the generating model's licence, read from its card; the AU and layout datasets as
    `source_datasets` where they are on the Hub) and the template's text fields."""
    model = plan["model"]["name"]
    tiny = model == TINY_MODEL_NAME
    model_dir = DEFAULT_MODEL_DIR if model == "synfer_diffusers/default_model" else model
    model_card = None if tiny else load_card_metadata(model_dir)
    distribution = plan["expression_distribution"]
    space = AUSpace.from_config(plan["au_space"])
    value = space.prototype_value(plan["prototype_intensity"])
    if plan["au_policy"] == "prototype" and space.kind == "occurrence":
        au_policy = f"EMFACS prototype of the target (and left/right variants of its AUs) at {value:g}, no jitter"
    elif plan["au_policy"] == "prototype":
        au_policy = (f"EMFACS prototype of the target at intensity {value:g}, Gaussian jitter (std "
                     f"{plan['au_jitter']}) on its active AUs, drawn from each image's seed")  # fmt: skip
    else:
        au_policy = f"AU vector of a random row of `{plan['au_source']['name']}` with the target label"
    return {
        **inherited_license(model_card),
        "source_datasets": split_hub_ids([plan[k] for k in ("au_dataset", "layout_dataset") if plan[k]])[0] or None,
        "model_license": license_label(model_card),
        "repo_id": repo_id,
        "num_samples": plan["num_samples"],
        "master_seed": plan["seed"],
        "image_size": "{}x{}".format(*plan["image_size"]),
        "sampling_summary": _sampling_summary(plan),
        "model_name": model,
        "model_fingerprint": plan["model"]["fingerprint"][:16],
        "model_lineage": "tiny random weights from `synfer_diffusers.tiny` (a stand-in)" if tiny else None,
        "au_names": plan["au_space"]["names"],
        "au_kind": plan["au_space"]["kind"],
        "expressions": list(EXPRESSIONS),
        "expression_summary": "balanced over the seven classes" if distribution is None
        else ", ".join(f"{name} {p:.1%}" for name, p in distribution.items()),
        "au_policy_summary": au_policy,
        "labeler_description": labeler.description,
        "noise_warning": "made with tiny random weights (no embedded default checkpoint yet): the images are noise."
        if tiny else None,
    }  # fmt: skip


def _sampling_summary(plan: Mapping[str, Any]) -> str:
    """The card's one-line account of how the images were sampled."""
    parts = [
        f"{plan['num_inference_steps']} steps of {plan['scheduler_class']}",
        f"guidance scale {plan['guidance_scale']}",
        f"AU scale {plan['au_scale']}",
        f"{plan['dtype']} on {plan['device_type']}",
    ]
    if plan["negative_prompt"]:
        parts.append(f"negative prompt {plan['negative_prompt']!r}")
    if plan["eta"]:
        parts.append(f"eta {plan['eta']}")
    if plan["semantic_guidance_scale"]:
        start, end = plan["semantic_guidance_window"]
        parts.append(
            f"semantic guidance {plan['semantic_guidance_scale']} over the steps {start:.0%}-{end:.0%} (a gradient "
            f"every {plan['semantic_guidance_interval']} steps, {plan['semantic_guidance_normalization']} "
            "normalisation)"
        )
    if plan["pipeline_kwargs"]:
        parts.append(f"extra pipeline arguments {plan['pipeline_kwargs']}")
    if plan["layout_dataset"]:
        parts.append(f"layout initialisation from `{plan['layout_dataset']}` at strength {plan['layout_strength']}")
    return ", ".join(parts)


def _process_layout(
    process_index: int | None, num_processes: int | None
) -> tuple[int, int, Callable[[], None], torch.device]:
    """`(rank, world, barrier, device)`: from accelerate's state, or as given (then no barrier)."""
    if process_index is None and num_processes is None:
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes, state.wait_for_everyone, state.device
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"`num_processes` must be an int >= 1, got {num_processes!r}.")
    if not isinstance(process_index, int) or not 0 <= process_index < num_processes:
        raise ValueError(f"`process_index` must be an int in [0, {num_processes}), got {process_index!r}.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return process_index, num_processes, lambda: None, device


def _resolve_device(name: str | None, process_device: torch.device) -> torch.device:
    """The device to generate on: `name` (checked), where plain `"cuda"` is this process's own GPU under accelerate;
    `None`: `process_device`."""
    if name is None:
        return process_device
    device = _check_device(name)
    if device.type == "cuda" and device.index is None and process_device.type == "cuda":
        return process_device
    return device


def _chunks(ids: range, size: int) -> Iterator[range]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


__all__ = [
    "AUSource",
    "DEFAULT_DESCRIPTIONS",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_MODEL_ENV",
    "DTYPES",
    "Labeler",
    "LayoutSource",
    "PlannedSample",
    "SCHEDULERS",
    "SampleLabels",
    "SyntheticSetConfig",
    "SyntheticSetResult",
    "TargetLabeler",
    "build_plan",
    "build_rows",
    "configure_pipeline",
    "generate_synthetic_dataset",
    "pipeline_fingerprint",
    "pipeline_inputs",
    "plan_sample",
    "resolve_pipeline",
    "sample_seed",
]
