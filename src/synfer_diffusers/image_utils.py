"""Image helpers shared by pipelines, storage and training code (PIL and numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw


def resize_and_center_crop(image: PIL.Image.Image, size: int) -> np.ndarray:  # (size, size, 3) uint8
    """RGB, shorter side resized to `size` (bicubic), centre-cropped to `size` x `size`."""
    return resize_and_crop(image, size)


def resize_and_crop(
    image: PIL.Image.Image, size: int, position: tuple[float, float] | None = None
) -> np.ndarray:  # (size, size, 3) uint8
    """RGB, shorter side resized to `size` (bicubic), cropped to `size` x `size`: at the centre, or where
    `position = (u, v)` in [0, 1)^2 puts it (`u` of the `width - size + 1` possible left edges, `v` of the top
    edges; uniform `u, v` give a uniform random crop, as torchvision's `RandomCrop`)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        scale = size / min(image.size)
        resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(resized, PIL.Image.Resampling.BICUBIC)
        if position is None:
            left, top = (image.width - size) // 2, (image.height - size) // 2
        else:
            left, top = int((image.width - size + 1) * position[0]), int((image.height - size + 1) * position[1])
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image)


def tile_images(rows: Sequence[Sequence[PIL.Image.Image]], row_labels: Sequence[str] | None = None) -> PIL.Image.Image:
    """Tiles equally sized images into a grid (one list per row), with an optional label left of each row."""
    width, height = rows[0][0].size
    margin = 8 + 6 * max(map(len, row_labels)) if row_labels else 0
    grid = PIL.Image.new("RGB", (margin + width * max(map(len, rows)), height * len(rows)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (margin + c * width, r * height))
        if row_labels:
            draw.text((4, r * height + height // 2 - 5), row_labels[r], fill="black")
    return grid
