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

DEFAULT_EDIT_AU_GUIDANCE_SCALE = 3.0
DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW = (0.0, 1.0)
"""The identity-keeping levers of [`EditingMixin.edit`] (and of edit sets) by default, measured on FaceWorld (README
"Identity-keeping levers", `benchmarks/eval_faceworld_editing.py --strengths 1 --guidance-scales 2
--semantic-guidance-scales 12 --inversions source --rows edit --au-guidance-scales 3
--mutual-self-attention off 0:1:3`, 10 faces x 7 expressions, 25 DDIM steps, the embedded default;
`benchmarks/results/edit_lever_*.json`): AU guidance 3 (under CFG: see [`edit_au_guidance_scale`]) and mutual
self-attention in every step from the first decoder self-attention layer (layer 3 of the default's 7, see
`mutual_attention.default_start_layer`) meet all four issue-31 targets, expression 94.3% / identity attributes 73.0% /
L1 to the ground truth 0.0451 / judge distance 1.53, where CFG 2 without them gives 88.6% / 66.1% / 0.0497 / 1.82, at
1.6x its time (171 vs 106 s for 70 edits)."""


def edit_au_guidance_scale(au_guidance_scale: float | None, guidance_scale: float) -> float | None:
    """The AU guidance scale an edit runs with: an explicit `au_guidance_scale` as given; `None` is the edit's default,
    [`DEFAULT_EDIT_AU_GUIDANCE_SCALE`] under classifier-free guidance (`guidance_scale > 1`) and no AU guidance without
    it, so that an edit without CFG toward its own source's condition still retraces the inversion."""
    if au_guidance_scale is None and guidance_scale > 1:
        return DEFAULT_EDIT_AU_GUIDANCE_SCALE
    return au_guidance_scale


def joint_au_guidance_scale(guidance_scale: float) -> float | None:
    """The edit's `au_guidance_scale` that guides the AUs with the text (AU guidance off, two UNet branches): the
    guidance scale itself under CFG (the same guidance, see `SamplingMixin.guidance_branches`), `None` without it."""
    return guidance_scale if guidance_scale > 1 else None


def check_semantic_guidance_inputs(
    scale: float, window: tuple[float, float], normalization: str, interval: int, decode: str
) -> None:
    """Raises a `ValueError` naming the first invalid semantic-guidance argument."""
    check_number("semantic_guidance_scale", scale, 0)
    check_window("semantic_guidance_window", window)
    if normalization not in SG_NORMALIZATIONS:
        raise ValueError(
            f"`semantic_guidance_normalization` must be one of {SG_NORMALIZATIONS}, got {normalization!r}."
        )
    check_int("semantic_guidance_interval", interval, 1)
    if decode not in SG_DECODES:
        raise ValueError(f"`semantic_guidance_decode` must be one of {SG_DECODES}, got {decode!r}.")


def check_window(name: str, window: tuple[float, float]) -> None:
    """Raises a `ValueError` naming `name` unless `window` is a share of the denoising steps, `(start, end)` with
    `0 <= start < end <= 1`."""
    bounds = tuple(window) if isinstance(window, (tuple, list)) else ()
    if (
        len(bounds) != 2
        or not all(isinstance(w, (int, float)) and 0 <= w <= 1 for w in bounds)
        or bounds[0] >= bounds[1]
    ):
        raise ValueError(f"`{name}` must be (start, end) with 0 <= start < end <= 1, got {window!r}.")
