"""Training data: the per-example transform that decodes a row when its batch is read (images, captions, AUs,
expression labels). Loading a split and its column checks live in [`synfer_diffusers.data.loading`]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from ..data.loading import ExpressionLabels, pixel_tensor
from ..facs import AUSpace
from .determinism import StepRandom

if TYPE_CHECKING:
    from .config import TrainingConfig


@dataclass
class ExampleTransform:
    """The per-example transform of training rows (`Dataset.with_transform`, or `IterableDataset.map(batched=True)`),
    run in DataLoader workers: a batch dict of columns -> a batch dict of tensors.

    Outputs `pixel_values` (uint8 `(3, R, R)`, resized, then centre-cropped with `center_crop` or else cropped at
    random, and flipped left-right with p = 0.5 with `random_flip`, as diffusers' examples; the draws come from the
    micro-batch's `random`, so they are a function of the seed and the step), or with `cached_latents` the
    `latent_mean` / `latent_std` columns of a latent cache (float32 `(C, h, w)`), and, for the columns
    configured, `input_ids` (the tokenizer's padded ids), `action_units` (float32, width, NaN/inf and range
    checked against `au_space`) and `labels` ([`ExpressionLabels`] ids).
    """

    image_column: str
    resolution: int
    center_crop: bool = True
    random_flip: bool = False
    cached_latents: bool = False
    text_column: str | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    au_column: str | None = None
    au_space: AUSpace | None = None
    labels: ExpressionLabels | None = None

    @property
    def columns(self) -> list[str]:
        """The dataset columns read."""
        images = ["latent_mean", "latent_std"] if self.cached_latents else [self.image_column]
        names = [*images, self.text_column, self.au_column, self.labels and self.labels.column]
        return [name for name in names if name]

    @classmethod
    def from_config(cls, config: TrainingConfig, **columns: Any) -> ExampleTransform:
        """The transform of a training run: its image column, resolution, `--center_crop` and `--random_flip`, plus
        the given column settings (`text_column=...`, `au_column=...`, ...)."""
        return cls(
            config.image_column, config.resolution, center_crop=config.center_crop, random_flip=config.random_flip,
            **columns,
        )  # fmt: skip

    @property
    def draws_randomly(self) -> bool:
        """Whether [`__call__`] needs the micro-batch's [`StepRandom`] (random crops or flips of images)."""
        return not self.cached_latents and (self.random_flip or not self.center_crop)

    def __call__(self, batch: dict[str, list], random: StepRandom | None = None) -> dict[str, list]:
        if self.cached_latents:
            out = {
                name: list(torch.from_numpy(np.asarray(batch[name], np.float32)))
                for name in ("latent_mean", "latent_std")
            }
        else:
            out = {"pixel_values": self.pixel_values(batch[self.image_column], random)}
        if self.text_column is not None:
            out["input_ids"] = list(tokenize_captions(self.tokenizer, batch[self.text_column]))
        if self.au_column is not None:
            out["action_units"] = list(self.action_units(batch[self.au_column]))
        if self.labels is not None:
            out["labels"] = list(self.labels(batch[self.labels.column]))
        return out

    def pixel_values(self, images: list[Image.Image], random: StepRandom | None) -> list[torch.Tensor]:
        if not self.draws_randomly:
            return [pixel_tensor(image, self.resolution) for image in images]
        flips = (random.rand((len(images),)) < 0.5).tolist()  # drawn either way: one draw order for every setting
        positions = random.rand((len(images), 2)).tolist()
        if self.center_crop:
            positions = [None] * len(images)
        flips = flips if self.random_flip else [False] * len(images)
        return [pixel_tensor(image, self.resolution, *options) for image, options in zip(images, zip(positions, flips))]

    def action_units(self, rows: list[Sequence[float]]) -> torch.Tensor:  # (B, num_aus)
        widths = sorted({len(row) for row in rows} - {self.au_space.num_aus})
        if widths:
            raise ValueError(
                f"Column {self.au_column!r} has a row of {widths[0]} values; expected {self.au_space.num_aus} each."
            )
        values = torch.tensor(rows, dtype=torch.float32)
        return self.au_space.validate_tensor(values, field=f"dataset column {self.au_column!r}")


def drop_captions(input_ids: torch.Tensor, drop_mask: torch.Tensor, empty_ids: torch.Tensor) -> torch.Tensor:
    """Token ids `(B, L)` with the rows where `drop_mask` is True replaced by the empty prompt's ids `(1, L)`."""
    return torch.where(drop_mask[:, None], empty_ids, input_ids)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` in [0, 255] -> float32 in [-1, 1], the range of `AutoencoderKL`."""
    return images.float() / 127.5 - 1.0


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]) -> torch.Tensor:  # (N, L)
    """Token ids padded / truncated to the tokenizer's `model_max_length`, as `SynFERPipeline.encode_prompt`."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
