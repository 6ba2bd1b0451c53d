"""The argument checks that generation (`check_inputs`, `check_call`) and editing (`check_edit_inputs`,
`check_edit_call`) share: one rule per argument, one concise error naming it, and the dry run that binds a call's
keyword arguments without computing anything."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ...facs import map_classifier_labels
from ...value_checks import check_int, check_number
from .options import check_semantic_guidance_inputs
from .pipeline_output import OUTPUT_TYPES


def bind_call(method: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments `method(**kwargs)` would run with, defaults applied; an unknown or missing name is a
    `ValueError` naming the method."""
    try:
        bound = inspect.signature(method).bind(**kwargs)
    except TypeError as error:
        owner = type(method.__self__).__name__
        raise ValueError(f"Not an argument of {owner}.{method.__name__}: {error}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def check_sampling_inputs(
    pipe: Any,
    num_inference_steps: int,
    height: int,
    width: int,
    guidance_scale: float,
    au_scale: float,
    au_guidance_scale: float | None,
    output_type: str,
    semantic_guidance: tuple[float, tuple[float, float], str, int, str],
    guidance_label_mapping: Mapping[str, str | None] | None,
    label_with_feranno: bool,
    feranno_label_mapping: Mapping[str, str | None] | None,
    callback_on_step_end_tensor_inputs: list[str],
) -> None:
    """Raises a concise error naming the first invalid argument among those every sampling call of `pipe` (a
    [`SynFERPipeline`]) takes; `semantic_guidance` is `(scale, window, normalization, interval, decode)`."""
    check_int("num_inference_steps", num_inference_steps, 1)
    if height % pipe.vae_scale_factor or width % pipe.vae_scale_factor:
        raise ValueError(
            f"`height` and `width` must be divisible by {pipe.vae_scale_factor} (the VAE scale), got {height}x{width}."
        )
    check_number("guidance_scale", guidance_scale, 0)
    check_number("au_scale", au_scale)
    check_number("au_guidance_scale", au_guidance_scale, 0, optional=True)
    if au_guidance_scale is not None:
        if pipe.au_space is None:
            raise ValueError("`au_guidance_scale` needs a UNet with an AU adapter (AUConditionedUNet2DConditionModel).")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    check_semantic_guidance_inputs(*semantic_guidance)
    if semantic_guidance[0] > 0:
        if pipe.guidance_classifier is None:
            raise ValueError(
                "`semantic_guidance_scale` > 0 needs a `guidance_classifier` component (pass one to the pipeline)."
            )
        map_classifier_labels(
            pipe.guidance_classifier.config.id2label, guidance_label_mapping, field="guidance_label_mapping"
        )
    if pipe.feranno_head is not None and label_with_feranno:
        pipe.feranno_head.expression_index_map(feranno_label_mapping)
        if any(getattr(module, "fused_projections", False) for module in pipe.unet.modules()):
            raise ValueError(
                "`label_with_feranno` needs unfused attention projections (FERAnno reads cross-attention maps): call "
                "`unfuse_qkv_projections()` first, or pass `label_with_feranno=False`."
            )
    unknown = set(callback_on_step_end_tensor_inputs) - set(pipe._callback_tensor_inputs)
    if unknown:
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` must be among {pipe._callback_tensor_inputs}, got {sorted(unknown)}."
        )
