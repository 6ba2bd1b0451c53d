"""Evaluation of FER models on images: a judge (expression classifier) and an AU regressor, stock transformers image
models trained by `examples/train_fer_classifier.py`, scored on uint8 or [0, 1] images, plus the degradations the
judge is tested under (Gaussian blur, 64 -> 32 -> 64). The benchmarks and the training scripts share these.

Example:

```py
>>> from transformers import AutoModelForImageClassification
>>> from synfer_diffusers.evaluation import evaluate_expression_classifier
>>> judge = AutoModelForImageClassification.from_pretrained("runs/judge")
>>> evaluate_expression_classifier(judge, images, labels)["accuracy"]  # images: (N, 64, 64, 3) uint8
```
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

__all__ = [
    "IMAGE_SIZE",
    "downscale_upscale",
    "evaluate_au_regressor",
    "evaluate_expression_classifier",
    "gaussian_blur",
    "images_to_tensor",
    "predict",
    "to_pixel_values",
]

IMAGE_SIZE = 64
"""Input side of the FaceWorld judge and AU regressor (a model's `config.input_size` overrides it)."""


def images_to_tensor(images) -> torch.Tensor:
    """uint8 images `(N, H, W, 3)` (numpy / torch), `(N, 3, H, W)` uint8 torch, or a list of PIL images ->
    float `(N, 3, H, W)` in [0, 1]."""
    if isinstance(images, list):
        images = np.stack([np.asarray(image.convert("RGB")) for image in images])
    images = torch.as_tensor(images)
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(
            f"`images` must be a batch of RGB images (N, H, W, 3) or (N, 3, H, W), got {tuple(images.shape)}."
        )
    if images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0, 1)


def _gaussian_kernels(sigmas: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """One normalised 1-D kernel of width `2 * radius + 1` per sigma; sigma 0 gives the identity."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    sigmas = sigmas.clamp(min=1e-3)[:, None]
    kernels = torch.exp(-0.5 * (offsets / sigmas) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)  # (B, 2r+1)


def gaussian_blur(images: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of `(B, 3, H, W)` images with one sigma per image (or one for all)."""
    batch, channels, height, width = images.shape
    sigmas = torch.as_tensor(sigma, dtype=torch.float32).expand(batch)
    kernels = _gaussian_kernels(sigmas).repeat_interleave(channels, dim=0)  # (B*C, k)
    radius = kernels.shape[1] // 2
    x = images.reshape(1, batch * channels, height, width)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernels[:, None, None, :], groups=batch * channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernels[:, None, :, None], groups=batch * channels)
    return x.reshape(batch, channels, height, width)


def downscale_upscale(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """64 -> 32 -> 64 (for `factor=2`): the detail a 32x32 working resolution keeps."""
    height, width = images.shape[-2:]
    small = F.interpolate(images, size=(height // factor, width // factor), mode="bilinear", antialias=True)
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def to_pixel_values(images: torch.Tensor, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """[0, 1] images -> the model input `x * 2 - 1` at `image_size` (what the saved image processor does)."""
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return images * 2.0 - 1.0


@torch.no_grad()
def predict(model: PreTrainedModel, images, batch_size: int = 256) -> torch.Tensor:
    """Logits (expression) or AU intensities (regression), `(N, num_labels)`, for uint8 or [0, 1] images."""
    model.eval()
    images = images_to_tensor(images)
    image_size = getattr(model.config, "input_size", IMAGE_SIZE)
    outputs = [model(pixel_values=to_pixel_values(batch, image_size)).logits for batch in images.split(batch_size)]
    return torch.cat(outputs) if outputs else torch.zeros(0, model.config.num_labels)


def evaluate_expression_classifier(model: PreTrainedModel, images, labels, batch_size: int = 256) -> dict:
    """Accuracy, per-class accuracy (keyed by `model.config.id2label`) and confusion matrix (rows = true).

    Args:
        model: a 7-way image classifier whose `id2label` are the [`EXPRESSIONS`].
        images: uint8 `(N, H, W, 3)` / `(N, 3, H, W)`, float [0, 1] `(N, 3, H, W)`, or a list of PIL images.
        labels: `(N,)` class indices (order of `model.config.id2label`).
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    predictions = predict(model, images, batch_size).argmax(dim=1)
    if len(predictions) != len(labels):
        raise ValueError(f"`images` ({len(predictions)}) and `labels` ({len(labels)}) differ in length.")
    num_classes = model.config.num_labels
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, -1)
    per_class = confusion.diag().float() / confusion.sum(dim=1).clamp(min=1)
    return {
        "accuracy": float((predictions == labels).float().mean()) if len(labels) else float("nan"),
        "per_class_accuracy": {model.config.id2label[i]: float(a) for i, a in enumerate(per_class)},
        "confusion_matrix": confusion.tolist(),
        "num_samples": len(labels),
    }


def evaluate_au_regressor(model: PreTrainedModel, images, aus, batch_size: int = 256) -> dict:
    """Mean absolute error over all AUs and per AU (keyed by `model.config.au_names`), predictions clipped to
    [0, 5].

    Args:
        model: a regression model with `num_labels` AU outputs.
        images: as for [`evaluate_expression_classifier`].
        aus: `(N, num_labels)` true intensities.
    """
    aus = torch.as_tensor(np.asarray(aus), dtype=torch.float32)
    predictions = predict(model, images, batch_size).clamp(0, getattr(model.config, "au_max_value", 5.0))
    if predictions.shape != aus.shape:
        raise ValueError(f"`aus` must have shape {tuple(predictions.shape)}, got {tuple(aus.shape)}.")
    per_au = (predictions - aus).abs().mean(dim=0)
    names = getattr(model.config, "au_names", [model.config.id2label[i] for i in range(len(per_au))])
    return {"mae": float(per_au.mean()), "mae_per_au": dict(zip(names, map(float, per_au))), "num_samples": len(aus)}
