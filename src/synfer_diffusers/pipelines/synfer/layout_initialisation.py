"""SynFER's layout initialisation: start denoising from the DDIM inversion of a real face instead of noise, which keeps
a natural face layout (SynFER stage 2, sampling; full vs partial inversion is `layout_strength`)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .prediction import predicted_noise

LayoutImageInput = PIL.Image.Image | np.ndarray | torch.Tensor


class LayoutInitialisationMixin:
    """Layout initialisation for a pipeline with `vae`, `unet`, `scheduler`, `image_processor`, `encode_prompt`,
    `au_space` and `cross_attention_kwargs`."""

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

    def invert_layout(self, images: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:  # (N, C, h, w)
        """DDIM inversion ([`ddim_invert`]) of images to the noise level of `timesteps[0]` under the null condition
        (prompt `""`, null AU tokens) without CFG."""
        latents = self.encode_image_latents(images)
        null_text = self.encode_prompt([""], latents.device, latents.shape[0], False)[0]  # (N, L, D)
        au_kwargs = {}
        if self.au_space is not None:
            au_kwargs = {"au_embeds": self.unet.encode_action_units(None, batch_size=latents.shape[0])}
        return self.ddim_invert(latents, timesteps, null_text, au_kwargs)

    def ddim_invert(
        self,
        latents: torch.Tensor,  # (N, C, h, w): clean latents
        timesteps: torch.Tensor,  # the denoising timesteps, descending
        text_embeds: torch.Tensor,  # (N, L, D): the condition inverted under
        au_kwargs: dict[str, torch.Tensor | float],  # `au_embeds` (N, T, D) and optionally `au_scale`; {} without AUs
        start_alpha_cumprod: float = 1.0,
    ) -> torch.Tensor:  # (N, C, h, w): noisy latents at `timesteps[0]`
        """DDIM inversion (eta = 0) of clean latents to the noise level of `timesteps[0]` under one condition,
        without CFG: `x_next = sqrt(abar_next) * (x - sqrt(1 - abar) eps) / sqrt(abar) + sqrt(1 - abar_next) * eps`,
        starting from the clean latent at `abar = start_alpha_cumprod` (1, or the level where the scheduler's last step
        ends, so that denoising retraces the inversion), with `eps = eps(x, t_next)` read from the UNet's output for
        the scheduler's `prediction_type` (epsilon, v_prediction or sample) at the noise level of `t_next`."""
        alphas = self.scheduler.alphas_cumprod.to(latents.device)
        abar = torch.as_tensor(start_alpha_cumprod, device=latents.device, dtype=alphas.dtype)
        latents = latents.to(text_embeds.dtype)
        prediction_type = self.scheduler.config.prediction_type
        for t in timesteps.flip(0):
            output = self.unet(
                latents, t, encoder_hidden_states=text_embeds, cross_attention_kwargs=self.cross_attention_kwargs,
                return_dict=False, **au_kwargs,
            )[0]  # fmt: skip
            abar_next = alphas[t.long()]
            eps = predicted_noise(output, latents, abar_next, prediction_type)
            x0 = (latents - (1 - abar).sqrt() * eps) / abar.sqrt()
            latents = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
            abar = abar_next
        return latents
