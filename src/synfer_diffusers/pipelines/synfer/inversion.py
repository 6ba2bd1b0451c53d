"""Inversion of real faces into the sampler's noise, shared by SynFER's layout initialisation (start denoising from
the inversion of a real face instead of noise, which keeps a natural face layout; SynFER stage 2, sampling) and
expression editing (`editing.py`).

One path for both: encode the images with the VAE, DDIM-invert the latents under one condition (text embedding, AU
tokens at the call's `au_scale`) up to the noise level where the denoising starts, and scale the result into the
sampler's own space (`x_0 + sigma eps` for Euler-type samplers, see `prediction.py`).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .prediction import inversion_levels, predicted_noise, scheduler_sample

LayoutImageInput = PIL.Image.Image | np.ndarray | torch.Tensor


class InversionMixin:
    """Image inversion for a pipeline with `vae`, `unet`, `scheduler`, `image_processor`, `encode_prompt`, `au_space`
    and `cross_attention_kwargs`."""

    def preprocess_layout_images(
        self,
        layout_image: LayoutImageInput | list[LayoutImageInput],
        batch_size: int,
        num_images_per_prompt: int,
        height: int,
        width: int,
        field: str = "layout_image",
    ) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1]
        """One image for all images, one per prompt, or one per image; each exactly `height` x `width` (errors name
        `field`)."""
        images = list(layout_image) if isinstance(layout_image, list) else [layout_image]
        num_images = batch_size * num_images_per_prompt
        if len(images) not in (1, batch_size, num_images):
            raise ValueError(
                f"`{field}` must be 1, {batch_size} (one per prompt) or {num_images} (one per image) images, "
                f"got {len(images)}."
            )
        tensors = [self.image_processor.preprocess(image, height=None, width=None) for image in images]
        for i, tensor in enumerate(tensors):
            if tuple(tensor.shape[-2:]) != (height, width):
                raise ValueError(f"`{field}[{i}]` is {tuple(tensor.shape[-2:])}, expected ({height}, {width}).")
        stacked = torch.cat(tensors)
        repeats = num_images // stacked.shape[0]
        return stacked.repeat_interleave(repeats, dim=0)

    def encode_image_latents(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1] -> (N, C, h, w)
        """The VAE posterior means of `images`, scaled by the VAE's `scaling_factor` (the latents the UNet sees)."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(vae_dtype)).latent_dist.mean * self.vae.config.scaling_factor

    def invert_images(
        self,
        images: torch.Tensor,  # (N, 3, H, W) in [-1, 1]
        timesteps: torch.Tensor,  # the timesteps to be denoised ([`get_timesteps`])
        text_embeds: torch.Tensor,  # (N, L, D): the condition inverted under
        au_embeds: torch.Tensor | None,  # (N, T, D) AU tokens (null or not); None for a UNet without AU adapter
        au_scale: float,
        start_alpha_cumprod: float = 1.0,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (N, C, h, w): the sampler's state at `timesteps[0]`
        """Encodes `images` ([`encode_image_latents`]), inverts them under one condition ([`ddim_invert`], which
        fills `trajectory` when given) to the noise level where `timesteps` start, and scales them into the sampler's
        space, so that any scheduler continues from them as from its own state."""
        latents = self.encode_image_latents(images)
        au_kwargs = {"au_embeds": au_embeds, "au_scale": au_scale} if au_embeds is not None else {}
        latents = self.ddim_invert(latents, timesteps, text_embeds, au_kwargs, start_alpha_cumprod, trajectory)
        levels = inversion_levels(self.scheduler, timesteps.to(latents.device))[1]
        return scheduler_sample(self.scheduler, latents, levels[0]) if len(levels) else latents  # no step: clean

    def invert_layout(
        self, images: torch.Tensor, timesteps: torch.Tensor, au_scale: float = 1.0
    ) -> torch.Tensor:  # (N, 3, H, W) -> (N, C, h, w)
        """SynFER's layout initialisation: [`invert_images`] under the null condition (prompt `""`, the null AU
        tokens at `au_scale`, so that `au_scale=0` is exactly the base UNet) without CFG."""
        num_images = images.shape[0]
        null_text = self.encode_prompt([""], images.device, num_images, False)[0]  # (N, L, D)
        null_au = self.unet.encode_action_units(None, batch_size=num_images) if self.au_space is not None else None
        return self.invert_images(images, timesteps, null_text, null_au, au_scale)

    def ddim_invert(
        self,
        latents: torch.Tensor,  # (N, C, h, w): clean latents
        timesteps: torch.Tensor,  # the denoising timesteps, descending
        text_embeds: torch.Tensor,  # (N, L, D): the condition inverted under
        au_kwargs: dict[str, torch.Tensor | float],  # `au_embeds` (N, T, D) and `au_scale`; {} without AUs
        start_alpha_cumprod: float = 1.0,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (N, C, h, w): variance-preserving noisy latents where `timesteps` start
        """DDIM inversion (eta = 0) of clean latents to the noise level where `timesteps` start, under one condition,
        without CFG: `x_next = sqrt(abar_next) * (x - sqrt(1 - abar) eps) / sqrt(abar) + sqrt(1 - abar_next) * eps`
        through the levels the denoising steps start from ([`inversion_levels`]: one per step, also for second-order
        samplers), starting from the clean latent at `abar = start_alpha_cumprod` (1, or the level where the
        scheduler's last step ends, so that denoising retraces the inversion), with `eps = eps(x, t_next)` read from
        the UNet's output for the scheduler's `prediction_type` (epsilon, v_prediction or sample) at `t_next`. A given
        `trajectory` list receives the latents `(N, C, h, w)` at each step's level, in denoising order (the first is
        the returned one)."""
        starts, levels = inversion_levels(self.scheduler, timesteps.to(latents.device))
        abar = torch.as_tensor(start_alpha_cumprod, device=latents.device, dtype=levels.dtype)
        latents = latents.to(text_embeds.dtype)
        prediction_type = self.scheduler.config.prediction_type
        for t, abar_next in zip(starts.flip(0), levels.flip(0)):
            output = self.unet(
                latents, t, encoder_hidden_states=text_embeds, cross_attention_kwargs=self.cross_attention_kwargs,
                return_dict=False, **au_kwargs,
            )[0]  # fmt: skip
            eps = predicted_noise(output, latents, abar_next, prediction_type)
            x0 = (latents - (1 - abar).sqrt() * eps) / abar.sqrt()
            latents = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
            abar = abar_next
            if trajectory is not None:
                trajectory.insert(0, latents)
        return latents
