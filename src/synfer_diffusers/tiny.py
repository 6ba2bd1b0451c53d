"""Tiny SynFER components built in code: no downloads, deterministic per seed, fast on a CPU.

They have Stable Diffusion's structure at toy width (a 2-level `AutoencoderKL` that halves the resolution, a
2-layer 32-wide CLIP text encoder, a (32, 64) UNet with cross-attention and the AU adapter, SD's DDIM
schedule), so tests exercise the real code paths in well under a second per sample. The UNet's `sample_size`
is the latent side; images are `2 * sample_size` pixels on a side (`vae_scale_factor` 2).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .facs import AUSpace
from .models.unet_au import AUConditionedUNet2DConditionModel
from .tokenization import tiny_clip_tokenizer

TINY_CROSS_ATTENTION_DIM = 32


def make_tiny_base_unet(seed: int = 0, sample_size: int = 8, cross_attention_dim: int = TINY_CROSS_ATTENTION_DIM):
    """A plain [`~diffusers.UNet2DConditionModel`] with blocks (32, 64), one layer per block, cross-attention on
    the lower level and in the middle block. `sample_size` is the latent side."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )


def make_tiny_vae(seed: int = 0, sample_size: int = 16) -> AutoencoderKL:
    """A 2-level [`~diffusers.AutoencoderKL`] (blocks (32, 64)): RGB `sample_size` pixels -> 4 latent channels at
    half the resolution."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
    )


def make_tiny_text_encoder(seed: int = 0, tokenizer=None) -> CLIPTextModel:
    """A 2-layer, 32-wide [`~transformers.CLIPTextModel`] whose vocabulary and special ids match `tokenizer`
    (default: [`~synfer_diffusers.tokenization.tiny_clip_tokenizer`])."""
    tokenizer = tokenizer if tokenizer is not None else tiny_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_CROSS_ATTENTION_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def make_tiny_scheduler() -> DDIMScheduler:
    """Stable Diffusion's DDIM schedule; `clip_sample=False` because the model works on latents."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def make_tiny_components(
    seed: int = 0,
    au_space: AUSpace | dict | None = None,
    num_au_tokens: int = 2,
    sample_size: int = 8,
) -> dict[str, Any]:
    r"""
    Builds the five components of a [`SynFERPipeline`] at toy size, in code.

    Args:
        seed (`int`, defaults to 0): seeds every module's initialisation; the same seed gives identical weights.
        au_space ([`AUSpace`], *optional*): the UNet's AU vocabulary (default: DISFA-12 intensities).
        num_au_tokens (`int`, defaults to 2): AU tokens made by the UNet's AU encoder.
        sample_size (`int`, defaults to 8): latent side; images are `2 * sample_size` pixels on a side.

    Returns:
        `dict`: `vae`, `text_encoder`, `tokenizer`, `unet` ([`AUConditionedUNet2DConditionModel`]) and
        `scheduler` ([`~diffusers.DDIMScheduler`]), all in eval mode on the CPU.

    Example:

    ```py
    >>> import torch
    >>> from synfer_diffusers import SynFERPipeline
    >>> from synfer_diffusers.tiny import make_tiny_components

    >>> pipe = SynFERPipeline(**make_tiny_components(seed=0))
    >>> out = pipe(prompt="a photo of a face", expression="happy", num_inference_steps=2,
    ...            generator=torch.Generator().manual_seed(0))  # 16x16 images from random weights
    ```
    """
    if not isinstance(sample_size, int) or sample_size < 4 or sample_size % 2:
        raise ValueError(f"`sample_size` must be an even int >= 4 (the latent side), got {sample_size!r}.")
    tokenizer = tiny_clip_tokenizer()
    text_encoder = make_tiny_text_encoder(seed, tokenizer)
    vae = make_tiny_vae(seed, sample_size=2 * sample_size).eval()
    base_unet = make_tiny_base_unet(seed, sample_size=sample_size)
    torch.manual_seed(seed)
    unet = AUConditionedUNet2DConditionModel.from_unet(
        base_unet, au_space=AUSpace.from_config(au_space or AUSpace.disfa12()), num_au_tokens=num_au_tokens
    ).eval()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": make_tiny_scheduler(),
    }


__all__ = [
    "make_tiny_base_unet",
    "make_tiny_components",
    "make_tiny_scheduler",
    "make_tiny_text_encoder",
    "make_tiny_vae",
]
