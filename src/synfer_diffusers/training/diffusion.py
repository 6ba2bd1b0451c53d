"""Diffusion training pieces: VAE latents, forward noising, the epsilon / v loss (optional min-SNR weighting) and
the UNet LoRA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import compute_snr
from peft import LoraConfig
from torch import nn

from .config import DiffusionTrainingConfig
from .data import normalize_images
from .determinism import StepRandom

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""UNet attention projections that get LoRA layers (as diffusers' LoRA training scripts); the AU projections
`to_k_au` / `to_v_au` are not matched."""


@torch.no_grad()
def encode_latents(vae: nn.Module, pixel_values: torch.Tensor, random: StepRandom) -> torch.Tensor:
    """Images in [-1, 1] `(B, 3, H, W)` -> scaled latents `(B, C, H/f, W/f)`, sampled from the posterior."""
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    latents = sample_posterior(vae.encode(pixel_values).latent_dist, random)
    return latents.float() * vae.config.scaling_factor


def training_latents(batch: dict[str, torch.Tensor], vae: nn.Module, random: StepRandom) -> torch.Tensor:
    """Scaled latents `(B, C, h, w)` of a training batch: sampled from its cached posterior (`--cache_latents`)
    or from the VAE's encoding of its `pixel_values`, with the same draws either way."""
    if "latent_mean" in batch:
        mean = batch["latent_mean"].to(vae.device)
        latents = mean + batch["latent_std"].to(mean) * random.randn(mean.shape).to(mean)
        return latents * vae.config.scaling_factor
    return encode_latents(vae, normalize_images(batch["pixel_values"]), random)


def sample_posterior(latent_dist: DiagonalGaussianDistribution, random: StepRandom) -> torch.Tensor:
    """`mean + std * eps` with `eps` from `random` (what `latent_dist.sample(generator)` computes, drawn for the
    global batch)."""
    eps = random.randn(latent_dist.mean.shape).to(latent_dist.mean)
    return latent_dist.mean + latent_dist.std * eps


def add_training_noise(
    latents: torch.Tensor, scheduler: DDPMScheduler, random: StepRandom, noise_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward diffusion at uniformly drawn timesteps (DDPM eq. 4): `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`.
    With `noise_offset` (offset noise, as diffusers' examples) `eps` gets `noise_offset * N(0, 1)` added per sample
    and channel `(B, C, 1, 1)`, so the model learns to shift a latent's mean (very dark or bright images).
    Returns `(x_t, eps, t)`."""
    noise = random.randn(latents.shape).to(latents)
    timesteps = random.randint(scheduler.config.num_train_timesteps, latents.shape[0])
    timesteps = timesteps.to(latents.device)
    if noise_offset:  # drawn after the timesteps: without an offset every other draw is unchanged
        noise = noise + noise_offset * random.randn((*latents.shape[:2], 1, 1)).to(latents)
    return scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def training_noise_scheduler(scheduler_config: dict, prediction_type: str | None = None) -> DDPMScheduler:
    """The DDPM training schedule of a pipeline's scheduler config, predicting `prediction_type` (`--prediction_type`,
    as diffusers' examples set it on the noise scheduler) or, unset, what the config predicts."""
    override = {"prediction_type": prediction_type} if prediction_type else {}
    return DDPMScheduler.from_config(scheduler_config, **override)


def apply_unet_memory_options(unet: nn.Module, config: DiffusionTrainingConfig) -> None:
    """`--gradient_checkpointing` and `--enable_xformers_memory_efficient_attention` on the UNet to train."""
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()


def diffusion_loss(
    model_pred: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: DDPMScheduler,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE to the scheduler's target (epsilon, or v for `v_prediction` models), optionally with min-SNR-gamma
    weighting (Hang et al. 2023, eq. 9: `min(SNR_t, gamma) / SNR_t` for epsilon, `/ (SNR_t + 1)` for v)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"Unsupported scheduler `prediction_type` {prediction_type!r}; use epsilon or v_prediction.")
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float())
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def add_unet_lora(unet: nn.Module, rank: int, alpha: float | None = None) -> None:
    """Adds peft LoRA layers (gaussian init, zero output at start) to the UNet's attention projections. peft
    marks only the LoRA weights trainable."""
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGET_MODULES)
    )
    unet.add_adapter(config)
