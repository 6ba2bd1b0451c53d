"""[`SyntheticSetConfig`]: everything that determines a synthetic set's samples, checked field by field.

Each field's metadata carries its `help` and, where the command line spells it differently from the field, how
(`flag`, `parse`, `metavar`, `cli_default`): the `synfer generate` options are built from these fields
([`~synfer_diffusers.dataclass_cli.add_dataclass_arguments`]), so a new field is a new flag with no second list to
keep in step. The voting fields take their help from [`VotingConfig`]'s. This module loads no torch or diffusers
(the command line's help reads it); the checks that need them import them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..facs import EXPRESSIONS
from ..labels.config import Aggregation, DiscardRule, LabelType, VotingConfig
from ..pipelines.synfer.options import (
    DEFAULT_EDIT_AU_GUIDANCE_SCALE,
    DEFAULT_EDIT_GUIDANCE_SCALE,
    DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW,
    DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE,
    DEFAULT_EDIT_STRENGTH,
    DEFAULT_SG_INTERVAL,
    DEFAULT_SG_WINDOW,
    SG_DECODES,
    SG_NORMALIZATIONS,
    check_semantic_guidance_inputs,
    check_window,
    edit_au_guidance_scale,
)
from ..value_checks import check_int, check_number
from .flags import (
    parse_expression_distribution,
    parse_label_mapping,
    parse_mutual_self_attention_window,
    parse_voter_weights,
    parse_window,
    read_descriptions_file,
)

if TYPE_CHECKING:
    import torch

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
DTYPES = ("float32", "bfloat16", "float16")
"""Names `dtype` may take, torch's own ([`torch_dtype`])."""
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEFAULT_NUM_SAMPLES = 64
"""`num_samples` of a generated set when none is given."""
DEFAULT_GUIDANCE_SCALE = 5.0
"""`guidance_scale` of a generated set when none is given."""
DEFAULT_QUEUE_DEPTH = 2
"""Batches that `synfer generate` lets its background stage fall behind by default on an accelerator (a run option,
not in the plan; see [`default_queue_depth`])."""
MAX_IMAGE_SIZE_FACTOR = 4
"""`height` and `width` are at most this many times the model's native image size (2048 px for a 512 px model)."""


VOTING_FIELDS = (
    "agreement_threshold", "voter_weights", "label_type", "aggregation", "classifier_tempering", "discard_rule"
)
"""The fields of [`SyntheticSetConfig`] that configure voting ([`SyntheticSetConfig.voting_options`]); `synfer
relabel` can change them."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a [`DTYPES`] name."""
    import torch

    return getattr(torch, name)


def check_device(name: str) -> torch.device:
    """`name` (`"cpu"`, `"cuda"`, `"cuda:N"` or `"mps"`) as a `torch.device`; a `ValueError` naming `device` when it
    is malformed or not available on this machine."""
    import torch

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


def default_queue_depth(device: torch.device) -> int:
    """`queue_depth` when none is given: [`DEFAULT_QUEUE_DEPTH`] on an accelerator, where the background stage's CPU
    work overlaps with denoising on the device; 0 (synchronous) on the CPU, where the stage's thread would compete with
    torch's own threads for the same cores (`synfer generate` / bare pipeline calls on a 2-core CPU: 0.731 with the
    stage, 0.934 without; `benchmarks/RESULTS.md` table 3 at a820b36)."""
    return 0 if device.type == "cpu" else DEFAULT_QUEUE_DEPTH


def check_eta(eta: float, scheduler_class: type) -> None:
    """Refuses `eta > 0` with a scheduler whose `step` has no `eta` (it would be ignored silently)."""
    if eta > 0 and "eta" not in inspect.signature(scheduler_class.step).parameters:
        raise ValueError(
            f"`eta` > 0 needs a scheduler with DDIM's eta (DDIMScheduler); {scheduler_class.__name__} ignores it."
        )


def voting_help(name: str, detail: str = "") -> str:
    """The help of a [`VotingConfig`] field, for the [`SyntheticSetConfig`] field that sets it."""
    text = VotingConfig.__dataclass_fields__[name].metadata["help"]
    return f"Voting: {text[0].lower()}{text[1:]}{detail}"


@dataclass
class SyntheticSetConfig:
    r"""
    Everything that determines a synthetic set's samples (stored in `plan.json`): what is drawn, how it is sampled
    (scheduler, dtype, device, compile and memory format, which round differently, negative prompt, eta, semantic
    guidance) and how it is labelled (voting options of the
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

    num_samples: int | None = field(
        default=None,
        metadata={"help": "Number of images to generate (>= 1); None: 64, or for an edit set every source face x "
                          "every expression (a smaller number keeps the first, face by face)."},
    )  # fmt: skip
    seed: int = field(default=0, metadata={"help": "Master seed; sample i uses sha256 of (seed, i)."})
    expression_distribution: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "Probability of each expression (names from EXPRESSIONS, summing to 1): 'balanced' or 'all' "
            "(None), 'happy=0.5,sad=0.5' or a JSON object. An edit set edits each face into every expression of "
            "non-zero probability.",
            "flag": "--expressions", "parse": parse_expression_distribution, "cli_default": "balanced",
        },  # fmt: skip
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
        default=None,
        metadata={"help": "Coarse descriptions drawn per sample, one per line of a text file; None: "
                          "DEFAULT_DESCRIPTIONS.", "flag": "--descriptions-file", "parse": read_descriptions_file},
    )
    num_inference_steps: int = field(default=25, metadata={"help": "Denoising steps per image."})
    guidance_scale: float | None = field(
        default=None,
        metadata={"help": f"Classifier-free guidance scale (<= 1: off); None: {DEFAULT_GUIDANCE_SCALE:g} for generated "
                          f"sets, {DEFAULT_EDIT_GUIDANCE_SCALE:g} for edit sets."},
    )  # fmt: skip
    au_scale: float = field(default=1.0, metadata={"help": "Weight of the AU cross-attention branch."})
    au_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "AU guidance: a classifier-free guidance scale of the AU condition's own (a third UNet branch, "
                          "1.5x the UNet cost); None: the AUs are guided with the text by --guidance-scale in "
                          f"generated sets, and in edit sets {DEFAULT_EDIT_AU_GUIDANCE_SCALE:g} (the edit's default) "
                          "where --guidance-scale > 1, none without CFG (the value of --guidance-scale guides them "
                          "with the text)."},
    )  # fmt: skip
    au_feedback_passes: int = field(
        default=0,
        metadata={"help": "AU feedback (generated sets): passes that render each image, read its AUs with the model's "
                          "`au_estimator` and correct its AU condition by --au-feedback-gain times the error read, "
                          "before the final render from the same noise; each pass costs a whole sampling loop. 0: off."},
    )  # fmt: skip
    au_feedback_gain: float = field(
        default=1.0, metadata={"help": "The share of the read AU error each AU-feedback pass corrects."}
    )
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
    compile: bool = field(
        default=False,
        metadata={"help": "Regional torch.compile of the UNet's repeated blocks (diffusers' compile_repeated_blocks): "
                          "the first calls compile (slow), later ones run faster; refused where torch cannot compile "
                          "(no C++ compiler, no Triton)."},
    )  # fmt: skip
    channels_last: bool = field(
        default=False, metadata={"help": "UNet and VAE weights in the channels_last memory format (faster convolutions "
                                         "on GPUs and some CPUs)."},
    )  # fmt: skip
    negative_prompt: str | None = field(
        default=None, metadata={"help": "The unconditional prompt of classifier-free guidance; None: ''."}
    )
    eta: float = field(
        default=0.0, metadata={"help": "DDIM eta in [0, 1] (0: deterministic); only DDIMScheduler uses it."}
    )
    semantic_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Semantic guidance lambda_g with the model's guide classifier (0: off); None: 0 for generated "
                          f"sets, {DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE:g} for edit sets where the model has a guide "
                          "(edits use the default window and interval)."},
    )  # fmt: skip
    semantic_guidance_window: tuple[float, float] = field(
        default=(0.6, 1.0),
        metadata={"help": "'start,end', 0 <= start < end <= 1: the guided share of the denoising steps.",
                  "parse": parse_window, "metavar": "START,END"},
    )
    semantic_guidance_interval: int = field(
        default=2, metadata={"help": "Take a semantic-guidance gradient every this many steps of the window (>= 1)."}
    )
    semantic_guidance_normalization: str = field(
        default="global",
        metadata={"help": f"Gradient normalisation of semantic guidance: one of {', '.join(SG_NORMALIZATIONS)}."},
    )
    guidance_label_mapping: dict[str, str | None] | None = field(
        default=None,
        metadata={"help": "Renames the guide classifier's labels onto the seven expressions for semantic guidance "
                          "and the guide's vote, e.g. 'Happiness=happy,Contempt=' (empty: drop that output).",
                  "parse": parse_label_mapping, "metavar": "LABEL=EXPRESSION,..."},
    )  # fmt: skip
    agreement_threshold: float = field(default=1.0, metadata={"help": voting_help("agreement_threshold")})
    voter_weights: dict[str, float] | None = field(
        default=None,
        metadata={"help": voting_help("weights", " Voters: 'feranno', 'guide', 'target', a classifier's name; e.g. "
                                                 "'feranno=2,target=1' or a JSON object."),
                  "parse": parse_voter_weights, "metavar": "NAME=WEIGHT,..."},
    )  # fmt: skip
    label_type: LabelType = field(default="mixed", metadata={"help": voting_help("label_type")})
    aggregation: Aggregation = field(
        default="dawid_skene",
        metadata={"help": voting_help("aggregation", " 'dawid_skene' (tempered by --classifier-tempering) is what "
                                                     "`synfer generate` uses unless told; its labels are rewritten "
                                                     "once every shard is written.")},
    )  # fmt: skip
    classifier_tempering: float = field(
        default=0.6,
        metadata={"help": voting_help("classifier_tempering", " `synfer generate`'s 0.6 was chosen on FaceWorld, "
                                                              "by the second judge on half of the suite's synthetic "
                                                              "sets; benchmarks/RESULTS.md tables 2 and 5 measure it.")},
    )  # fmt: skip
    discard_rule: DiscardRule = field(default="none", metadata={"help": voting_help("discard_rule")})
    edit_dataset: str | None = field(
        default=None,
        metadata={"help": "Folder or Hub id of source faces (an `image` column; optional `text` captions and "
                          "`action_units`, else estimated by the model's AU estimator): an identity-controlled edit "
                          "set, each face edited into each expression (`SynFERPipeline.edit`)."},
    )  # fmt: skip
    edit_strength: float = field(
        default=DEFAULT_EDIT_STRENGTH,
        metadata={"help": "Edit sets: the share of the schedule inverted and re-denoised, in (0, 1]."},
    )
    mutual_self_attention_window: tuple[float, float] | None = field(
        default=DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW,
        metadata={"help": "Edit sets: mutual self-attention (MasaCtrl) in this share of the denoising steps, "
                          "'start,end' with 0 <= start < end <= 1 (the edit's self-attention reads the source's keys "
                          "and values, one more UNet pass per step), or 'off'.",
                  "parse": parse_mutual_self_attention_window, "metavar": "START,END"},
    )  # fmt: skip
    mutual_self_attention_start_layer: int | None = field(
        default=None,
        metadata={"help": "Edit sets: the first self-attention layer (forward order) that shares the source's keys "
                          "and values; None: the decoder's first (3 in the embedded default)."},
    )  # fmt: skip
    persons: int | None = field(
        default=None,
        metadata={"help": "Synthetic persons: this many new identities, each a neutral face generated from its own "
                          "seed, then edited into every expression of non-zero probability like an edit set; rows "
                          "carry `person_id`."},
    )  # fmt: skip
    drop_discarded: bool = field(
        default=False,
        metadata={"help": "Leave rows the discard rule marks keep=False out of the dataset (default: keep them, "
                          "flagged)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.num_samples is None and not self.is_edit_set:
            self.num_samples = DEFAULT_NUM_SAMPLES
        if self.guidance_scale is None:
            self.guidance_scale = DEFAULT_EDIT_GUIDANCE_SCALE if self.is_edit_set else DEFAULT_GUIDANCE_SCALE
        if self.semantic_guidance_scale is None and not self.is_edit_set:
            self.semantic_guidance_scale = 0.0  # an edit set's follows the model's guide (run.py)
        for name in ("drop_discarded", "compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        check_int("num_samples", self.num_samples, 1, optional=self.is_edit_set)  # None: every face
        for name, minimum in (("seed", 0), ("num_inference_steps", 1), ("shard_size", 1)):
            check_int(name, getattr(self, name), minimum)
        for name in ("height", "width"):
            check_int(name, getattr(self, name), 1, optional=True)
        # the range of prototype_intensity is the model's AU space's, checked once it is known
        for name in ("prototype_intensity", "au_guidance_scale"):
            check_number(name, getattr(self, name), 0, optional=True)
        for name in ("au_jitter", "guidance_scale"):
            check_number(name, getattr(self, name), 0)
        check_number("au_scale", self.au_scale)
        check_int("au_feedback_passes", self.au_feedback_passes, 0)
        check_number("au_feedback_gain", self.au_feedback_gain, 0)
        if self.is_edit_set and self.au_feedback_passes:
            raise ValueError("`au_feedback_passes` applies to generated sets, not to edit sets (`edit_dataset`, `persons`).")
        if self.is_edit_set:
            self.au_guidance_scale = edit_au_guidance_scale(self.au_guidance_scale, self.guidance_scale)
        if self.guidance_label_mapping is not None:
            if not isinstance(self.guidance_label_mapping, Mapping):
                raise ValueError(f"`guidance_label_mapping` must be a dict label -> expression or None, got "
                                 f"{self.guidance_label_mapping!r}.")  # fmt: skip
            for label, name in self.guidance_label_mapping.items():
                if name is not None:
                    EXPRESSIONS.label_id(name, field=f"guidance_label_mapping[{label!r}]")
        check_number("layout_strength", self.layout_strength, 0, 1)
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
        self._check_edit()

    @property
    def is_edit_set(self) -> bool:
        """Whether the set is made by `SynFERPipeline.edit`: of an `edit_dataset`'s faces or of synthetic `persons`."""
        return self.edit_dataset is not None or self.persons is not None

    def _check_edit(self) -> None:
        check_number("edit_strength", self.edit_strength, 0, 1, open_minimum=True)
        if self.mutual_self_attention_window is not None:
            check_window("mutual_self_attention_window", self.mutual_self_attention_window)
            self.mutual_self_attention_window = tuple(float(bound) for bound in self.mutual_self_attention_window)
        # the layer's upper bound is the model's, checked with the edit's inputs (`SynFERPipeline.check_edit_call`)
        check_int("mutual_self_attention_start_layer", self.mutual_self_attention_start_layer, 0, optional=True)
        check_int("persons", self.persons, 1, optional=True)
        if not self.is_edit_set:
            return
        if self.edit_dataset is not None and self.persons is not None:
            raise ValueError("`persons` and `edit_dataset` exclude each other: persons are new faces, edited.")
        if self.edit_dataset is not None and (not isinstance(self.edit_dataset, str) or not self.edit_dataset):
            raise ValueError(f"`edit_dataset` must be a folder or Hub id, got {self.edit_dataset!r}.")
        field_name = "edit_dataset" if self.edit_dataset is not None else "persons"
        unused = {
            "layout_dataset": self.layout_dataset is not None, "au_policy": self.au_policy != "prototype",
            "semantic_guidance_window": tuple(self.semantic_guidance_window) != DEFAULT_SG_WINDOW,
            "semantic_guidance_interval": self.semantic_guidance_interval != DEFAULT_SG_INTERVAL,
            "semantic_guidance_normalization": self.semantic_guidance_normalization != "global",
            "negative_prompt": self.negative_prompt is not None,
            "eta": self.eta > 0, "descriptions": self.descriptions is not None and self.persons is None,
        }  # fmt: skip
        given = [name for name, is_set in unused.items() if is_set]
        if given:
            raise ValueError(f"`{field_name}`: an edit set does not use {given}; leave them at their defaults.")

    def edit_expressions(self) -> list[str]:
        """The expressions each face of an edit set is edited into: those of non-zero probability, in EXPRESSIONS
        order."""
        return [name for name, p in zip(EXPRESSIONS, self.expression_probabilities()) if p > 0]

    def _check_sampler(self) -> None:
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {list(SCHEDULERS)} or None, got {self.scheduler!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {self.dtype!r}.")
        if self.device is not None:
            check_device(self.device)
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError(f"`negative_prompt` must be a string or None, got {self.negative_prompt!r}.")
        check_number("eta", self.eta, 0, 1)
        if self.scheduler is not None:
            import diffusers

            check_eta(self.eta, getattr(diffusers, self.scheduler))
        scale = 0.0 if self.semantic_guidance_scale is None else self.semantic_guidance_scale  # None: an edit set's
        check_semantic_guidance_inputs(
            scale, self.semantic_guidance_window, self.semantic_guidance_normalization,
            self.semantic_guidance_interval, SG_DECODES[0],
        )  # fmt: skip
        self.semantic_guidance_window = tuple(float(bound) for bound in self.semantic_guidance_window)

    def _check_voting(self) -> None:
        if self.voter_weights is not None:
            if not isinstance(self.voter_weights, Mapping):
                raise ValueError(f"`voter_weights` must be a dict voter name -> weight, got {self.voter_weights!r}.")
            self.voter_weights = {str(name): weight for name, weight in self.voter_weights.items()}
            for name, weight in self.voter_weights.items():
                check_number(f"voter_weights[{name!r}]", weight, 0)
        VotingConfig(use_target=True, **self.voting_options())  # the other fields keep VotingConfig's names

    def voting_options(self) -> dict[str, Any]:
        """The [`VotingConfig`] fields this config sets (the labeller adds the voters)."""
        return {
            "agreement_threshold": self.agreement_threshold,
            "weights": dict(self.voter_weights or {}),
            "label_type": self.label_type,
            "aggregation": self.aggregation,
            "classifier_tempering": self.classifier_tempering,
            "discard_rule": self.discard_rule,
        }

    def check_image_size(self, native_size: int) -> tuple[int, int]:
        """`(height, width)` for a model whose images are `native_size` pixels square; each side must be at most
        [`MAX_IMAGE_SIZE_FACTOR`] times it (a typo such as `--width 100000` is refused, not computed for hours)."""
        limit = MAX_IMAGE_SIZE_FACTOR * native_size
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ValueError(
                    f"`{name}` must be at most {limit} ({MAX_IMAGE_SIZE_FACTOR}x the model's {native_size} px), "
                    f"got {value}."
                )
        return self.height or native_size, self.width or native_size

    def expression_probabilities(self) -> np.ndarray:  # (7,) in EXPRESSIONS order
        return expression_probabilities(self.expression_distribution)


def expression_probabilities(distribution: Mapping[str, float] | None) -> np.ndarray:  # (7,) in EXPRESSIONS order
    """The probability of each target expression: `distribution` (`--expressions`), or uniform for None."""
    if distribution is None:
        return np.full(len(EXPRESSIONS), 1.0 / len(EXPRESSIONS))
    return np.array([distribution.get(name, 0.0) for name in EXPRESSIONS])


def _check_distribution(distribution: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(distribution, Mapping) or not distribution:
        raise ValueError(
            f"`expression_distribution` must be a non-empty dict name -> probability, got {distribution!r}."
        )
    for name, probability in distribution.items():
        EXPRESSIONS.label_id(name, field="expression_distribution")
        check_number(f"expression_distribution[{name!r}]", probability, 0)
    total = sum(distribution.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"`expression_distribution` must sum to 1, got {total:g}.")
    return {name: float(distribution[name]) for name in EXPRESSIONS if name in distribution}
