"""FaceWorld constants and [`FaceWorldConfig`] (no torch or datasets: the command line reads its help)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from ...facs import EXPRESSIONS, AUSpace
from ...value_checks import check_number

AU_SPACE = AUSpace.disfa12()
AU_NAMES: tuple[str, ...] = AU_SPACE.names
"""The 12 DISFA AUs in the order of the `action_units` column."""
_AU = {name: i for i, name in enumerate(AU_NAMES)}

AGE_GROUPS = ("young", "adult", "elderly")
GENDERS = ("woman", "man")
HAIR_STYLES = ("short", "long", "curly", "bun", "bald")
HAIR_COLOURS = ("black", "brown", "blonde", "red", "grey", "white")
EYE_COLOURS = ("brown", "blue", "green", "grey", "hazel")

FACEWORLD_EXTRA_PROTOTYPE_AUS: dict[str, tuple[str, ...]] = {"anger": ("AU17",)}
"""AUs always added to an EMFACS prototype in FaceWorld: DISFA-12 has no AU23/AU24 (pressed lips), so anger
raises the chin instead; without it anger would be AU4+AU5 only, a subset of fear."""
FACEWORLD_OPTIONAL_PROTOTYPE_AUS: dict[str, tuple[str, ...]] = {
    "happy": ("AU25",),
    "surprise": ("AU25",),
    "fear": ("AU25",),
}
"""AUs added to a prototype with probability `FaceWorldConfig.optional_au_probability` (open smile, parted
lips of surprise and fear)."""

FACEWORLD_CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("fear", "surprise"),
    ("disgust", "anger"),
    ("sad", "neutral"),
)
"""Expression pairs that people confuse most on real faces: fear and surprise share AU1+AU2+AU5+AU26, a subtle
sad face is nearly neutral, and disgust and anger are the most confused negative expressions.
`FaceWorldConfig.blend_partner_probability` and `confusable_noise_probability` blend and mislabel within these
pairs; happy has no partner."""


def _confusable_partners() -> np.ndarray:
    """Index of each expression's partner in [`FACEWORLD_CONFUSABLE_PAIRS`], -1 where it has none."""
    partners = np.full(len(EXPRESSIONS), -1)
    for first, second in FACEWORLD_CONFUSABLE_PAIRS:
        partners[EXPRESSIONS.index(first)] = EXPRESSIONS.index(second)
        partners[EXPRESSIONS.index(second)] = EXPRESSIONS.index(first)
    return partners


_PARTNERS = _confusable_partners()

Regime = Literal["standard", "hard"]
FACEWORLD_REGIMES: tuple[str, ...] = get_args(Regime)
"""Names accepted by [`FaceWorldConfig.from_regime`]: `FaceWorldConfig()` and [`FaceWorldConfig.hard`]."""

SUBTLE_PEAK_INTENSITY = 2.0
"""A face counts as subtle in [`faceworld_label_statistics`] when no AU of its expression's prototype reaches this
intensity (FACS levels A-B, trace to slight)."""

# Skin tones (RGB) from light to dark; `skin_tone` indexes them.
_SKIN_TONES = np.array(
    [(255, 224, 196), (241, 194, 167), (232, 180, 140), (210, 150, 110),
     (180, 120, 85), (150, 98, 68), (118, 76, 54), (92, 60, 44)], dtype=np.float32,
)  # fmt: skip

def _check_range(name: str, value: Sequence[float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"`{name}` must be a pair (min, max) with {low} <= min <= max <= {high}, got {value}.")


def parse_per_expression(text: str) -> float | tuple[float, ...]:
    """`"0.3"` -> 0.3, one number per expression `"0,0.25,0.5,0.3,0.45,0.45,0.45"` -> a tuple (command line)."""
    values = tuple(float(value) for value in text.split(","))
    return values[0] if len(values) == 1 else values


def _check_per_expression(name: str, value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A probability, or one probability per expression (returned as a tuple of floats)."""
    if np.ndim(value) == 0:
        check_number(name, value, 0, 1)
        return float(value)
    if len(value) != len(EXPRESSIONS):
        raise ValueError(
            f"`{name}` must be one probability or {len(EXPRESSIONS)} (order {list(EXPRESSIONS)}), got {value}."
        )
    for i, probability in enumerate(value):
        check_number(f"{name}[{i}]", probability, 0, 1)
    return tuple(float(p) for p in value)


@dataclass
class FaceWorldConfig:
    """Configuration of the FaceWorld renderer and of its label and caption model.

    The defaults are the `"standard"` regime: clear prototypes, 10% uniform label noise. [`FaceWorldConfig.hard`]
    is the `"hard"` regime, whose labels go wrong as on real data. Settings that are off (`subtle_probability=0`,
    `blend_partner_probability=0`, `confusable_noise_probability=0`) draw no random numbers, so the standard
    regime's faces do not depend on them.

    Example:

    ```py
    >>> from synfer_diffusers.data.faceworld import FaceWorldConfig, build_faceworld_dataset
    >>> dataset = build_faceworld_dataset(8, seed=0, config=FaceWorldConfig(label_noise=0.0))
    >>> dataset["label"] == dataset["clean_label"]
    True
    ```
    """

    resolution: int = field(default=64, metadata={"help": "Image side in pixels: 64 or 128."})
    label_noise: float = field(
        default=0.1,
        metadata={
            "help": "Annotator noise: probability that `label` is replaced by another class (a uniformly random one "
            "unless `confusable_noise_probability` says otherwise); on subtle or blended faces see "
            "`ambiguous_label_noise`."
        },
    )
    ambiguous_label_noise: float | None = field(
        default=None,
        metadata={
            "help": "Annotator noise on subtle or blended faces, which people mislabel more; None = `label_noise`."
        },
    )
    confusable_noise_probability: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of noisy labels that name the clean class's FACEWORLD_CONFUSABLE_PAIRS partner instead "
            "of a uniformly random other class (happy, which has no partner, always gets a random one)."
        },
    )
    expression_probabilities: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "Probability of each of the seven EXPRESSIONS (in their order); None = balanced."},
    )
    active_intensity_range: tuple[float, float] = field(
        default=(1.5, 5.0), metadata={"help": "Uniform range of the intensity of each prototype AU."}
    )
    subtle_probability: float | tuple[float, ...] = field(
        default=0.0,
        metadata={
            "help": "Probability that a face's expression is subtle: its prototype AUs are drawn from "
            "`subtle_intensity_range` instead; one number, or one per EXPRESSIONS (in their order).",
            "parse": parse_per_expression,
            "metavar": "P[,P,...]",
        },
    )
    subtle_intensity_range: tuple[float, float] = field(
        default=(0.4, 1.6), metadata={"help": "Uniform range of the prototype AUs of a subtle expression."}
    )
    optional_au_probability: float = field(
        default=0.5, metadata={"help": "Probability of each AU of FACEWORLD_OPTIONAL_PROTOTYPE_AUS."}
    )
    background_au_probability: float = field(
        default=0.15, metadata={"help": "Probability that an AU outside the prototype is slightly active."}
    )
    background_au_max: float = field(
        default=1.0, metadata={"help": "Maximum intensity of such a background AU (uniform in [0, max])."}
    )
    blend_probability: float = field(
        default=0.1,
        metadata={"help": "Fraction of ambiguous faces mixing two prototypes; the label is the dominant one."},
    )
    blend_weight_range: tuple[float, float] = field(
        default=(0.2, 0.4),
        metadata={"help": "Uniform range of the weight of the second prototype in a blend (below 0.5)."},
    )
    blend_partner_probability: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of blends whose second prototype is the FACEWORLD_CONFUSABLE_PAIRS partner of the "
            "dominant class (the others, and happy, blend with a uniformly random other class)."
        },
    )
    caption_expression_probability: float = field(
        default=0.7, metadata={"help": "Fraction of captions that name the (annotated) expression."}
    )
    caption_action_unit_probability: float = field(
        default=0.5,
        metadata={"help": "Among captions naming the expression, fraction that also name the strongest AUs."},
    )
    max_rotation_degrees: float = field(default=6.0, metadata={"help": "Uniform in-plane rotation in +-degrees."})
    max_shift: float = field(
        default=0.03, metadata={"help": "Uniform shift of the face in +- fractions of the image side."}
    )
    scale_range: tuple[float, float] = field(
        default=(0.94, 1.04), metadata={"help": "Uniform range of the face scale."}
    )
    brightness_range: tuple[float, float] = field(
        default=(0.8, 1.15), metadata={"help": "Uniform range of the global lighting factor."}
    )
    max_light_gradient: float = field(
        default=0.12, metadata={"help": "Side lighting: brightness changes by up to +- this across the image."}
    )
    max_noise_std: float = field(
        default=4.0, metadata={"help": "Pixel noise std is uniform in [0, max] (in 0-255 units)."}
    )

    @classmethod
    def hard(cls, **overrides) -> FaceWorldConfig:
        """The `"hard"` regime: labels go wrong as on real data. Many expressions are subtle (prototype AUs at
        slight intensities, 1.0-2.2 on the 0-5 scale, just above a resting face's background AUs), blends are common
        and mostly mix a [`FACEWORLD_CONFUSABLE_PAIRS`] pair, subtle and blended faces are mislabelled more often,
        and most wrong labels name the confusable partner rather than a random class. Identities, pose, lighting and
        pixel noise follow the standard regime, so a generator trained on standard FaceWorld can render the faces
        and what changes is what the faces show and how they are labelled. `overrides` replace single settings.

        How it was chosen: the downstream classifier of the benchmark suite (ResNet [32, 64, 128], 800 steps, batch
        64), trained on 3,000 faces of the train split (seed 0) and scored on 1,000 faces of the test split against
        their true labels, reads 81.8% when trained on true labels and 68.2% on the annotated ones (standard regime,
        400 steps on 4,000 faces: 89.6%). Earlier settings (subtle AUs at 0.4-1.6, as faint as background AUs, and
        more pose, lighting and noise) left 41% / 35% (500 steps): most subtle faces were unreadable, not ambiguous.

        Statistics of 20,000 sampled faces (seed 0, [`faceworld_label_statistics`]; standard regime in brackets):

        | statistic | hard | standard |
        |---|---|---|
        | wrong labels (`label != clean_label`) | 27.0% | 10.0% |
        | of the wrong labels of classes with a partner, to the confusable partner | 75.0% | 15.5% |
        | blended faces (`is_blend`) | 29.8% | 10.0% |
        | subtle faces (non-neutral, no prototype AU reaches `SUBTLE_PEAK_INTENSITY` = 2) | 30.4% | 1.3% |
        | intensity, neutral | 0.14 | 0.10 |
        | intensity, happy | 2.20 | 3.14 |
        | intensity, sad | 1.97 | 3.18 |
        | intensity, surprise | 2.33 | 3.19 |
        | intensity, fear | 2.14 | 3.19 |
        | intensity, disgust | 1.99 | 3.17 |
        | intensity, anger | 2.02 | 3.18 |

        "intensity" is the mean prototype-AU intensity of an expression's faces (neutral: of all 12 AUs). Noise is
        0.12 on clear faces and 0.4 on subtle or blended ones; 70% of wrong labels are the partner and 30% a random
        other class, so about 21% of fear, surprise, disgust and anger faces and 16-21% of sad and neutral ones
        carry their partner's label (a row of the confusion matrix), while happy's 24% wrong labels spread evenly.
        70% of blends mix the dominant class with its partner.

        Example:

        ```py
        >>> config = FaceWorldConfig.hard(resolution=128)
        >>> config.blend_probability, config.resolution
        (0.3, 128)
        ```
        """
        settings = {
            "label_noise": 0.12,
            "ambiguous_label_noise": 0.4,
            "confusable_noise_probability": 0.7,
            "active_intensity_range": (1.0, 4.5),
            # neutral, happy, sad, surprise, fear, disgust, anger
            "subtle_probability": (0.0, 0.25, 0.5, 0.3, 0.45, 0.45, 0.45),
            "subtle_intensity_range": (1.0, 2.2),
            "blend_probability": 0.3,
            "blend_weight_range": (0.25, 0.45),
            "blend_partner_probability": 0.7,
        }
        return cls(**{**settings, **overrides})

    @classmethod
    def from_regime(cls, regime: str, **overrides) -> FaceWorldConfig:
        """The settings of a regime of [`FACEWORLD_REGIMES`] (`"standard"` or `"hard"`), with `overrides`."""
        if regime not in FACEWORLD_REGIMES:
            raise ValueError(f"`regime` must be one of {list(FACEWORLD_REGIMES)}, got {regime!r}.")
        return cls.hard(**overrides) if regime == "hard" else cls(**overrides)

    def __post_init__(self) -> None:
        if self.resolution not in (64, 128):
            raise ValueError(f"`resolution` must be 64 or 128, got {self.resolution}.")
        for name in (
            "label_noise", "confusable_noise_probability", "optional_au_probability", "background_au_probability",
            "blend_probability", "blend_partner_probability", "caption_expression_probability",
            "caption_action_unit_probability",
        ):  # fmt: skip
            check_number(name, getattr(self, name), 0, 1)
        check_number("ambiguous_label_noise", self.ambiguous_label_noise, 0, 1, optional=True)
        self.subtle_probability = _check_per_expression("subtle_probability", self.subtle_probability)
        if self.expression_probabilities is not None:
            probabilities = np.asarray(self.expression_probabilities, dtype=np.float64)
            if (
                probabilities.shape != (len(EXPRESSIONS),)
                or (probabilities < 0).any()
                or not np.isclose(probabilities.sum(), 1.0)
            ):
                raise ValueError(
                    f"`expression_probabilities` must be {len(EXPRESSIONS)} non-negative numbers summing to 1 "
                    f"(order {list(EXPRESSIONS)}), got {self.expression_probabilities}."
                )
            self.expression_probabilities = tuple(float(p) for p in probabilities)
        _check_range("active_intensity_range", self.active_intensity_range, 0.0, 5.0)
        _check_range("subtle_intensity_range", self.subtle_intensity_range, 0.0, 5.0)
        _check_range("blend_weight_range", self.blend_weight_range, 0.0, 0.499)
        _check_range("scale_range", self.scale_range, 0.5, 1.5)
        _check_range("brightness_range", self.brightness_range, 0.2, 2.0)
        for name, maximum in (("background_au_max", 5), ("max_rotation_degrees", 45), ("max_shift", 0.2),
                              ("max_light_gradient", 0.5), ("max_noise_std", 64)):  # fmt: skip
            check_number(name, getattr(self, name), 0, maximum)
