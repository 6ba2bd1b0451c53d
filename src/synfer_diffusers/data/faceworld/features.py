"""The FaceWorld dataset features and the attribute rows they hold."""

from __future__ import annotations

from collections.abc import Mapping

import datasets
import numpy as np

from ...facs import EXPRESSIONS
from .config import AU_NAMES

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
