"""The rows and features of a synthetic SynFER set: what `synfer generate` writes and `datasets.load_dataset` reads."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import datasets
import PIL.Image

from ..facs import EXPRESSIONS

__all__ = ["SyntheticRow", "synthetic_features"]


@dataclass
class SyntheticRow:
    """One row of a synthetic SynFER set; its fields are the columns of [`synthetic_features`], in order.

    `image` (PNG), `text` (the prompt the image was generated from), `action_units` (the AU condition in the model's
    AU order), `target_label` (the generation target, a class id), `label` / `label_probs` / `agreement` (the
    rectified label, its class distribution and the voters' weighted agreement), `keep` (False where the voting
    discard rule drops the image), `votes` (each voter's `{"voter": name, "probs": 7 probabilities}`), `seed` (the
    image's seed) and `sample_id` (its index in the plan); in an edit set (a plan with `edit_source`) also
    `source_id` (the source face's row in the edit dataset) and `source_image_sha256` (the sha256 of its stored image
    file), in a persons set (a plan with `persons`) `person_id` and `source_image_sha256` (of the person's generated
    neutral face, PNG), `None` elsewhere and not written.
    """

    image: PIL.Image.Image
    text: str
    action_units: list[float]
    target_label: int
    label: int
    label_probs: list[float]
    agreement: float
    keep: bool
    votes: list[dict[str, Any]]
    seed: int
    sample_id: int
    source_id: int | None = None
    person_id: int | None = None
    source_image_sha256: str | None = None

    def to_example(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


def synthetic_features(num_aus: int, edit: bool = False, persons: bool = False) -> datasets.Features:
    """Features of a synthetic SynFER set whose AU vectors have `num_aus` entries: the columns of
    [`SyntheticRow`], the source columns (`source_id`, `source_image_sha256`) only for an `edit` set, or (`person_id`,
    `source_image_sha256`) for an edit set of synthetic `persons`."""
    classes = datasets.ClassLabel(names=list(EXPRESSIONS))
    probabilities = datasets.List(datasets.Value("float32"), length=len(EXPRESSIONS))
    features = {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "action_units": datasets.List(datasets.Value("float32"), length=num_aus),
        "target_label": classes,
        "label": classes,
        "label_probs": probabilities,
        "agreement": datasets.Value("float32"),
        "keep": datasets.Value("bool"),
        "votes": datasets.List({"voter": datasets.Value("string"), "probs": probabilities}),
        "seed": datasets.Value("int64"),
        "sample_id": datasets.Value("int64"),
    }
    if edit:
        source_column = "person_id" if persons else "source_id"
        features.update({source_column: datasets.Value("int64"), "source_image_sha256": datasets.Value("string")})
    return datasets.Features(features)
