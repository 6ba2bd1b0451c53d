"""FaceWorld constants, the dataset features and [`FaceWorldConfig`]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np

from ...facs import EXPRESSIONS, AUSpace

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

# Skin tones (RGB) from light to dark; `skin_tone` indexes them.
_SKIN_TONES = np.array(
    [(255, 224, 196), (241, 194, 167), (232, 180, 140), (210, 150, 110),
     (180, 120, 85), (150, 98, 68), (118, 76, 54), (92, 60, 44)], dtype=np.float32,
)  # fmt: skip

FACEWORLD_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "action_units": datasets.List(datasets.Value("float32"), length=len(AU_NAMES)),
        "label": datasets.ClassLabel(names=list(EXPRESSIONS)),
        "clean_label": datasets.ClassLabel(names=list(EXPRESSIONS)),
        "is_blend": datasets.Value("bool"),
        "age_group": datasets.Value("string"),
        "gender": datasets.Value("string"),
        "skin_tone": datasets.Value("int32"),
        "hair_style": datasets.Value("string"),
        "hair_colour": datasets.Value("string"),
        "eye_colour": datasets.Value("string"),
        "glasses": datasets.Value("bool"),
        "beard": datasets.Value("bool"),
        "face_width": datasets.Value("float32"),
        "face_height": datasets.Value("float32"),
        "background_top": datasets.List(datasets.Value("uint8"), length=3),
        "background_bottom": datasets.List(datasets.Value("uint8"), length=3),
        "brightness": datasets.Value("float32"),
        "light_gradient": datasets.Value("float32"),
        "rotation_degrees": datasets.Value("float32"),
        "shift_x": datasets.Value("float32"),
        "shift_y": datasets.Value("float32"),
        "scale": datasets.Value("float32"),
        "noise_std": datasets.Value("float32"),
        "seed": datasets.Value("int64"),
        "sample_id": datasets.Value("int64"),
    }
)
"""Features of a FaceWorld dataset. Every attribute column is kept, so a row can be rendered again with
[`render_faces`]."""

_ATTRIBUTE_KEYS = tuple(k for k in FACEWORLD_FEATURES if k not in ("image", "text"))


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value}.")


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"`{name}` must be a pair (min, max) with {low} <= min <= max <= {high}, got {value}.")


@dataclass
class FaceWorldConfig:
    """Configuration of the FaceWorld renderer and of its label and caption model.

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
        metadata={"help": "Annotator noise: probability that `label` is replaced by a uniformly random other class."},
    )
    expression_probabilities: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "Probability of each of the seven EXPRESSIONS (in their order); None = balanced."},
    )
    active_intensity_range: tuple[float, float] = field(
        default=(1.5, 5.0), metadata={"help": "Uniform range of the intensity of each prototype AU."}
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

    def __post_init__(self) -> None:
        if self.resolution not in (64, 128):
            raise ValueError(f"`resolution` must be 64 or 128, got {self.resolution}.")
        for name in (
            "label_noise", "optional_au_probability", "background_au_probability", "blend_probability",
            "caption_expression_probability", "caption_action_unit_probability",
        ):  # fmt: skip
            _check_probability(name, getattr(self, name))
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
        _check_range("blend_weight_range", self.blend_weight_range, 0.0, 0.499)
        _check_range("scale_range", self.scale_range, 0.5, 1.5)
        _check_range("brightness_range", self.brightness_range, 0.2, 2.0)
        if not 0.0 <= self.background_au_max <= 5.0:
            raise ValueError(f"`background_au_max` must be in [0, 5], got {self.background_au_max}.")
        if not 0.0 <= self.max_rotation_degrees <= 45.0:
            raise ValueError(f"`max_rotation_degrees` must be in [0, 45], got {self.max_rotation_degrees}.")
        if not 0.0 <= self.max_shift <= 0.2:
            raise ValueError(f"`max_shift` must be in [0, 0.2], got {self.max_shift}.")
        if not 0.0 <= self.max_light_gradient <= 0.5:
            raise ValueError(f"`max_light_gradient` must be in [0, 0.5], got {self.max_light_gradient}.")
        if not 0.0 <= self.max_noise_std <= 64.0:
            raise ValueError(f"`max_noise_std` must be in [0, 64], got {self.max_noise_std}.")


def _face_rows(attributes: Mapping[str, np.ndarray]) -> list[dict]:
    """The attribute columns as one dict per face, after checking the keys and the AU range."""
    missing = [
        key
        for key in _ATTRIBUTE_KEYS
        if key not in ("label", "clean_label", "is_blend", "sample_id") and key not in attributes
    ]
    if missing:
        raise ValueError(f"`attributes` lacks the keys {missing}; build them with `sample_faceworld_attributes`.")
    action_units = np.asarray(attributes["action_units"], dtype=np.float32)
    num = len(action_units)
    if action_units.shape != (num, len(AU_NAMES)) or not np.isfinite(action_units).all():
        raise ValueError(
            f"`attributes['action_units']` must be finite with shape (N, {len(AU_NAMES)}), got {action_units.shape}."
        )
    if action_units.size and (action_units.min() < 0 or action_units.max() > 5):
        raise ValueError("`attributes['action_units']` must lie in [0, 5].")
    columns = {key: np.asarray(value) for key, value in attributes.items() if key in _ATTRIBUTE_KEYS}
    return [{key: column[i] for key, column in columns.items()} for i in range(num)]
