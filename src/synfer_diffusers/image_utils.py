"""Image helpers shared by pipelines and training code (PIL and numpy only)."""

from __future__ import annotations

import numpy as np
import PIL.Image


def resize_and_center_crop(image: PIL.Image.Image, size: int) -> np.ndarray:  # (size, size, 3) uint8
    """RGB, shorter side resized to `size` (bicubic), centre-cropped to `size` x `size`."""
    image = image.convert("RGB")
    if image.size != (size, size):
        scale = size / min(image.size)
        resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(resized, PIL.Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image)
