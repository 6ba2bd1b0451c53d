"""Label and action-unit statistics of sampled FaceWorld faces: what a regime's documentation promises."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...facs import EXPRESSIONS
from .config import _PARTNERS, SUBTLE_PEAK_INTENSITY
from .sampling import faceworld_expression_prototypes


def _fraction(mask: np.ndarray) -> float:
    """Mean of a boolean array; NaN when it is empty."""
    return float(mask.mean()) if mask.size else float("nan")


def faceworld_label_statistics(attributes: Mapping[str, np.ndarray]) -> dict:
    """Measures how often and how FaceWorld labels go wrong, from sampled attributes or dataset columns.

    Args:
        attributes: at least `action_units`, `label`, `clean_label` and `is_blend`, as returned by
            [`sample_faceworld_attributes`] or read from a FaceWorld dataset (`dataset.with_format("numpy")[:]`).

    Returns:
        `dict` with
        - `label_noise`: fraction of faces whose `label` differs from `clean_label`;
        - `partner_noise`: among wrong labels of classes that have a [`FACEWORLD_CONFUSABLE_PAIRS`] partner, the
          fraction naming that partner (uniformly random noise gives 1/6);
        - `blend`: fraction of blended faces (`is_blend`);
        - `subtle`: among faces of an expression other than neutral, the fraction whose prototype AUs (of
          `clean_label`) all stay below [`SUBTLE_PEAK_INTENSITY`];
        - `intensity_means`: per expression, the mean intensity of its prototype AUs over its faces (neutral: of
          all 12 AUs, a resting face's activity);
        - `confusion`: `(7, 7)` counts of `clean_label` (rows) x `label` (columns), in [`EXPRESSIONS`] order.

    Example:

    ```py
    >>> statistics = faceworld_label_statistics(sample_faceworld_attributes(2_000, 0))
    >>> round(statistics["label_noise"], 2)
    0.1
    ```
    """
    action_units = np.asarray(attributes["action_units"], dtype=np.float32)
    label, clean_label = np.asarray(attributes["label"]), np.asarray(attributes["clean_label"])
    always, _ = faceworld_expression_prototypes()
    prototype = always[clean_label] > 0
    expressive = prototype.any(axis=1)
    peak = np.where(prototype, action_units, 0.0).max(axis=1)
    wrong = label != clean_label
    with_partner = wrong & (_PARTNERS[clean_label] >= 0)
    intensity_means = {}
    for e, name in enumerate(EXPRESSIONS):
        faces = action_units[clean_label == e]
        columns = always[e] > 0 if always[e].any() else slice(None)
        intensity_means[name] = float(faces[:, columns].mean()) if len(faces) else float("nan")
    return {
        "label_noise": _fraction(wrong),
        "partner_noise": _fraction(label[with_partner] == _PARTNERS[clean_label[with_partner]]),
        "blend": _fraction(np.asarray(attributes["is_blend"], dtype=bool)),
        "subtle": _fraction(peak[expressive] < SUBTLE_PEAK_INTENSITY),
        "intensity_means": intensity_means,
        "confusion": np.bincount(clean_label * len(EXPRESSIONS) + label, minlength=len(EXPRESSIONS) ** 2).reshape(
            len(EXPRESSIONS), len(EXPRESSIONS)
        ),
    }
