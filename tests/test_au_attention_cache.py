"""Cached AU attention (`AUConditionedUNet2DConditionModel.cached_au_attention`): each `attn2`'s AU keys and values are
computed once per pipeline call instead of once per denoising step, with outputs bit-identical to the uncached path
under every diffusers helper that rewires attention, and recomputed whenever the tokens or the AU weights change.

The uncached reference is the same pipeline with the scope replaced by a no-op; every comparison also counts the
`to_k_au` calls, so that a cache that is never used cannot pass."""

import contextlib
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import pytest
import torch

from synfer_diffusers import AUConditionedUNet2DConditionModel, AUSpace, SynFERPipeline
from synfer_diffusers.tiny import make_tiny_base_unet

STEPS = 3


@pytest.fixture()
def pipe(tiny_components):
    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _count_au_projections(unet) -> Iterator[list[int]]:
    """Counts calls of every `to_k_au` (one per layer per computation of the AU keys)."""
    calls = [0]
    layers = [m for m in unet.modules() if hasattr(m, "to_k_au")]
    handles = [attn.to_k_au.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for attn in layers]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
    calls[0] //= len(layers)


def _generate(pipe: SynFERPipeline, cached: bool, **kwargs) -> tuple[np.ndarray, int]:
    """Images of a fixed call and how many times each layer computed its AU keys."""
    scope = {} if cached else {"cached_au_attention": contextlib.nullcontext}
    with mock.patch.multiple(pipe.unet, **scope) if scope else contextlib.nullcontext(), \
            _count_au_projections(pipe.unet) as calls:  # fmt: skip
        images = pipe(
            prompt="a photo of a person", action_units={"AU6": 2.5, "AU12": 4.0}, num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(0), output_type="np", **{"guidance_scale": 6.0, **kwargs},
        ).images  # fmt: skip
    return images, calls[0]


def _lora(pipe: SynFERPipeline) -> None:
    from peft import LoraConfig

    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))  # fmt: skip


SETUPS: dict[str, tuple[Callable[[SynFERPipeline], None], dict]] = {
    "cfg": (lambda pipe: None, {}),
    "cfg_off": (lambda pipe: None, {"guidance_scale": 1.0}),
    "single_image": (lambda pipe: None, {"num_images_per_prompt": 1}),
    "two_images_au_scale": (lambda pipe: None, {"num_images_per_prompt": 2, "au_scale": 0.6}),
    "attention_slicing": (lambda pipe: pipe.enable_attention_slicing(1), {}),
    "fused_qkv": (lambda pipe: pipe.fuse_qkv_projections(), {}),
    "lora": (_lora, {"cross_attention_kwargs": {"scale": 0.5}}),
    "freeu": (lambda pipe: pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4), {}),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@torch.no_grad()
def test_cached_equals_uncached_and_computes_keys_once(pipe, setup):
    prepare, kwargs = SETUPS[setup]
    prepare(pipe)
    uncached, uncached_calls = _generate(pipe, cached=False, **kwargs)
    cached, cached_calls = _generate(pipe, cached=True, **kwargs)
    np.testing.assert_array_equal(cached, uncached)
    assert (uncached_calls, cached_calls) == (STEPS, 1)


def test_semantic_guidance_steps_are_cached(tiny_components):
    """Guided steps run the conditional branch (with a gradient to the text embedding, none to the frozen AU weights)
    and the unconditional one as separate UNet calls. Here 2 of the 3 steps take a gradient and the last does not
    (batch `[null; cond]`): 5 uncached computations, 3 distinct token tensors computed once each."""
    from test_semantic_guidance import make_guide

    guide, processor = make_guide()
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"expression": "happy", "semantic_guidance_scale": 1.0, "semantic_guidance_window": (0.0, 1.0),
              "semantic_guidance_interval": 1, "guidance_label_mapping": {"Happiness": "happy"}}  # fmt: skip
    uncached, uncached_calls = _generate(pipe, cached=False, **kwargs)
    cached, cached_calls = _generate(pipe, cached=True, **kwargs)
    np.testing.assert_array_equal(cached, uncached)
    assert (uncached_calls, cached_calls) == (5, 3)


@pytest.fixture()
def unet():
    return AUConditionedUNet2DConditionModel.from_unet(make_tiny_base_unet(seed=0), AUSpace.disfa12()).eval()


def _unet_inputs(unet, batch=2):
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    text = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g)
    tokens = unet.encode_action_units(torch.rand(batch, 12, generator=g) * 5).detach()
    return sample, torch.tensor(500), text, tokens


@torch.no_grad()
def test_cache_misses_when_tokens_or_weights_change(unet):
    sample, t, text, tokens = _unet_inputs(unet)
    attn = next(m for m in unet.modules() if hasattr(m, "to_k_au"))

    def call(au_tokens):
        return unet(sample, t, text, au_embeds=au_tokens).sample

    with unet.cached_au_attention(), _count_au_projections(unet) as calls:
        first = call(tokens)
        assert torch.equal(call(tokens.clone()), first)  # equal values: a hit
        other = tokens.flip(0)
        assert torch.equal(call(other), _uncached(unet, call, other))  # other tokens: recomputed
        tokens.mul_(1.5)  # the same tensor changed in place
        assert torch.equal(call(tokens), _uncached(unet, call, tokens))
        attn.to_v_au.weight.mul_(2.0)  # weights changed in place (an optimizer step, load_state_dict)
        assert torch.equal(call(tokens), _uncached(unet, call, tokens))
        attn.to_k_au.weight = torch.nn.Parameter(attn.to_k_au.weight * 0.5, requires_grad=False)  # swapped
        assert torch.equal(call(tokens), _uncached(unet, call, tokens))
    assert calls[0] == 5 + 4  # 5 computations in the scope (one hit), 4 uncached references
    with _count_au_projections(unet) as calls:
        call(tokens)
    assert calls[0] == 1  # outside the scope: computed at every call


def _uncached(unet, call, tokens):
    with mock.patch.object(unet, "_au_cache", None):
        return call(tokens)


def test_training_is_not_cached(unet):
    """With gradients on, the keys and values are recomputed at every call, so the AU projections and encoder get
    the same gradients as without the scope."""
    unet.freeze_base()
    sample, t, text, _ = _unet_inputs(unet)
    action_units = torch.rand(2, 12, generator=torch.Generator().manual_seed(1)) * 5

    def gradients(scope):
        unet.zero_grad(set_to_none=True)
        with scope, _count_au_projections(unet) as calls:
            for _ in range(2):
                unet(sample, t, text, action_units=action_units).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}, calls[0]

    expected, expected_calls = gradients(contextlib.nullcontext())
    actual, calls = gradients(unet.cached_au_attention())
    assert calls == expected_calls == 2
    assert any("to_k_au" in n for n in actual) and any("au_encoder" in n for n in actual)
    assert expected.keys() == actual.keys() and all(torch.equal(expected[n], actual[n]) for n in expected)
