from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
"""The `output_type`s of the SynFER pipelines."""


@dataclass
class SynFERPipelineOutput(BaseOutput):
    """
    Output of [`SynFERPipeline`], one entry per generated image.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            Generated images (or latents for `output_type="latent"`).
        expressions (`list[str | None]`): the target expression of each image; `None` when only AUs (or
            nothing) were requested, i.e. the image has no target label.
        action_units (`list[dict[str, float] | None]`): the AU condition each image was generated with
            (`None` for the null AU condition or a UNet without an AU adapter).
        prompts (`list[str]`): the prompts actually encoded, after enrichment.
        seeds (`list[int]`): per-image seeds; `generator=[torch.Generator().manual_seed(seeds[i])]` with the
            same per-image inputs reproduces image `i` alone.
        feranno_probabilities (`torch.Tensor` of shape `(num_images, 7)`, *optional*): in-loop FERAnno
            pseudo-label probabilities in `EXPRESSIONS` order, when the pipeline has a `feranno_head`.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    expressions: list[str | None]
    action_units: list[dict[str, float] | None]
    prompts: list[str]
    seeds: list[int]
    feranno_probabilities: torch.Tensor | None = None


@dataclass
class SynFEREditOutput(SynFERPipelineOutput):
    """
    Output of [`SynFERPipeline.edit`], one entry per edited image: the fields of [`SynFERPipelineOutput`] for the
    target (`expressions`, `action_units` and `prompts` are the target condition; `seeds` the per-image generators'
    seeds) and the source's condition.

    Args:
        source_action_units (`list[dict[str, float]]`): the AUs each source was inverted under (given or estimated).
        source_prompts (`list[str]`): the prompts each source was inverted under, after enrichment.
    """

    source_action_units: list[dict[str, float]] | None = None
    source_prompts: list[str] | None = None
