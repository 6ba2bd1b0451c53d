"""The AU path of `SynFERPipeline` under each diffusers helper that rewires attention or decoding.

diffusers' own tests (`test_pipeline_conformance.py`) only check that a helper leaves the output nearly unchanged
(tolerances up to 1e-2), never that the AUs still act, and do not try a LoRA scale or weights changed after
`unfuse_qkv_projections`. Every test here generates with `action_units` and `au_scale=1` and checks both that the
helper leaves the output as it was (1e-5, 1e-4 for fused projections) and that the output still differs from the
`au_scale=0` (text-only) one, i.e. that the AU cross-attention branch still acts.
"""

from unittest import mock

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.tiny import make_tiny_components

PROMPT = "a photo of a person"
ACTION_UNITS = {"AU6": 2.5, "AU12": 4.0}  # cheek raiser + lip corner puller (a smile)
MIN_EFFECT = 1e-2
"""Smallest max-abs pixel change counted as an effect (of the AUs, a LoRA or its scale; 0.1-0.4 on the tiny parts)."""


@pytest.fixture()
def pipe(tiny_components):
    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: SynFERPipeline, au_scale: float = 1.0, **kwargs) -> np.ndarray:  # (N, H, W, 3)
    """`ACTION_UNITS` at `au_scale`, same prompt and seed on every call (2 steps, CFG 6.0 as the conformance tests)."""
    kwargs.setdefault("output_type", "np")
    return pipe(
        prompt=PROMPT, action_units=ACTION_UNITS, au_scale=au_scale, num_inference_steps=2, guidance_scale=6.0,
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).images  # fmt: skip


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def _assert_close(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    diff = _max_diff(actual, expected)
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol:g}"


def _assert_aus_act(images: np.ndarray, text_only: np.ndarray) -> None:
    diff = _max_diff(images, text_only)
    assert diff > MIN_EFFECT, f"output as at au_scale=0 (max abs difference {diff:.3g}): the AU branch is gone"


def _scale_key_value_weights(pipe: SynFERPipeline, factor: float) -> None:
    """Multiplies `to_k` / `to_v` of every UNet attention layer by `factor`, as training or a LoRA changes them."""
    with torch.no_grad():
        for module in pipe.unet.modules():
            if isinstance(module, Attention):
                module.to_k.weight.mul_(factor)
                module.to_v.weight.mul_(factor)


def test_attention_slicing_keeps_the_au_path(pipe):
    """Guards `AUConditionedUNet2DConditionModel.set_attention_slice`: diffusers' `enable_attention_slicing` puts
    `SlicedAttnProcessor`, which has no AU branch, on every layer. If the AU processor were not put back on `attn2`,
    the sliced output would equal the `au_scale=0` one; if it ignored `slice_size`, the layers would not be sliced.
    `disable_attention_slicing` must then give the unsliced output again."""
    unsliced, text_only = _generate(pipe), _generate(pipe, au_scale=0.0)

    pipe.enable_attention_slicing(1)
    assert all(getattr(proc, "slice_size", None) == 1 for proc in pipe.unet.attn_processors.values())
    sliced = _generate(pipe)
    _assert_close(sliced, unsliced, 1e-5)
    _assert_aus_act(sliced, text_only)

    pipe.disable_attention_slicing()
    assert all(getattr(proc, "slice_size", None) is None for proc in pipe.unet.attn_processors.values())
    restored = _generate(pipe)
    _assert_close(restored, unsliced, 1e-5)
    _assert_aus_act(restored, text_only)


def test_fused_qkv_projections_keep_the_au_path(pipe):
    """Guards `AUConditionedUNet2DConditionModel.set_attn_processor`: `fuse_qkv_projections` sets
    `FusedAttnProcessor2_0`, which has no AU branch, on every layer. If `attn2` kept it, the fused output would equal
    the `au_scale=0` one; if the AU processor misread the fused `to_kv`, it would differ from the unfused output.
    `unfuse_qkv_projections` must then give the unfused output again."""
    unfused, text_only = _generate(pipe), _generate(pipe, au_scale=0.0)

    pipe.fuse_qkv_projections()
    assert all(module.fused_projections for module in pipe.unet.modules() if isinstance(module, Attention))
    fused = _generate(pipe)
    _assert_close(fused, unfused, 1e-4)
    _assert_aus_act(fused, text_only)

    pipe.unfuse_qkv_projections()
    restored = _generate(pipe)
    _assert_close(restored, unfused, 1e-4)
    _assert_aus_act(restored, text_only)


def test_unfused_qkv_projections_read_the_unfused_weights(pipe):
    """Guards that `unfuse_qkv_projections` really unfuses the AU layers: afterwards every layer must compute from
    `to_k` / `to_v` again, as the stock pipeline's do, so changing them (training, loading a LoRA) acts. If the AU
    processor kept reading the `to_kv` copy made by `fuse_qkv_projections`, the change would be lost in `attn2` and
    the output would differ from that of a pipeline that was never fused, given the same change."""
    never_fused = SynFERPipeline(**make_tiny_components(seed=0))  # the same weights as `pipe`
    never_fused.set_progress_bar_config(disable=True)
    pipe.fuse_qkv_projections()
    pipe.unfuse_qkv_projections()

    _scale_key_value_weights(pipe, 1.5)
    _scale_key_value_weights(never_fused, 1.5)
    _assert_close(_generate(pipe), _generate(never_fused), 1e-5)


def test_vae_tiling_keeps_the_au_path(pipe):
    """Guards that VAE tiling changes the decode only: with `pipe.vae.enable_tiling()` the images must be the tiled
    decode of the latents sampled (with AUs) before tiling, and still differ from the tiled `au_scale=0` images.
    32-pixel images are used so that the latents (16) exceed the tiny VAE's latent tile (8) and are really tiled."""
    size = 32
    latents = _generate(pipe, height=size, width=size, output_type="latent")  # (1, 4, 16, 16)

    pipe.vae.enable_tiling()
    with mock.patch.object(pipe.vae, "tiled_decode", wraps=pipe.vae.tiled_decode) as tiled_decode:
        tiled = _generate(pipe, height=size, width=size)
    assert tiled_decode.call_count == 1
    with torch.no_grad():
        expected = pipe.decode_latents(latents, "np")
    _assert_close(tiled, expected, 1e-5)
    _assert_aus_act(tiled, _generate(pipe, au_scale=0.0, height=size, width=size))


def test_vae_slicing_keeps_the_au_path(pipe):
    """Guards that VAE slicing changes the decode only: with `pipe.vae.enable_slicing()` a batch of two images with
    AUs is decoded one image at a time, equals the unsliced batch and still differs, image by image, from the
    `au_scale=0` batch."""
    unsliced = _generate(pipe, num_images_per_prompt=2)
    text_only = _generate(pipe, au_scale=0.0, num_images_per_prompt=2)

    pipe.vae.enable_slicing()
    with mock.patch.object(pipe.vae, "_decode", wraps=pipe.vae._decode) as decode:
        sliced = _generate(pipe, num_images_per_prompt=2)
    assert [call.args[0].shape[0] for call in decode.call_args_list] == [1, 1]
    _assert_close(sliced, unsliced, 1e-5)
    for image, text_only_image in zip(sliced, text_only):
        _assert_aus_act(image, text_only_image)


def test_lora_scale_keeps_the_au_path(pipe):
    """Guards `cross_attention_kwargs={"scale": s}` with a LoRA loaded: the UNet must apply `s` to the LoRA layers
    (scale 0.5 differs from 1.0, scale 0 gives the output without the LoRA) while the AU processors, which take no
    `scale`, keep their branch (scale 0.5 with AUs differs from scale 0.5 at `au_scale=0`). A LoRA like
    `tests/test_pipeline_synfer.py::test_load_lora_weights`'s, on the text projections only (not `to_k_au`)."""
    from peft import LoraConfig

    without_lora = _generate(pipe)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))  # fmt: skip
    full = _generate(pipe, cross_attention_kwargs={"scale": 1.0})
    half = _generate(pipe, cross_attention_kwargs={"scale": 0.5})

    assert _max_diff(full, without_lora) > MIN_EFFECT
    assert _max_diff(half, full) > MIN_EFFECT
    _assert_close(_generate(pipe, cross_attention_kwargs={"scale": 0.0}), without_lora, 1e-5)
    _assert_aus_act(half, _generate(pipe, au_scale=0.0, cross_attention_kwargs={"scale": 0.5}))
