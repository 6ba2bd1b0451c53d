"""Validation images: the expressions x identities grid of a `SynFERPipeline`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..image_utils import tile_images


def save_expression_grid(
    pipeline: Any,
    path: str | os.PathLike,
    expressions: Sequence[str],
    num_identities: int,
    prompt: str,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
) -> Image.Image:
    """Generates an expressions x identities grid with a `SynFERPipeline` and saves it as a PNG.

    Column `j` uses the seed `seed + j` in every row, so a row differs from another only by its target
    expression (prompt words, and the EMFACS prototype AUs when the UNet has an AU adapter)."""
    generators = [torch.Generator().manual_seed(seed + j) for _ in expressions for j in range(num_identities)]
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        prompt=prompt,
        expression=[name for name in expressions for _ in range(num_identities)],
        generator=generators,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    ).images
    rows = [images[i * num_identities : (i + 1) * num_identities] for i in range(len(expressions))]
    grid = tile_images(rows, row_labels=list(expressions))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return grid
