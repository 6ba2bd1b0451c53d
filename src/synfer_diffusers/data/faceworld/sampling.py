"""Sampling FaceWorld faces: expressions, action units, labels, identities and nuisances."""

from __future__ import annotations

import numpy as np

from ...facs import EXPRESSIONS, expression_prototype
from ...value_checks import check_int
from .config import (
    _AU,
    _PARTNERS,
    _SKIN_TONES,
    AGE_GROUPS,
    AU_NAMES,
    AU_SPACE,
    EYE_COLOURS,
    FACEWORLD_EXTRA_PROTOTYPE_AUS,
    FACEWORLD_OPTIONAL_PROTOTYPE_AUS,
    GENDERS,
    HAIR_COLOURS,
    HAIR_STYLES,
    FaceWorldConfig,
)


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
) -> tuple[np.ndarray, np.ndarray]:
    """Prototype AUs of each expression at jittered intensities, plus small background activations, and
    whether each expression is subtle (its prototype AUs drawn from `config.subtle_intensity_range`)."""
    always, optional = faceworld_expression_prototypes()
    n = len(expressions)
    active = always[expressions] > 0
    active |= (optional[expressions] > 0) & (rng.random((n, len(AU_NAMES))) < config.optional_au_probability)
    low, high = config.active_intensity_range
    intensities = rng.uniform(low, high, (n, len(AU_NAMES)))
    background = (rng.random((n, len(AU_NAMES))) < config.background_au_probability) & ~active
    background_intensities = rng.uniform(0.0, config.background_au_max, (n, len(AU_NAMES)))
    action_units = np.where(active, intensities, np.where(background, background_intensities, 0.0))
    subtle_probabilities = np.broadcast_to(config.subtle_probability, (len(EXPRESSIONS),))
    if not subtle_probabilities.any():  # draws nothing: other regimes keep their faces
        return action_units, np.zeros(n, dtype=bool)
    subtle = (rng.random(n) < subtle_probabilities[expressions]) & active.any(axis=1)
    subtle_intensities = rng.uniform(*config.subtle_intensity_range, (n, len(AU_NAMES)))
    return np.where(active & subtle[:, None], subtle_intensities, action_units), subtle


def _other_classes(classes: np.ndarray, rng: np.random.Generator, partner_probability: float) -> np.ndarray:
    """A uniformly random other class per row or, with `partner_probability`, the row's confusable partner
    ([`FACEWORLD_CONFUSABLE_PAIRS`]) where it has one."""
    num_classes = len(EXPRESSIONS)
    other = (classes + rng.integers(1, num_classes, len(classes))) % num_classes
    if partner_probability == 0:  # draws nothing: other regimes keep their faces
        return other
    partners = _PARTNERS[classes]
    return np.where((rng.random(len(classes)) < partner_probability) & (partners >= 0), partners, other)


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
    action_units, subtle = _sample_prototype_action_units(clean_label, rng, config)

    # Ambiguous faces: (1 - w) * dominant + w * other, w < 0.5, so the label stays the dominant class.
    is_blend = rng.random(num) < config.blend_probability
    other = _other_classes(clean_label, rng, config.blend_partner_probability)
    other_action_units, _ = _sample_prototype_action_units(other, rng, config)
    weight = np.where(is_blend, rng.uniform(*config.blend_weight_range, num), 0.0)[:, None]
    action_units = (1.0 - weight) * action_units + weight * other_action_units

    # Annotator noise, more often on subtle or blended faces: another class, often the confusable partner.
    ambiguous_noise = config.label_noise if config.ambiguous_label_noise is None else config.ambiguous_label_noise
    noisy = rng.random(num) < np.where(subtle | is_blend, ambiguous_noise, config.label_noise)
    label = np.where(noisy, _other_classes(clean_label, rng, config.confusable_noise_probability), clean_label)
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
    check_int("num", num, 0)
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
