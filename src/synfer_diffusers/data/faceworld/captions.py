"""FEText-style captions of FaceWorld faces."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...facs import EXPRESSIONS
from ...prompts import enrich_prompt
from .config import AU_NAMES, FaceWorldConfig
from .features import _face_rows

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
