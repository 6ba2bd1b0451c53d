"""FaceWorld: a procedural face world whose action units, expressions and captions are known exactly.

No real expression dataset and no pretrained generator can be downloaded where this package is developed,
so every claim is measured on this world, the way disentanglement research uses dSprites or CLEVR.

A face is a set of attributes (identity, nuisance, 12 DISFA action-unit intensities in [0, 5]); rendering
is a pure function of them. Each AU moves one local part of the face, graded by its intensity, with cues a
few pixels wide at 64x64 so that they survive a 64 -> 32 autoencoder:

| AU | cue (region) |
|---|---|
| AU1 inner brow raiser | inner brow ends move up (brows) |
| AU2 outer brow raiser | outer brow ends move up (brows) |
| AU4 brow lowerer | brows move down and together, vertical furrows between them (brows) |
| AU5 upper lid raiser | upper lids open wide, white shows above the iris (eyes) |
| AU6 cheek raiser | lower lids push up, cheek contour and blush rise, crow's feet (below the eyes) |
| AU9 nose wrinkler | wrinkles across the nose bridge, nostrils pulled up (nose) |
| AU12 lip corner puller | lip corners up and slightly out (mouth) |
| AU15 lip corner depressor | lip corners down (mouth) |
| AU17 chin raiser | lower lip pushed up and pouted, chin crease and dimpled chin boss (chin) |
| AU20 lip stretcher | mouth stretched wide, lips thinned (mouth) |
| AU25 lips part | lips apart along the whole mouth, teeth show (mouth) |
| AU26 jaw drop | tall oval mouth opening, chin lowered (mouth, chin) |

Labels: an expression is sampled (balanced by default), its AUs are drawn around the EMFACS prototype of
[`expression_prototype`] with intensity jitter, other AUs get small random activations, a fraction of
faces blend two prototypes (the label is the dominant one), and annotator-like noise replaces a fraction
of labels by a random other class. `clean_label` keeps the true class, `label` the annotated one.

DISFA-12 lacks AU7, AU16 and AU23, so two prototypes are changed (documented in
[`FACEWORLD_EXTRA_PROTOTYPE_AUS`] and [`FACEWORLD_OPTIONAL_PROTOTYPE_AUS`]): anger also raises the chin
(AU17, standing in for the pressed lips of AU23/AU24), so anger (AU4+AU5+AU17) differs from fear (which adds
AU1, AU2, AU20, AU26), from sad (AU1+AU4+AU15) and from surprise (AU1+AU2+AU5+AU26); happy, surprise and
fear part the lips (AU25) half of the time.

Captions follow FEText: a coarse description from the attributes ("a photo of an elderly woman with grey
curly hair and glasses") enriched by [`~synfer_diffusers.prompts.enrich_prompt`] with the *annotated*
expression and the strongest AUs. Some captions do not mention the expression.

Command line:

```bash
python -m synfer_diffusers.data.faceworld --output-dir runs/faceworld --num-train 20000 --num-test 2000 --seed 0
```
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets.utils import tqdm as hf_tqdm
from PIL import Image, ImageDraw

from ..facs import EXPRESSIONS, AUSpace, expression_prototype
from ..prompts import enrich_prompt

__all__ = [
    "AGE_GROUPS",
    "AU_NAMES",
    "EYE_COLOURS",
    "FACEWORLD_EXTRA_PROTOTYPE_AUS",
    "FACEWORLD_FEATURES",
    "FACEWORLD_OPTIONAL_PROTOTYPE_AUS",
    "GENDERS",
    "HAIR_COLOURS",
    "HAIR_STYLES",
    "FaceWorldConfig",
    "build_faceworld_dataset",
    "faceworld_captions",
    "faceworld_expression_prototypes",
    "main",
    "render_action_units",
    "render_faces",
    "sample_faceworld_attributes",
    "write_faceworld_splits",
]

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

SAMPLES_PER_CHUNK = 1000
"""Faces drawn from one random stream; chunk `c` of a split uses the seed `(seed, split, c)`, so a smaller
dataset with the same seed is a prefix of a larger one."""
_SPLIT_KEYS = {"train": 0, "test": 1, "validation": 2}

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

# Colours (RGB). Skin tones from light to dark.
_SKIN_TONES = np.array(
    [(255, 224, 196), (241, 194, 167), (232, 180, 140), (210, 150, 110),
     (180, 120, 85), (150, 98, 68), (118, 76, 54), (92, 60, 44)], dtype=np.float32,
)  # fmt: skip
_HAIR_RGB = {
    "black": (28, 24, 24), "brown": (96, 60, 34), "blonde": (222, 188, 118),
    "red": (170, 72, 34), "grey": (150, 150, 148), "white": (228, 228, 222),
}  # fmt: skip
_EYE_RGB = {
    "brown": (92, 56, 30), "blue": (60, 116, 184), "green": (62, 132, 78),
    "grey": (118, 128, 140), "hazel": (140, 108, 56),
}  # fmt: skip
_FRAME_RGB = ((20, 20, 20), (90, 55, 30), (200, 165, 70), (150, 30, 40))
_MOUTH_INSIDE = (70, 18, 24)
_TEETH = (238, 234, 224)
_CIRCLE_24 = np.exp(2j * np.pi * np.arange(24) / 24)
_CIRCLE_12 = np.exp(2j * np.pi * np.arange(12) / 12)
_UNIT_GRIDS = {n: np.linspace(-1.0, 1.0, n) for n in (5, 7, 9, 13)}


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


# ----------------------------------------------------------------------------------------------------------
# Sampling: expressions, action units, identities, nuisances
# ----------------------------------------------------------------------------------------------------------


def faceworld_expression_prototypes() -> tuple[np.ndarray, np.ndarray]:
    """FaceWorld prototypes as two `(7, 12)` arrays over [`EXPRESSIONS`] x [`AU_NAMES`]: `always` (1 for the
    EMFACS AUs of [`expression_prototype`] plus [`FACEWORLD_EXTRA_PROTOTYPE_AUS`]) and `optional` (1 for
    [`FACEWORLD_OPTIONAL_PROTOTYPE_AUS`])."""
    always = np.zeros((len(EXPRESSIONS), len(AU_NAMES)), dtype=np.float32)
    optional = np.zeros_like(always)
    for e, name in enumerate(EXPRESSIONS):
        prototype = expression_prototype(name, AU_SPACE, intensity=1.0)
        always[e] = [prototype[au] for au in AU_NAMES]
        for au in FACEWORLD_EXTRA_PROTOTYPE_AUS.get(name, ()):
            always[e, _AU[au]] = 1.0
        for au in FACEWORLD_OPTIONAL_PROTOTYPE_AUS.get(name, ()):
            optional[e, _AU[au]] = 1.0
    return always, optional


def _sample_prototype_action_units(
    expressions: np.ndarray, rng: np.random.Generator, config: FaceWorldConfig
) -> np.ndarray:
    """Prototype AUs of each expression at jittered intensities, plus small background activations."""
    always, optional = faceworld_expression_prototypes()
    n = len(expressions)
    active = always[expressions] > 0
    active |= (optional[expressions] > 0) & (rng.random((n, len(AU_NAMES))) < config.optional_au_probability)
    low, high = config.active_intensity_range
    intensities = rng.uniform(low, high, (n, len(AU_NAMES)))
    background = (rng.random((n, len(AU_NAMES))) < config.background_au_probability) & ~active
    background_intensities = rng.uniform(0.0, config.background_au_max, (n, len(AU_NAMES)))
    return np.where(active, intensities, np.where(background, background_intensities, 0.0))


def _choose(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One category index per row of a `(n, k)` probability table."""
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative[:, -1] = 1.0
    return (rng.random((len(probabilities), 1)) > cumulative).sum(axis=1)


def _sample_expressions_and_action_units(
    num: int, rng: np.random.Generator, config: FaceWorldConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(action_units, label, clean_label, is_blend)` of `num` faces."""
    num_classes = len(EXPRESSIONS)
    probabilities = config.expression_probabilities or (1.0 / num_classes,) * num_classes
    clean_label = _choose(rng, np.tile(probabilities, (num, 1)))
    action_units = _sample_prototype_action_units(clean_label, rng, config)

    # Ambiguous faces: (1 - w) * dominant + w * other, w < 0.5, so the label stays the dominant class.
    is_blend = rng.random(num) < config.blend_probability
    other = (clean_label + rng.integers(1, num_classes, num)) % num_classes
    other_action_units = _sample_prototype_action_units(other, rng, config)
    weight = np.where(is_blend, rng.uniform(*config.blend_weight_range, num), 0.0)[:, None]
    action_units = (1.0 - weight) * action_units + weight * other_action_units

    # Annotator noise: a random *other* class.
    noisy = rng.random(num) < config.label_noise
    label = np.where(noisy, (clean_label + rng.integers(1, num_classes, num)) % num_classes, clean_label)
    return action_units.clip(0.0, 5.0).astype(np.float32), label, clean_label, is_blend


def _sample_identities(num: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    age = _choose(rng, np.tile((0.3, 0.45, 0.25), (num, 1)))
    man = rng.random(num) < 0.5
    elderly, young = age == 2, age == 0
    #                    short long  curly bun   bald
    woman_styles = np.array((0.15, 0.40, 0.25, 0.20, 0.00))
    man_styles = np.array((0.55, 0.10, 0.20, 0.00, 0.15))
    style_probabilities = np.where(man[:, None], man_styles, woman_styles)
    style_probabilities[elderly & man] = (0.45, 0.05, 0.15, 0.0, 0.35)
    #                        black brown blonde red  grey white
    hair_probabilities = np.tile((0.35, 0.30, 0.20, 0.15, 0.0, 0.0), (num, 1))
    hair_probabilities[elderly] = (0.10, 0.10, 0.05, 0.05, 0.40, 0.30)
    glasses_probability = np.choose(age, (0.15, 0.25, 0.45))
    beard_probability = np.where(man, np.choose(age, (0.10, 0.35, 0.45)), 0.0)
    face_height = rng.uniform(0.39, 0.44, num) * np.where(young, 0.96, 1.0)
    return {
        "age_group": np.array(AGE_GROUPS)[age],
        "gender": np.array(GENDERS)[man.astype(int)],
        "skin_tone": rng.integers(0, len(_SKIN_TONES), num).astype(np.int32),
        "hair_style": np.array(HAIR_STYLES)[_choose(rng, style_probabilities)],
        "hair_colour": np.array(HAIR_COLOURS)[_choose(rng, hair_probabilities)],
        "eye_colour": np.array(EYE_COLOURS)[rng.integers(0, len(EYE_COLOURS), num)],
        "glasses": rng.random(num) < glasses_probability,
        "beard": rng.random(num) < beard_probability,
        "face_width": rng.uniform(0.32, 0.39, num).astype(np.float32),
        "face_height": face_height.astype(np.float32),
    }


def _sample_nuisances(num: int, rng: np.random.Generator, config: FaceWorldConfig) -> dict[str, np.ndarray]:
    return {
        "background_top": rng.integers(20, 236, (num, 3)).astype(np.uint8),
        "background_bottom": rng.integers(20, 236, (num, 3)).astype(np.uint8),
        "brightness": rng.uniform(*config.brightness_range, num).astype(np.float32),
        "light_gradient": rng.uniform(-1, 1, num).astype(np.float32) * config.max_light_gradient,
        "rotation_degrees": rng.uniform(-1, 1, num).astype(np.float32) * config.max_rotation_degrees,
        "shift_x": rng.uniform(-1, 1, num).astype(np.float32) * config.max_shift,
        "shift_y": rng.uniform(-1, 1, num).astype(np.float32) * config.max_shift,
        "scale": rng.uniform(*config.scale_range, num).astype(np.float32),
        "noise_std": rng.uniform(0, config.max_noise_std, num).astype(np.float32),
    }


def sample_faceworld_attributes(
    num: int, rng_or_seed: np.random.Generator | int, config: FaceWorldConfig | None = None
) -> dict[str, np.ndarray]:
    """Samples `num` faces: expressions, AUs, labels, identities and nuisances, as columns.

    Args:
        num: number of faces.
        rng_or_seed: a numpy `Generator` (advanced in place) or an integer seed.
        config: the label, AU and nuisance distributions; default `FaceWorldConfig()`.

    Returns:
        `dict` of arrays of length `num`, keyed like the attribute columns of [`FACEWORLD_FEATURES`]:
        `action_units` `(num, 12)` float32 in [0, 5] (order [`AU_NAMES`]), `label` / `clean_label` (indices
        into [`EXPRESSIONS`]), `is_blend`, identity (`age_group`, `gender`, `skin_tone`, `hair_style`,
        `hair_colour`, `eye_colour`, `glasses`, `beard`, `face_width`, `face_height`), nuisances
        (`background_top`/`_bottom` `(num, 3)` uint8, `brightness`, `light_gradient`, `rotation_degrees`,
        `shift_x`, `shift_y`, `scale`, `noise_std`), a per-face render `seed` and `sample_id` (0..num-1).

    Example:

    ```py
    >>> attributes = sample_faceworld_attributes(4, 0)
    >>> attributes["action_units"].shape
    (4, 12)
    ```
    """
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(f"`num` must be a non-negative integer, got {num!r}.")
    config = config or FaceWorldConfig()
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    action_units, label, clean_label, is_blend = _sample_expressions_and_action_units(num, rng, config)
    return {
        "action_units": action_units,
        "label": label.astype(np.int64),
        "clean_label": clean_label.astype(np.int64),
        "is_blend": is_blend,
        **_sample_identities(num, rng),
        **_sample_nuisances(num, rng, config),
        "seed": rng.integers(0, 2**63 - 1, num, dtype=np.int64),
        "sample_id": np.arange(num, dtype=np.int64),
    }


# ----------------------------------------------------------------------------------------------------------
# Rendering. Face coordinates: origin at the face centre, unit = image side, y down.
# ----------------------------------------------------------------------------------------------------------


class _FaceCanvas:
    """Draws polygons and strokes given in face coordinates onto a canvas of side `size` (the image is
    drawn at twice its resolution and box-downsampled), after the face's scale, rotation and shift."""

    def __init__(self, image: Image.Image, size: int, centre: complex, scale: float, rotation_degrees: float):
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.size = size
        self.centre = centre * size
        self.transform = scale * size * np.exp(1j * math.radians(rotation_degrees))
        self.pixels_per_unit = scale * size

    def _points(self, points: np.ndarray) -> list[tuple[float, float]]:
        z = self.centre + self.transform * points  # complex: x + iy
        return list(zip(z.real.tolist(), z.imag.tolist()))

    def polygon(self, points: np.ndarray, fill: tuple[int, ...]) -> None:
        self.draw.polygon(self._points(points), fill=fill)

    def ellipse(self, centre: complex, rx: float, ry: float, fill: tuple[int, ...], circle=_CIRCLE_24) -> None:
        self.polygon(centre + (circle if rx == ry else circle.real + 1j * (ry / rx) * circle.imag) * rx, fill)

    def stroke(self, points: np.ndarray, fill: tuple[int, ...], width: float) -> None:
        pixel_width = max(1, round(width * self.pixels_per_unit))
        self.draw.line(self._points(points), fill=fill, width=pixel_width, joint="curve")


def _byte(value: float) -> int:
    return min(255, max(0, int(value + 0.5)))


def _rgb(colour: np.ndarray | Sequence[float], alpha: float | None = None) -> tuple[int, ...]:
    """An RGB(A) fill tuple; an alpha below 255 blends the fill over what is drawn."""
    r, g, b = (float(c) for c in colour)
    return (_byte(r), _byte(g), _byte(b)) if alpha is None else (_byte(r), _byte(g), _byte(b), _byte(alpha))


def _parabola(half_width: float, y_corner: float, y_centre: float, n: int = 9) -> np.ndarray:
    """Points of y = y_corner + (y_centre - y_corner) * (1 - (x / half_width)^2), left to right."""
    u = _UNIT_GRIDS[n]
    return half_width * u + 1j * (y_corner + (y_centre - y_corner) * (1 - u * u))


@dataclass
class _Palette:
    skin: np.ndarray
    shadow: tuple[int, ...]
    crease: np.ndarray  # a dark skin colour for wrinkles (RGB, alpha added per cue)
    hair: tuple[int, ...]
    brow: tuple[int, ...]
    lips: tuple[int, ...]
    iris: tuple[int, ...]


def _make_palette(face: Mapping, rng: np.random.Generator) -> _Palette:
    skin = _SKIN_TONES[int(face["skin_tone"])] + rng.uniform(-8, 8, 3)
    if face["age_group"] == "elderly":
        skin = 0.85 * skin + 0.15 * skin.mean()
    hair = np.array(_HAIR_RGB[str(face["hair_colour"])], dtype=np.float32) + rng.uniform(-10, 10, 3)
    brow = np.minimum(hair * 0.6, skin * 0.45)
    lip_red = 0.55 if face["gender"] == "woman" else 0.3
    lips = (1 - lip_red) * skin * 0.8 + lip_red * np.array((190.0, 70.0, 85.0))
    return _Palette(
        skin=skin, shadow=_rgb(skin * 0.78), crease=skin * 0.45, hair=_rgb(hair), brow=_rgb(brow),
        lips=_rgb(lips), iris=_rgb(_EYE_RGB[str(face["eye_colour"])]),
    )  # fmt: skip


def _draw_hair_back(canvas: _FaceCanvas, face: Mapping, palette: _Palette, width: float, height: float) -> None:
    style = face["hair_style"]
    if style == "bald":
        return
    if style == "long":
        canvas.polygon(
            np.array([-width - 0.06 - 0.1j, width + 0.06 - 0.1j, width + 0.09 + 0.6j, -width - 0.09 + 0.6j]),
            palette.hair,
        )
    if style == "bun":
        canvas.ellipse(-height - 0.06j, 0.12, 0.09, palette.hair)
    canvas.ellipse(-0.05j, width + 0.035, height + 0.01, palette.hair)
    if style == "curly":
        for z in _CIRCLE_12[6:]:  # upper half of the head
            canvas.ellipse(-0.05j + complex((width + 0.03) * z.real, (height + 0.0) * z.imag), 0.06, 0.06,
                           palette.hair, _CIRCLE_12)  # fmt: skip


def _draw_head(
    canvas: _FaceCanvas, palette: _Palette, width: float, height: float, jaw: float, chin_drop: float
) -> None:
    """Neck, shirt, ears and the face; the face below the centre line is `chin_drop` longer (AU26)."""
    canvas.polygon(np.array([-0.1 + 0.2j, 0.1 + 0.2j, 0.12 + 0.6j, -0.12 + 0.6j]), palette.shadow)  # neck
    canvas.ellipse(0.58j, 0.42, 0.12, _rgb(palette.skin[::-1] * 0.5 + 40))  # shirt
    for side in (-1, 1):
        canvas.ellipse(complex(side * width, -0.02), 0.04, 0.07, _rgb(palette.skin * 0.92))  # ears
    narrowing = 1 - (1 - jaw) * np.maximum(_CIRCLE_24.imag, 0)  # narrower jaw below the centre line
    heights = np.where(_CIRCLE_24.imag > 0, height + chin_drop, height)
    canvas.polygon(width * _CIRCLE_24.real * narrowing + 1j * heights * _CIRCLE_24.imag, _rgb(palette.skin))


def _draw_fringe(canvas: _FaceCanvas, face: Mapping, palette: _Palette, width: float, height: float, hairline: float):
    """Hair over the top of the forehead, above `hairline` (fraction of the face height above the centre)."""
    if face["hair_style"] == "bald":
        return
    angles = np.linspace(math.asin(hairline), math.pi - math.asin(hairline), 12)
    top = width * np.cos(angles) - 1j * height * np.sin(angles)  # right -> left along the top of the face
    canvas.polygon(np.concatenate([top, [top[-1], top[0]]]), palette.hair)


def _draw_beard(canvas: _FaceCanvas, face: Mapping, palette: _Palette, width: float, height: float, jaw: float,
                rng: np.random.Generator) -> None:  # fmt: skip
    if not face["beard"]:
        return
    angles = np.linspace(0.15, math.pi - 0.15, 12)
    lower = width * np.cos(angles) * (1 - (1 - jaw) * np.sin(angles)) + 1j * height * np.sin(angles)
    alpha = 150 if rng.random() < 0.5 else 230  # stubble or full beard
    canvas.polygon(np.concatenate([lower, [-0.1 + 0.12j, 0.1 + 0.12j]]), (*palette.hair, alpha))


def _draw_brows(canvas: _FaceCanvas, face: Mapping, palette: _Palette, eye_y: float, au: np.ndarray) -> None:
    """AU1 raises the inner ends, AU2 the outer ends, AU4 lowers and knits them and adds furrows."""
    au1, au2, au4 = au[_AU["AU1"]], au[_AU["AU2"]], au[_AU["AU4"]]
    width = 0.05 if face["gender"] == "man" else 0.04
    y = eye_y - 0.105
    inner_x = 0.055 - 0.005 * au4
    inner_y = y + 0.005 - 0.015 * au1 + 0.011 * au4
    middle_y = y - 0.012 - 0.006 * au1 - 0.008 * au2 + 0.007 * au4
    outer_y = y + 0.008 - 0.015 * au2 + 0.003 * au4
    for side in (-1, 1):
        brow = np.array(
            [complex(side * inner_x, inner_y), complex(side * 0.12, middle_y), complex(side * 0.195, outer_y)]
        )
        canvas.stroke(brow, palette.brow, width)
    if au4 > 0.05:
        for side in (-1, 1):
            furrow = np.array([complex(side * 0.018, y - 0.01), complex(side * 0.022, y + 0.05)])
            canvas.stroke(furrow, _rgb(palette.crease, 45 * au4), 0.016)


def _draw_eyes(canvas: _FaceCanvas, face: Mapping, palette: _Palette, eye_y: float, au: np.ndarray) -> None:
    """AU5 opens the upper lids (white above the iris); AU6 pushes the lower lids up, raises the cheek
    contour and blush and draws crow's feet."""
    au5, au6 = au[_AU["AU5"]], au[_AU["AU6"]]
    young = face["age_group"] == "young"
    half_width = 0.065 * (1.08 if young else 1.0)
    iris_radius = 0.03 * (1.1 if young else 1.0)
    upper = 0.028 + 0.011 * au5
    lower = max(0.006, 0.024 - 0.0036 * au6)
    for side in (-1, 1):
        centre = complex(side * 0.14, eye_y)
        upper_lid = centre + _parabola(half_width, 0.0, -upper)
        lower_lid = centre + _parabola(half_width, 0.0, lower)
        if au6 > 0.05:  # raised cheek: blush and contour under the eye, crow's feet
            canvas.ellipse(centre + complex(side * 0.03, 0.13 - 0.01 * au6), 0.065, 0.045,
                           _rgb((225, 95, 95), 20 * au6))  # fmt: skip
            canvas.stroke(centre + _parabola(0.055, 0.055 - 0.006 * au6, 0.075 - 0.008 * au6, 5),
                          _rgb(palette.crease, 45 * au6), 0.016)  # fmt: skip
            for dy in (-0.015, 0.015):
                corner = centre + side * (half_width + 0.012)
                canvas.stroke(np.array([corner, corner + complex(side * 0.03, 1.6 * dy)]),
                              _rgb(palette.crease, 40 * au6), 0.012)  # fmt: skip
        canvas.polygon(np.concatenate([upper_lid, lower_lid[::-1]]), (250, 250, 248))
        canvas.ellipse(centre, iris_radius, iris_radius, palette.iris, _CIRCLE_12)
        canvas.ellipse(centre, iris_radius * 0.45, iris_radius * 0.45, (15, 12, 12), _CIRCLE_12)
        upper_cap = max(upper, iris_radius) + 0.012
        lower_cap = max(lower, iris_radius) + 0.012
        skin = _rgb(palette.skin)
        canvas.polygon(
            np.concatenate([upper_lid, [centre + half_width - 1j * upper_cap, centre - half_width - 1j * upper_cap]]),
            skin,
        )
        canvas.polygon(
            np.concatenate([lower_lid, [centre + half_width + 1j * lower_cap, centre - half_width + 1j * lower_cap]]),
            skin,
        )
        canvas.stroke(upper_lid, (40, 28, 24), 0.022)
        canvas.stroke(lower_lid, _rgb(palette.crease, 150), 0.012)
        if face["gender"] == "woman":  # lashes at the outer corner
            corner = upper_lid[-1] if side > 0 else upper_lid[0]
            canvas.stroke(np.array([corner, corner + complex(side * 0.02, -0.015)]), (30, 22, 20), 0.014)


def _draw_nose(canvas: _FaceCanvas, face: Mapping, palette: _Palette, au: np.ndarray) -> None:
    """AU9 wrinkles the bridge and pulls the nostrils up."""
    au9 = au[_AU["AU9"]]
    size = 0.9 if face["age_group"] == "young" else 1.0
    tip_y = 0.075 - 0.004 * au9
    shadow = _rgb(palette.crease, 130)
    for side in (-1, 1):
        canvas.stroke(np.array([complex(side * 0.028, -0.02), complex(side * 0.04 * size, tip_y - 0.01),
                                complex(side * 0.03 * size, tip_y + 0.012)]), shadow, 0.013)  # fmt: skip
        canvas.ellipse(
            complex(side * 0.024 * size, tip_y + 0.012), 0.013, 0.008, _rgb(palette.crease, 200), _CIRCLE_12
        )
    if au9 > 0.05:
        wrinkle = _rgb(palette.crease, 50 * au9)
        half_length = 0.015 + 0.008 * au9
        for y in (-0.05, -0.022, 0.006):
            canvas.stroke(np.array([complex(-half_length, y + 0.006), complex(0, y), complex(half_length, y + 0.006)]),
                          wrinkle, 0.02)  # fmt: skip
        for side in (-1, 1):
            canvas.stroke(np.array([complex(side * 0.05, -0.045), complex(side * 0.08, 0.01)]), wrinkle, 0.018)


def _draw_mouth(canvas: _FaceCanvas, face: Mapping, palette: _Palette, mouth_y: float, au: np.ndarray) -> float:
    """AU12 / AU15 move the lip corners up / down, AU20 stretches and thins the lips, AU25 parts them along
    the whole mouth (teeth show), AU26 opens a tall oval, AU17 pushes the lower lip up. Returns the y of the
    lower lip's bottom."""
    au12, au15, au17, au20, au25, au26 = (au[_AU[n]] for n in ("AU12", "AU15", "AU17", "AU20", "AU25", "AU26"))
    half_width = 0.105 + 0.01 * au20 + 0.004 * au12
    corner_y = mouth_y - 0.014 * au12 + 0.012 * au15 + 0.004 * au20
    centre_y = mouth_y - 0.006 * au17
    lips_apart = max(0.0, 0.008 * au25 - 0.004 * au17)  # flat profile: open up to the corners
    jaw_gap = 0.02 * au26  # oval profile: tall in the centre
    gap = lips_apart + jaw_gap
    thinning = 1 - 0.06 * au20
    upper_thickness = (0.026 if face["gender"] == "woman" else 0.022) * thinning
    lower_thickness = (0.03 + 0.004 * au17) * thinning
    if face["age_group"] == "elderly":
        upper_thickness, lower_thickness = upper_thickness * 0.8, lower_thickness * 0.8

    x = half_width * _UNIT_GRIDS[13]
    opening = np.sqrt(1 - _UNIT_GRIDS[13] ** 2)  # 0 at the corners, 1 at the centre
    middle = corner_y + (centre_y - corner_y) * opening**2
    local_gap = lips_apart * opening**0.3 + jaw_gap * opening
    upper_inner = x + 1j * (middle - 0.5 * local_gap)
    lower_inner = x + 1j * (middle + 0.5 * local_gap)
    upper_outer = upper_inner - 1j * upper_thickness * opening
    lower_outer = lower_inner + 1j * lower_thickness * opening
    canvas.polygon(np.concatenate([upper_outer, lower_outer[::-1]]), palette.lips)
    if gap > 0.004:
        canvas.polygon(np.concatenate([upper_inner, lower_inner[::-1]]), _MOUTH_INSIDE)
        teeth = upper_inner + 1j * np.minimum(local_gap, 0.022)
        canvas.polygon(np.concatenate([upper_inner[1:-1] * 0.92, teeth[-2:0:-1] * 0.92]), _TEETH)
    canvas.stroke(upper_inner, (60, 22, 26), 0.02)
    if gap > 0.004:
        canvas.stroke(lower_inner, (60, 22, 26), 0.014)
    return float(lower_outer.imag.max())


def _draw_chin(canvas: _FaceCanvas, palette: _Palette, lower_lip_y: float, mouth_y: float, au: np.ndarray) -> None:
    """AU17: a crease under the lower lip and a dimpled, highlighted chin boss."""
    au17 = au[_AU["AU17"]]
    if au17 <= 0.05:
        return
    crease_y = max(mouth_y + 0.1, lower_lip_y + 0.025)
    half_width = 0.05 + 0.011 * au17
    canvas.ellipse(complex(0, crease_y + 0.045), 0.07, 0.038, _rgb((255, 255, 255), 20 * au17))
    canvas.stroke(_parabola(half_width, crease_y - 0.015, crease_y, 7), _rgb(palette.crease, 50 * au17), 0.022)
    for x in (-0.025, 0.0, 0.025):
        canvas.ellipse(complex(x, crease_y + 0.045 + abs(x)), 0.01, 0.01, _rgb(palette.crease, 45 * au17), _CIRCLE_12)


def _draw_glasses(canvas: _FaceCanvas, face: Mapping, eye_y: float, width: float, rng: np.random.Generator) -> None:
    if not face["glasses"]:
        return
    frame = _FRAME_RGB[int(rng.integers(len(_FRAME_RGB)))]
    round_frames = rng.random() < 0.5
    for side in (-1, 1):
        centre = complex(side * 0.14, eye_y)
        if round_frames:
            lens = centre + 0.075 * np.append(_CIRCLE_24, _CIRCLE_24[0])
        else:
            lens = centre + np.array([-0.085 - 0.06j, 0.085 - 0.06j, 0.085 + 0.055j, -0.085 + 0.055j, -0.085 - 0.06j])
        canvas.stroke(lens, frame, 0.018)
        canvas.stroke(np.array([centre + side * 0.08 - 0.02j, complex(side * width, eye_y - 0.03)]), frame, 0.016)
    canvas.stroke(np.array([complex(-0.065, eye_y - 0.01), complex(0, eye_y - 0.025), complex(0.065, eye_y - 0.01)]),
                  frame, 0.016)  # fmt: skip


def _background(top: np.ndarray, bottom: np.ndarray, size: int) -> Image.Image:
    """A vertical gradient from `top` to `bottom` (RGB)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    column = (1 - t) * top.astype(np.float32) + t * bottom.astype(np.float32) + 0.5  # (size, 1, 3)
    return Image.fromarray(column.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def _render_face(face: Mapping, resolution: int) -> np.ndarray:
    """One face at `resolution` as float32 (H, W, 3) with pixel noise, before lighting."""
    size = 2 * resolution
    rng = np.random.default_rng(int(face["seed"]))  # identity details not stored as columns
    au = np.asarray(face["action_units"], dtype=np.float64)
    width, height = float(face["face_width"]), float(face["face_height"])
    jaw = rng.uniform(0.82, 1.0)
    hairline = rng.uniform(0.68, 0.76)  # fraction of the face height above the centre
    eye_y, mouth_y = -0.06, 0.2 - (0.01 if face["age_group"] == "young" else 0.0)

    image = _background(face["background_top"], face["background_bottom"], size)
    centre = complex(0.5 + float(face["shift_x"]), 0.51 + float(face["shift_y"]))
    canvas = _FaceCanvas(image, size, centre, float(face["scale"]), float(face["rotation_degrees"]))
    palette = _make_palette(face, rng)
    _draw_hair_back(canvas, face, palette, width, height)
    chin_drop = 0.008 * au[_AU["AU26"]]
    _draw_head(canvas, palette, width, height, jaw, chin_drop)
    _draw_beard(canvas, face, palette, width, height + chin_drop, jaw, rng)
    _draw_fringe(canvas, face, palette, width, height, hairline)
    _draw_eyes(canvas, face, palette, eye_y, au)
    _draw_brows(canvas, face, palette, eye_y, au)
    _draw_nose(canvas, face, palette, au)
    lower_lip_y = _draw_mouth(canvas, face, palette, mouth_y, au)
    _draw_chin(canvas, palette, lower_lip_y, mouth_y, au)
    _draw_glasses(canvas, face, eye_y, width, rng)
    pixels = np.asarray(image.reduce(2), dtype=np.float32)
    return pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * float(face["noise_std"])


def _face_rows(attributes: Mapping[str, np.ndarray]) -> list[dict]:
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


def render_faces(attributes: Mapping[str, np.ndarray], config: FaceWorldConfig | None = None) -> np.ndarray:
    """Renders faces from their attributes (a pure function: the same attributes give the same pixels).

    Each face is drawn with PIL at twice the resolution and box-downsampled, pixel noise is seeded by the
    face's `seed`, and lighting is applied on the whole batch with numpy.

    Args:
        attributes: columns as returned by [`sample_faceworld_attributes`] (edit `action_units` to change
            the expression of the same identities), or rows of a FaceWorld dataset (`dataset[:n]`).
        config: only `resolution` is read; default `FaceWorldConfig()`.

    Returns:
        `np.ndarray` of shape `(N, resolution, resolution, 3)`, dtype uint8.

    Example:

    ```py
    >>> attributes = sample_faceworld_attributes(2, 0)
    >>> attributes["action_units"][:, AU_NAMES.index("AU12")] = 5.0  # both smile
    >>> render_faces(attributes).shape
    (2, 64, 64, 3)
    ```
    """
    config = config or FaceWorldConfig()
    faces = _face_rows(attributes)
    resolution = config.resolution
    if not faces:
        return np.zeros((0, resolution, resolution, 3), dtype=np.uint8)
    images = np.stack([_render_face(face, resolution) for face in faces])  # (N, H, W, 3)
    brightness = np.asarray(attributes["brightness"], dtype=np.float32)[:, None, None, None]
    gradient = np.asarray(attributes["light_gradient"], dtype=np.float32)[:, None, None, None]
    x = np.linspace(-1.0, 1.0, resolution, dtype=np.float32)[None, None, :, None]
    images *= brightness * (1.0 + gradient * x)
    return (images.clip(0, 255) + 0.5).astype(np.uint8)


def render_action_units(
    action_units: np.ndarray | Sequence[Sequence[float]], seed: int = 0, config: FaceWorldConfig | None = None
) -> np.ndarray:
    """Renders random identities (sampled from `seed`) with the GIVEN action units, e.g. to compare
    generated faces with real FaceWorld faces of the same AUs.

    Args:
        action_units: `(N, 12)` intensities in [0, 5], in the order of [`AU_NAMES`].
        seed: seed of the identities and nuisances.
        config: the nuisance distributions and resolution; default `FaceWorldConfig()`.

    Returns:
        `np.ndarray` `(N, resolution, resolution, 3)` uint8.

    Example:

    ```py
    >>> happy = np.zeros((3, 12), dtype=np.float32)
    >>> happy[:, [AU_NAMES.index("AU6"), AU_NAMES.index("AU12")]] = 4.0
    >>> render_action_units(happy, seed=0).shape
    (3, 64, 64, 3)
    ```
    """
    action_units = np.asarray(action_units, dtype=np.float32)
    if action_units.ndim != 2 or action_units.shape[1] != len(AU_NAMES):
        raise ValueError(f"`action_units` must have shape (N, {len(AU_NAMES)}), got {action_units.shape}.")
    attributes = sample_faceworld_attributes(len(action_units), seed, config)
    attributes["action_units"] = action_units
    return render_faces(attributes, config)


# ----------------------------------------------------------------------------------------------------------
# Captions (FEText style)
# ----------------------------------------------------------------------------------------------------------

_PERSON_WORDS = {
    ("young", "woman"): ("a young woman", "a girl", "a young lady"),
    ("adult", "woman"): ("a woman", "an adult woman", "a middle-aged woman"),
    ("elderly", "woman"): ("an elderly woman", "an old woman", "a senior woman"),
    ("young", "man"): ("a young man", "a boy", "a young guy"),
    ("adult", "man"): ("a man", "an adult man", "a middle-aged man"),
    ("elderly", "man"): ("an elderly man", "an old man", "a senior man"),
}
_PREFIXES = ("a photo of ", "a portrait of ", "a picture of ", "")


def _describe_face(face: Mapping, rng: np.random.Generator, with_prefix: bool) -> str:
    """e.g. "a photo of an elderly woman with grey curly hair and glasses"."""
    words = _PERSON_WORDS[(str(face["age_group"]), str(face["gender"]))]
    person = words[int(rng.integers(len(words)))]
    style, colour = str(face["hair_style"]), str(face["hair_colour"])
    if style == "bald":
        details = ["a bald head"]
    elif style == "bun":
        details = [f"{colour} hair in a bun"]
    else:
        details = [f"{colour} {style} hair" if rng.random() < 0.5 else f"{style} {colour} hair"]
    if rng.random() < 0.4:
        details.append(f"{face['eye_colour']} eyes")
    if face["beard"]:
        details.append("a beard")
    if face["glasses"]:
        details.append("glasses")
    details = [details[i] for i in rng.permutation(len(details))]
    listed = details[0] if len(details) == 1 else ", ".join(details[:-1]) + " and " + details[-1]
    prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))] if with_prefix else ""
    return f"{prefix}{person} with {listed}"


def faceworld_captions(attributes: Mapping[str, np.ndarray], config: FaceWorldConfig | None = None) -> list[str]:
    """FEText-style captions of faces, deterministic per face `seed`.

    A caption names the *annotated* expression (`label`, noisy like a human caption) with probability
    `config.caption_expression_probability`, and then the strongest AUs with probability
    `config.caption_action_unit_probability`; otherwise it is the description alone.

    Example:

    ```py
    >>> faceworld_captions(sample_faceworld_attributes(1, 0))[0]
    'a portrait of a girl with brown long hair, with a frightened look.'
    ```
    """
    config = config or FaceWorldConfig()
    captions = []
    for face in _face_rows(attributes):
        rng = np.random.default_rng([int(face["seed"]), 2])
        template, phrase = int(rng.integers(3)), int(rng.integers(3))
        mentions_expression = rng.random() < config.caption_expression_probability
        mentions_action_units = rng.random() < config.caption_action_unit_probability
        # template 2 reads "a close-up photo of {description}": no "a photo of" prefix there.
        description = _describe_face(face, rng, with_prefix=not (mentions_expression and template == 2))
        if not mentions_expression:
            captions.append(description)
            continue
        action_units = dict(zip(AU_NAMES, map(float, face["action_units"]))) if mentions_action_units else None
        expression = EXPRESSIONS[int(face["label"])]
        captions.append(enrich_prompt(description, expression, action_units, template=template, phrase=phrase))
    return captions


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


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
    config: FaceWorldConfig | None = None,
    split: str = "train",
    show_progress: bool = False,
) -> datasets.Dataset:
    """Builds `num_samples` FaceWorld faces as a `datasets.Dataset` with [`FACEWORLD_FEATURES`].

    Faces are drawn in chunks of [`SAMPLES_PER_CHUNK`], chunk `c` from the seed `(seed, split, c)`: the same
    seed and split give identical images, captions and labels; different splits never share a random stream.

    Args:
        num_samples: number of faces.
        seed: dataset seed.
        config: renderer, label and caption settings; default `FaceWorldConfig()`.
        split: `"train"`, `"test"` or `"validation"`; mixed into the seed.
        show_progress: show a progress bar over chunks.

    Example:

    ```py
    >>> dataset = build_faceworld_dataset(16, seed=0)
    >>> dataset[0]["image"].size, len(dataset[0]["action_units"])
    ((64, 64), 12)
    ```
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise ValueError(f"`num_samples` must be a non-negative integer, got {num_samples!r}.")
    if split not in _SPLIT_KEYS:
        raise ValueError(f"`split` must be one of {list(_SPLIT_KEYS)}, got {split!r}.")
    config = config or FaceWorldConfig()
    chunks = []
    num_chunks = max(1, math.ceil(num_samples / SAMPLES_PER_CHUNK))
    for chunk in hf_tqdm(range(num_chunks), desc=f"FaceWorld {split}", disable=not show_progress):
        rng = np.random.default_rng([seed, _SPLIT_KEYS[split], chunk])
        size = min(SAMPLES_PER_CHUNK, num_samples - chunk * SAMPLES_PER_CHUNK)
        attributes = sample_faceworld_attributes(size, rng, config)
        attributes["sample_id"] = attributes["sample_id"] + chunk * SAMPLES_PER_CHUNK
        chunks.append(_chunk_dataset(attributes, config))
    return datasets.concatenate_datasets(chunks) if len(chunks) > 1 else chunks[0]


def _dataset_card(num_train: int, num_test: int, seed: int, config: FaceWorldConfig) -> str:
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
different random streams).

Columns: `image`, `text` (caption), `action_units` (12 floats in the order {", ".join(AU_NAMES)}),
`label` (annotated expression, with {config.label_noise:.0%} annotator noise: replaced by a random other
class), `clean_label` (true expression), `is_blend` (an ambiguous mix of two prototypes; the label is the
dominant one), identity attributes, nuisances (background, lighting, pose, noise) and the render `seed`:
`render_faces` re-renders any row from its attribute columns. Captions describe the person;
{config.caption_expression_probability:.0%} of them also name the annotated expression, and
{config.caption_action_unit_probability:.0%} of those the strongest AUs in FACS words.

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
    config: FaceWorldConfig | None = None,
    rows_per_shard: int = 10_000,
    show_progress: bool = True,
) -> datasets.DatasetDict:
    """Writes FaceWorld train and test splits as parquet shards plus a dataset card.

    Layout: `output_dir/data/train-00000-of-0000N.parquet`, `output_dir/data/test-...parquet`,
    `output_dir/README.md`; `datasets.load_dataset(output_dir)` loads it with [`FACEWORLD_FEATURES`]. Test
    faces come from the `"test"` random stream of the same seed, so no face repeats across splits.

    The card declares no `configs:` data files on purpose: with them, datasets 5 keys its cache on the
    patterns alone and `load_dataset` of a rewritten folder of the same name returns the old rows; the
    splits are found from the file names instead.

    Example:

    ```py
    >>> splits = write_faceworld_splits("runs/faceworld", num_train=20_000, num_test=2_000, seed=0)  # doctest: +SKIP
    >>> datasets.load_dataset("runs/faceworld")["test"].features == FACEWORLD_FEATURES  # doctest: +SKIP
    True
    ```
    """
    if rows_per_shard < 1:
        raise ValueError(f"`rows_per_shard` must be positive, got {rows_per_shard}.")
    config = config or FaceWorldConfig()
    output_dir = Path(output_dir)
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
    (output_dir / "README.md").write_text(_dataset_card(num_train, num_test, seed, config))
    return splits


def add_faceworld_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Registers the `synfer faceworld` arguments on `parser` and sets `func` to [`run_faceworld`]."""
    parser.description = "Write FaceWorld train/test splits as parquet + dataset card."
    parser.add_argument("--output-dir", required=True, help="Folder to write data/*.parquet and README.md into.")
    parser.add_argument("--num-train", type=int, default=20_000, help="Number of train faces.")
    parser.add_argument("--num-test", type=int, default=2_000, help="Number of test faces.")
    parser.add_argument("--seed", type=int, default=0, help="Dataset seed.")
    parser.add_argument("--resolution", type=int, default=64, help="64 or 128.")
    parser.add_argument("--label-noise", type=float, default=0.1, help="Annotator label-noise rate.")
    parser.set_defaults(func=run_faceworld)
    return parser


def run_faceworld(args: argparse.Namespace) -> int:
    """Writes the splits described by parsed `synfer faceworld` arguments; returns the exit code."""
    config = FaceWorldConfig(resolution=args.resolution, label_noise=args.label_noise)
    splits = write_faceworld_splits(args.output_dir, args.num_train, args.num_test, args.seed, config)
    print(f"Wrote {', '.join(f'{len(d)} {s}' for s, d in splits.items())} faces to {args.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m synfer_diffusers.data.faceworld --output-dir D ...` (the same as `synfer faceworld ...`)."""
    parser = add_faceworld_arguments(argparse.ArgumentParser())
    return run_faceworld(parser.parse_args(argv))


if __name__ == "__main__":
    main()
