"""FEText-style prompt enrichment: a coarse description plus a target expression (and AUs) -> a detailed
prompt (SynFER Fig. 1; the paper uses an LLM, this package uses documented templates), and the prompt of a
model captioner ([`DEFAULT_CAPTION_PROMPT`]).

Both FaceWorld captions and `SynFERPipeline` use these templates, so a model trained on FaceWorld reads the
same wording at sampling time. Imports only `facs`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .facs import EXPRESSIONS, describe_au

DEFAULT_CAPTION_PROMPT = (
    "Describe this face in one or two sentences: the person's apparent age, gender, hair and accessories, the "
    "facial expression and the emotion it shows, and the facial muscle movements that form it (brows, eyelids, "
    "cheeks, nose, lips, mouth opening, jaw)."
)
"""Caption prompt in the style SynFER used with ShareGPT-4V (expression and facial-muscle detail); its exact
wording is not published, so this one is the package's choice."""

EXPRESSION_PHRASES: dict[str, tuple[str, ...]] = {
    "neutral": ("a neutral expression", "a calm, relaxed face", "an expressionless face"),
    "happy": ("a happy expression", "a joyful smile", "a cheerful, smiling face"),
    "sad": ("a sad expression", "a sorrowful look", "an unhappy, downcast face"),
    "surprise": ("a surprised expression", "an astonished look", "a startled, amazed face"),
    "fear": ("a fearful expression", "a frightened look", "a scared, anxious face"),
    "disgust": ("a disgusted expression", "a look of revulsion", "a repulsed face"),
    "anger": ("an angry expression", "a furious look", "an annoyed, hostile face"),
}
"""Ways to name each expression; index 0 is the canonical phrase."""

PROMPT_TEMPLATES: tuple[str, ...] = (
    "{description}, with {expression}{muscles}.",
    "{description} showing {expression}{muscles}.",
    "{description}, close-up, {expression}{muscles}.",
)
"""Enrichment templates; `{muscles}` is empty or ", <AU descriptions>" (e.g. ", cheek raiser and lip corner
puller"). Template 0 with phrase 0 is what the pipeline uses by default."""

DEFAULT_DESCRIPTION = "a photo of a face"


def describe_muscles(action_units: Mapping[str, float] | None, threshold: float = 1.0, max_aus: int = 4) -> str:
    """The strongest AUs at or above `threshold` as FACS words, strongest first, e.g.
    "lip corner puller and cheek raiser"; "" when none. A left/right variant (OpenGraphAU's `AUL12`, `AUR12`) is left
    out when its bilateral AU is active too: it says nothing more."""
    if not action_units:
        return ""
    active_names = {n for n, v in action_units.items() if v >= threshold}
    active = sorted(
        ((v, n) for n, v in action_units.items() if n in active_names and _bilateral(n) not in active_names),
        key=lambda item: -item[0],
    )
    names = [describe_au(name) for _, name in active[:max_aus]]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _bilateral(name: str) -> str | None:
    """`AU12` for `AUL12` / `AUR12`; `None` for an AU without a side."""
    return f"AU{name[3:]}" if name[:3] in ("AUL", "AUR") else None


def enrich_prompt(
    description: str | None,
    expression: str | None = None,
    action_units: Mapping[str, float] | None = None,
    template: int = 0,
    phrase: int = 0,
) -> str:
    """Coarse description + expression (+ AUs) -> detailed prompt.

    Example:

    ```py
    >>> enrich_prompt("a photo of an elderly man with glasses", "happy", {"AU6": 2.5, "AU12": 4.0})
    'a photo of an elderly man with glasses, with a happy expression, lip corner puller and cheek raiser.'
    ```
    """
    description = (description or DEFAULT_DESCRIPTION).strip().rstrip(".")
    if expression is None and not action_units:
        return description
    if expression is not None:
        EXPRESSIONS.label_id(expression)
        phrases = EXPRESSION_PHRASES[expression]
        expression_text = phrases[phrase % len(phrases)]
    else:
        expression_text = "a facial expression"
    muscles = describe_muscles(action_units)
    return PROMPT_TEMPLATES[template % len(PROMPT_TEMPLATES)].format(
        description=description, expression=expression_text, muscles=f", {muscles}" if muscles else ""
    )
