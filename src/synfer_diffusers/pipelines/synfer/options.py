"""Option values of the SynFER pipelines that callers check or show without loading torch (the `synfer` command
line builds its help from them): defaults and choices of editing and semantic guidance, and their check."""

from __future__ import annotations

from ...value_checks import check_int, check_number

SG_NORMALIZATIONS = ("global", "per_token")
SG_DECODES = ("guide_size", "full")
DEFAULT_SG_WINDOW = (0.6, 1.0)
DEFAULT_SG_INTERVAL = 2
"""Defaults of `semantic_guidance_window` / `semantic_guidance_interval` (generation; edits always use them)."""

DEFAULT_EDIT_STRENGTH = 1.0
DEFAULT_EDIT_GUIDANCE_SCALE = 2.0
DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE = 12.0
"""Defaults of [`EditingMixin.edit`] (and of edit sets), measured on FaceWorld (`benchmarks/eval_faceworld_editing.py`,
10 faces x 7 expressions, 25 steps, the embedded default): strength 1.0, CFG 2 and semantic guidance 12 toward the
target expression (where the pipeline has a guide; none without) beat the earlier CFG 3 without guidance on every
measure (expression 83% vs 81% by the judge, identity attributes 67% vs 61%, L1 to the ground truth 0.050 vs 0.061).
CFG 3 with guidance 12 changes the expression more often (93%) but keeps less of the person (56%); CFG 1 keeps the
person (78-79%) but not the expression (53-60%); CFG 5 and strength 0.9 keep less of the person."""


def check_semantic_guidance_inputs(
    scale: float, window: tuple[float, float], normalization: str, interval: int, decode: str
) -> None:
    """Raises a `ValueError` naming the first invalid semantic-guidance argument."""
    check_number("semantic_guidance_scale", scale, 0)
    check_window("semantic_guidance_window", window)
    if normalization not in SG_NORMALIZATIONS:
        raise ValueError(f"`semantic_guidance_normalization` must be one of {SG_NORMALIZATIONS}, got {normalization!r}.")
    check_int("semantic_guidance_interval", interval, 1)
    if decode not in SG_DECODES:
        raise ValueError(f"`semantic_guidance_decode` must be one of {SG_DECODES}, got {decode!r}.")


def check_window(name: str, window: tuple[float, float]) -> None:
    """Raises a `ValueError` naming `name` unless `window` is a share of the denoising steps, `(start, end)` with
    `0 <= start < end <= 1`."""
    bounds = tuple(window) if isinstance(window, (tuple, list)) else ()
    if len(bounds) != 2 or not all(isinstance(w, (int, float)) and 0 <= w <= 1 for w in bounds) or bounds[0] >= bounds[1]:
        raise ValueError(f"`{name}` must be (start, end) with 0 <= start < end <= 1, got {window!r}.")
