"""SynFER's semantic guidance: steering sampling with an expression classifier (SynFER stage 2, sampling).

In the late denoising steps, `x0_hat = (x_t - sqrt(1 - abar_t) eps(x_t, t, c_text, c_au)) / sqrt(abar_t)` is decoded by
the VAE and scored by an external FER classifier (the *guide*); the text embedding moves against the normalised
gradient of the cross-entropy to the target expression, `c_text <- c_text - lambda_g * grad / ||grad||`, and keeps the
update for all later steps (descent on the loss; the paper's transcribed formula shows a plus sign).

[`SemanticGuidanceMixin`] holds the parts that need the pipeline's components (VAE, UNet, scheduler, guide); the
functions below are the step schedule and input checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...facs import EXPRESSIONS, classifier_logits_to_expressions, map_classifier_labels

SG_NORMALIZATIONS = ("global", "per_token")
SG_DECODES = ("guide_size", "full")


@dataclass
class SemanticGuide:
    """What one guided call needs to score images: per-image targets in `EXPRESSIONS` order (`-100`: not guided), the
    guide's label mapping, its input size and normalisation, and the latent size `x0_hat` is decoded at (`None`: as
    it is)."""

    targets: torch.Tensor  # (N,)
    index_map: list[int | None]
    size: tuple[int, int] | None
    decode_size: tuple[int, int] | None
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor  # (1, 3, 1, 1)


def check_semantic_guidance_inputs(
    scale: float, window: tuple[float, float], normalization: str, interval: int, decode: str
) -> None:
    """Raises a `ValueError` naming the first invalid semantic-guidance argument."""
    if not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"`semantic_guidance_scale` must be a finite number >= 0, got {scale!r}.")
    bounds = tuple(window) if isinstance(window, (tuple, list)) else ()
    if len(bounds) != 2 or not all(isinstance(w, (int, float)) and 0 <= w <= 1 for w in bounds) or bounds[0] >= bounds[1]:
        raise ValueError(f"`semantic_guidance_window` must be (start, end) with 0 <= start < end <= 1, got {window!r}.")
    if normalization not in SG_NORMALIZATIONS:
        raise ValueError(f"`semantic_guidance_normalization` must be one of {SG_NORMALIZATIONS}, got {normalization!r}.")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"`semantic_guidance_interval` must be an int >= 1, got {interval!r}.")
    if decode not in SG_DECODES:
        raise ValueError(f"`semantic_guidance_decode` must be one of {SG_DECODES}, got {decode!r}.")


def semantic_guidance_steps(num_steps: int, window: tuple[float, float]) -> set[int]:
    """Indices of the steps inside `window` (fractions of `num_steps`): `ceil(start * n) <= i < ceil(end * n)`."""
    return set(range(math.ceil(window[0] * num_steps), math.ceil(window[1] * num_steps)))


def semantic_guidance_gradient_steps(num_steps: int, window: tuple[float, float], interval: int = 1) -> set[int]:
    """Steps whose conditional pass also yields the guidance gradient: the step before every `interval`-th step
    of the window, starting with its first, so that the window is denoised with embeddings updated by earlier
    steps (a gradient taken at the last step could not act on anything)."""
    steps = sorted(i - 1 for i in semantic_guidance_steps(num_steps, window) if i >= 1)
    return set(steps[::interval])


def guidance_decode_size(
    guide_size: tuple[int, int] | None, latent_size: tuple[int, int], vae_scale_factor: int, decode: str
) -> tuple[int, int] | None:
    """Latent size `(h, w)` at which `x0_hat` is decoded for the guide, or None to decode it as it is: with
    `decode="guide_size"` and a guide reading smaller images than the decoder makes, the smallest latent whose
    decode covers the guide's input."""
    if decode == "full" or guide_size is None:
        return None
    size = tuple(min(math.ceil(g / vae_scale_factor), n) for g, n in zip(guide_size, latent_size))
    return None if size == latent_size else size


class SemanticGuidanceMixin:
    """Semantic guidance for a pipeline with `vae`, `unet`, `scheduler`, `guidance_classifier`,
    `guidance_image_processor`, `vae_scale_factor` and a `predict_noise_branches(latents, t, prompt_embeds,
    negative_prompt_embeds, au_embeds, au_scale) -> (uncond | None, cond)` method."""

    def prepare_semantic_guidance(
        self,
        expressions: list[str | None],
        label_mapping: Mapping[str, str | None] | None,
        decode: str,
        latent_size: tuple[int, int],
        device: torch.device,
    ) -> SemanticGuide:
        """The [`SemanticGuide`] of a call: targets, the guide's label order and preprocessing constants."""
        if all(e is None for e in expressions):
            raise ValueError("Semantic guidance needs target expressions: pass `expression`.")
        index_map = map_classifier_labels(
            self.guidance_classifier.config.id2label, label_mapping, field="guidance_label_mapping"
        )
        processor = self.guidance_image_processor
        size = getattr(processor, "size", None) or {}
        side = size.get("shortest_edge")
        target_size = (size["height"], size["width"]) if "height" in size else (side, side) if side else None
        mean = getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]
        return SemanticGuide(
            targets=torch.tensor([EXPRESSIONS.index(e) if e else -100 for e in expressions], device=device),
            index_map=index_map,
            size=target_size,
            decode_size=guidance_decode_size(target_size, tuple(latent_size), self.vae_scale_factor, decode),
            mean=torch.tensor(mean, device=device).view(1, -1, 1, 1),
            std=torch.tensor(std, device=device).view(1, -1, 1, 1),
        )

    def guidance_loss(self, images: torch.Tensor, guide: SemanticGuide) -> torch.Tensor:
        """Cross-entropy of the guide on images in [0, 1] `(N, 3, H, W)`, preprocessed in torch (resize + normalise),
        summed over guided images."""
        classifier = self.guidance_classifier
        dtype = next(classifier.parameters()).dtype
        if guide.size is not None and tuple(images.shape[-2:]) != guide.size:
            images = F.interpolate(images, size=guide.size, mode="bilinear", antialias=True, align_corners=False)
        pixels = ((images - guide.mean) / guide.std).to(dtype)
        logits = classifier(pixel_values=pixels).logits.float()  # (N, num_labels)
        logits = classifier_logits_to_expressions(logits, guide.index_map)  # (N, 7)
        return F.cross_entropy(logits, guide.targets, ignore_index=-100, reduction="sum")

    def semantic_guidance_step(
        self,
        latents: torch.Tensor,  # (N, C, h, w)
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,  # (N, L, D)
        au_embeds: torch.Tensor | None,  # (N, T, D)
        au_scale: float,
        guide: SemanticGuide,
        semantic_guidance_scale: float,
        normalization: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional UNet pass of a guided step, run with gradients: it serves both the CFG noise prediction and
        the guidance gradient, so a guided step costs one backward pass of the conditional half, a VAE decode and a
        guide pass more than a plain step (the caller runs the unconditional half without gradients: batching it into
        the graph would double the backward at real sizes). Returns `(eps_cond, updated prompt_embeds)`."""
        with torch.enable_grad():
            text = prompt_embeds.detach().requires_grad_(True)
            _, eps_cond = self.predict_noise_branches(latents, t, text, None, au_embeds, au_scale)
            abar = self.scheduler.alphas_cumprod.to(latents.device)[t]
            x0_hat = (latents - (1 - abar).sqrt() * eps_cond) / abar.sqrt()  # (N, C, h, w)
            if guide.decode_size is not None:
                resized = F.interpolate(x0_hat.float(), size=guide.decode_size, mode="bilinear", antialias=True)
                x0_hat = resized.to(x0_hat.dtype)  # (N, C, h', w'); antialiased resizing has no bf16 CPU kernel
            images = self.vae.decode(x0_hat / self.vae.config.scaling_factor, return_dict=False)[0]
            loss = self.guidance_loss((images.float() / 2 + 0.5).clamp(0, 1), guide)
            grad = torch.autograd.grad(loss, text)[0]  # (N, L, D)
        dims = (-1,) if normalization == "per_token" else (-2, -1)
        step = grad / grad.norm(dim=dims, keepdim=True).clamp_min(1e-12)
        return eps_cond.detach(), (prompt_embeds - semantic_guidance_scale * step).to(prompt_embeds.dtype)
