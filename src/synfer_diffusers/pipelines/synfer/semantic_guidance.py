"""SynFER's semantic guidance: steering sampling with an expression classifier (SynFER stage 2, sampling).

In the late denoising steps, the clean image predicted by the conditional UNet pass, `x0_hat = (x_t - sqrt(1 - abar_t)
eps(x_t, t, c_text, c_au)) / sqrt(abar_t)` for an epsilon-prediction UNet (the scheduler's `prediction_type` decides:
see `prediction.py`), is decoded by the VAE, preprocessed as the guide's image processor would and scored by an
external FER classifier (the *guide*); the text embedding moves against the normalised gradient of the cross-entropy
to the target expression, `c_text <- c_text - lambda_g * grad / ||grad||`, and keeps the update for all later steps
(descent on the loss; the paper's transcribed formula shows a plus sign). The UNet, VAE and guide weights are frozen
meanwhile, so that autograd keeps only what the gradient with respect to the text needs.

[`SemanticGuidanceMixin`] holds the parts that need the pipeline's components (VAE, UNet, scheduler, guide); the rest
below is the guide's preprocessing ([`GuidePreprocessing`]), weight freezing, the step schedule and input checks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor

from ...facs import EXPRESSIONS, classifier_logits_to_expressions, map_classifier_labels
from .prediction import predicted_original_sample, variance_preserving_sample

# PIL resampling filter -> `F.interpolate` mode (Lanczos: bicubic, the closest); the others: bilinear
_INTERPOLATION_MODES = {"NEAREST": "nearest-exact", "BICUBIC": "bicubic", "LANCZOS": "bicubic"}
# ConvNeXt image processors crop `crop_pct` of the image below this `shortest_edge` and resize to a square from it on
_CROP_PCT_MAX_EDGE = 384


@dataclass(frozen=True)
class GuidePreprocessing:
    """
    A guide image processor's `preprocess` as differentiable torch operations on images in [0, 1] `(N, 3, H, W)`:

    1. `do_resize` to `size`: `{"height", "width"}` exactly, or `{"shortest_edge"}`: the short side, keeping the
       aspect ratio (ConvNeXt processors with `crop_pct`: `shortest_edge / crop_pct` then a center crop to
       `shortest_edge`, or a square `shortest_edge` from 384 on), with the processor's resampling filter (antialiased);
    2. `do_center_crop` to `crop_size` (zero padding where the image is smaller, as transformers does);
    3. `do_rescale`: implicit, as the images are in [0, 1] already (an unusual `rescale_factor` is honoured);
    4. `do_normalize` with `image_mean` / `image_std`.

    Attributes:
        resize (`tuple[int, int]`, `int` or `None`): the resize target `(height, width)`, a shortest edge, or None
            (no resizing).
        crops (`tuple[tuple[int, int], ...]`): the center crops `(height, width)`, in order.
        mode (`str`): the `F.interpolate` mode.
        scale (`float`): what pixels in [0, 1] are multiplied by (`255 * rescale_factor`, 1 for the usual 1/255).
        mean, std (`tuple[float, ...]` or `None`): the normalisation, or None without it.
    """

    resize: tuple[int, int] | int | None
    crops: tuple[tuple[int, int], ...] = ()
    mode: str = "bilinear"
    scale: float = 1.0
    mean: tuple[float, ...] | None = (0.5, 0.5, 0.5)
    std: tuple[float, ...] | None = (0.5, 0.5, 0.5)

    @classmethod
    def from_processor(cls, processor: BaseImageProcessor | None) -> GuidePreprocessing:
        """The preprocessing of a transformers image processor; without one, images are normalised with mean and std
        0.5 at their own size."""
        if processor is None:
            return cls(resize=None)
        size = _size_dict(processor, "size") if getattr(processor, "do_resize", False) else {}
        resize, crops, crop_pct = None, [], getattr(processor, "crop_pct", None)
        if size.keys() == {"height", "width"}:
            resize = (size["height"], size["width"])
        elif size.keys() == {"shortest_edge"}:
            edge = size["shortest_edge"]
            if crop_pct is None:
                resize = edge
            elif edge < _CROP_PCT_MAX_EDGE:
                resize, crops = int(edge / crop_pct), [(edge, edge)]
            else:
                resize = (edge, edge)
        elif size:
            raise ValueError(
                f"`guidance_image_processor.size` must have 'height' and 'width' or 'shortest_edge' alone, got {size}."
            )
        if getattr(processor, "do_center_crop", False):
            crop_size = _size_dict(processor, "crop_size")
            if crop_size.keys() != {"height", "width"}:
                raise ValueError(
                    f"`guidance_image_processor.crop_size` must have 'height' and 'width', got {crop_size}."
                )
            crops.append((crop_size["height"], crop_size["width"]))
        rescale = getattr(processor, "rescale_factor", 1 / 255) if getattr(processor, "do_rescale", True) else 1.0
        normalize = getattr(processor, "do_normalize", True)
        return cls(
            resize=resize,
            crops=tuple(crops),
            mode=_interpolation_mode(getattr(processor, "resample", None)),
            scale=255 * rescale,
            mean=tuple(processor.image_mean) if normalize else None,
            std=tuple(processor.image_std) if normalize else None,
        )

    def resize_target(self, height: int, width: int) -> tuple[int, int] | None:
        """The size `(height, width)` that an image of `height` x `width` is resized to first, or None without
        resizing (the short side's rule of transformers' `get_resize_output_image_size`)."""
        if self.resize is None or isinstance(self.resize, tuple):
            return self.resize
        short, long = sorted((height, width))
        new_long = int(self.resize * long / short)
        return (new_long, self.resize) if width <= height else (self.resize, new_long)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1] -> (N, 3, h, w)
        target = self.resize_target(*images.shape[-2:])
        if target is not None and target != tuple(images.shape[-2:]):
            antialias = {"antialias": True, "align_corners": False} if self.mode != "nearest-exact" else {}
            images = F.interpolate(images, size=target, mode=self.mode, **antialias).clamp(0, 1)  # PIL: 8-bit range
        for crop in self.crops:
            images = _center_crop(images, crop)
        images = images * self.scale
        if self.mean is None:
            return images
        mean, std = (images.new_tensor(values).view(1, -1, 1, 1) for values in (self.mean, self.std))
        return (images - mean) / std


def _size_dict(processor: BaseImageProcessor, field: str) -> dict[str, int]:
    """A processor's `size` / `crop_size` (a dict, or transformers' `SizeDict`, which iterates over its set
    `(key, value)` pairs) without its unset entries."""
    return {key: value for key, value in dict(getattr(processor, field, None) or {}).items() if value is not None}


def _interpolation_mode(resample: int | PIL.Image.Resampling | None) -> str:
    """The `F.interpolate` mode closest to a PIL resampling filter (bilinear without one, as transformers)."""
    if resample is None:
        return "bilinear"
    name = resample.name if hasattr(resample, "name") else PIL.Image.Resampling(resample).name
    return _INTERPOLATION_MODES.get(name.upper(), "bilinear")


def _center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # (N, C, H, W) -> (N, C, h, w)
    """The center `size` crop of transformers' `center_crop`: offset `(H - h) // 2`, zero padding where the image is
    smaller (`F.pad` crops where its amounts are negative)."""
    (height, width), (crop_height, crop_width) = images.shape[-2:], size
    top, left = (crop_height - height + 1) // 2, (crop_width - width + 1) // 2  # -((H - h) // 2)
    return F.pad(images, (left, crop_width - width - left, top, crop_height - height - top))


@dataclass
class SemanticGuide:
    """What one guided call needs to score images: per-image targets in `EXPRESSIONS` order (`-100`: not guided), the
    guide's label mapping and preprocessing, and the latent size `x0_hat` is decoded at (`None`: as it is)."""

    targets: torch.Tensor  # (N,)
    index_map: list[int | None]
    preprocessing: GuidePreprocessing
    decode_size: tuple[int, int] | None


@dataclass
class SemanticGuidanceSchedule:
    """Semantic guidance of one denoising loop: the guide, lambda_g, the gradient's normalisation and the indices of
    the steps whose conditional pass also takes a gradient ([`semantic_guidance_gradient_steps`])."""

    guide: SemanticGuide
    scale: float
    normalization: str
    steps: set[int]


@contextlib.contextmanager
def frozen_parameters(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Sets `requires_grad=False` on the parameters of `modules` (None: skipped) and restores each one's flag on exit,
    also on an error."""
    parameters = [p for module in modules if module is not None for p in module.parameters()]
    flags = [p.requires_grad for p in parameters]
    try:
        for parameter in parameters:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)


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
    `decode="guide_size"` and a guide resizing the decoder's images to a smaller `guide_size` (its first resize
    target, before any crop), the smallest latent whose decode covers it."""
    if decode == "full" or guide_size is None:
        return None
    size = tuple(min(math.ceil(g / vae_scale_factor), n) for g, n in zip(guide_size, latent_size))
    return None if size == latent_size else size


class SemanticGuidanceMixin:
    """Semantic guidance for a pipeline with `vae`, `unet`, `scheduler`, `guidance_classifier`,
    `guidance_image_processor`, `vae_scale_factor` and a `predict_noise_branches(latents, t, prompt_embeds,
    negative_prompt_embeds, au_embeds, au_scale, branches) -> {branch: prediction}` method."""

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
        preprocessing = GuidePreprocessing.from_processor(self.guidance_image_processor)
        image_size = preprocessing.resize_target(*(n * self.vae_scale_factor for n in latent_size))
        return SemanticGuide(
            targets=torch.tensor([EXPRESSIONS.index(e) if e else -100 for e in expressions], device=device),
            index_map=index_map,
            preprocessing=preprocessing,
            decode_size=guidance_decode_size(image_size, tuple(latent_size), self.vae_scale_factor, decode),
        )

    def plan_semantic_guidance(
        self,
        expressions: list[str | None],
        label_mapping: Mapping[str, str | None] | None,
        scale: float,
        window: tuple[float, float],
        normalization: str,
        interval: int,
        decode: str,
        latent_size: tuple[int, int],
        num_steps: int,
        device: torch.device,
    ) -> SemanticGuidanceSchedule | None:
        """The [`SemanticGuidanceSchedule`] of a loop of `num_steps` steps, or `None` for `scale == 0`."""
        if scale == 0:
            return None
        guide = self.prepare_semantic_guidance(expressions, label_mapping, decode, latent_size, device)
        steps = semantic_guidance_gradient_steps(num_steps, window, interval)
        return SemanticGuidanceSchedule(guide, scale, normalization, steps)

    def guidance_loss(self, images: torch.Tensor, guide: SemanticGuide) -> torch.Tensor:
        """Cross-entropy of the guide on images in [0, 1] `(N, 3, H, W)`, preprocessed in torch as its image processor
        would ([`GuidePreprocessing`]), summed over guided images."""
        classifier = self.guidance_classifier
        pixels = guide.preprocessing(images).to(next(classifier.parameters()).dtype)  # (N, 3, h, w)
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
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (N, C, h, w), (N, L, D)
        """The conditional UNet pass of a guided step, run with gradients: it serves both the CFG prediction and the
        guidance gradient, so a guided step costs one backward pass of the conditional half, a VAE decode and a guide
        pass more than a plain step (the caller runs the unconditional half without gradients: batching it into the
        graph would double the backward at real sizes). The UNet, VAE and guide weights are frozen meanwhile.
        Returns `(model_output_cond, updated prompt_embeds)`: the raw conditional UNet output (noise, `v` or sample,
        as the scheduler's `prediction_type` says), for the caller's CFG combination."""
        with torch.enable_grad(), frozen_parameters(self.unet, self.vae, self.guidance_classifier):
            text = prompt_embeds.detach().requires_grad_(True)
            model_output = self.predict_noise_branches(latents, t, text, None, au_embeds, au_scale, ("cond",))["cond"]
            sample, alpha_prod_t = variance_preserving_sample(self.scheduler, latents, t)
            prediction_type = self.scheduler.config.prediction_type
            x0_hat = predicted_original_sample(model_output, sample, alpha_prod_t, prediction_type)  # (N, C, h, w)
            if guide.decode_size is not None:
                resized = F.interpolate(x0_hat.float(), size=guide.decode_size, mode="bilinear", antialias=True)
                x0_hat = resized.to(x0_hat.dtype)  # (N, C, h', w'); antialiased resizing has no bf16 CPU kernel
            images = self.vae.decode(x0_hat / self.vae.config.scaling_factor, return_dict=False)[0]
            loss = self.guidance_loss((images.float() / 2 + 0.5).clamp(0, 1), guide)
            grad = torch.autograd.grad(loss, text)[0]  # (N, L, D)
        dims = (-1,) if normalization == "per_token" else (-2, -1)
        step = grad / grad.norm(dim=dims, keepdim=True).clamp_min(1e-12)
        return model_output.detach(), (prompt_embeds - semantic_guidance_scale * step).to(prompt_embeds.dtype)

    def guided_noise_branches(
        self,
        latents: torch.Tensor,  # (N, C, h, w)
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,  # (N, L, D)
        negative_prompt_embeds: torch.Tensor | None,  # (N, L, D), None without CFG
        au_embeds: torch.Tensor | None,  # (N, T, D)
        au_scale: float,
        branches: Sequence[str],
        guide: SemanticGuide,
        semantic_guidance_scale: float,
        normalization: str,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # branch -> (N, C, h, w), (N, L, D)
        """A guided step's branch predictions and updated `prompt_embeds`: `"cond"` from the pass with gradients
        ([`semantic_guidance_step`]), the other `branches` (`"null"` under CFG, `"text"` with AU guidance, with this
        step's text embedding) in one pass without."""
        noise_cond, updated = self.semantic_guidance_step(
            latents, t, prompt_embeds, au_embeds, au_scale, guide, semantic_guidance_scale, normalization
        )
        others = [branch for branch in branches if branch != "cond"]
        predictions = (
            self.predict_noise_branches(latents, t, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale, others)
            if others
            else {}
        )
        return {**predictions, "cond": noise_cond}, updated
