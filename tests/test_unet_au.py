import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from synfer_diffusers import AUAttnProcessor2_0, AUConditionedUNet2DConditionModel, AUSpace
from synfer_diffusers.models.unet_au import AUConditioning
from synfer_diffusers.tiny import make_tiny_base_unet


class _CustomProcessor(AttnProcessor2_0):
    pass


@pytest.fixture()
def base_and_adapter():
    base = make_tiny_base_unet(seed=0)
    unet = AUConditionedUNet2DConditionModel.from_unet(base, au_space=AUSpace.disfa12(), num_au_tokens=4).eval()
    return base.eval(), unet


def _inputs(unet, batch=2):
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    text = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g)
    aus = torch.rand(batch, 12, generator=g) * 5
    return sample, torch.tensor(500), text, aus


@torch.no_grad()
def test_from_unet_copies_base_and_initialises_au_kv_from_text(base_and_adapter):
    base, unet = base_and_adapter
    base_state = base.state_dict()
    for key, value in unet.state_dict().items():
        if key in base_state:
            assert torch.equal(value, base_state[key]), key
    attn = next(m for m in unet.modules() if getattr(m, "is_cross_attention", False))
    assert torch.equal(attn.to_k_au.weight, attn.to_k.weight) and torch.equal(attn.to_v_au.weight, attn.to_v.weight)
    assert all(isinstance(p, AUAttnProcessor2_0) for n, p in unet.attn_processors.items() if "attn2" in n)


@torch.no_grad()
def test_to_base_unet_inverts_from_unet(base_and_adapter):
    base, unet = base_and_adapter
    with torch.no_grad():
        unet.up_blocks[-1].resnets[0].conv1.weight.add_(0.5)  # a trained base differs from the one wrapped
    recovered = unet.to_base_unet()
    assert type(recovered) is UNet2DConditionModel and "au_space" not in recovered.config
    assert set(recovered.state_dict()) == set(base.state_dict())
    sample, t, text, aus = _inputs(unet)
    expected = unet(sample, t, text, action_units=aus, au_scale=0.0).sample
    assert torch.equal(recovered(sample, t, text).sample, expected)
    assert not torch.allclose(base(sample, t, text).sample, expected)


@torch.no_grad()
def test_au_scale_zero_equals_base_and_aus_matter(base_and_adapter):
    base, unet = base_and_adapter
    sample, t, text, aus = _inputs(unet)
    reference = base(sample, t, text).sample
    assert torch.equal(unet(sample, t, text, action_units=aus, au_scale=0.0).sample, reference)
    with_aus = unet(sample, t, text, action_units=aus).sample
    other_aus = unet(sample, t, text, action_units=aus.flip(0)).sample
    assert not torch.allclose(with_aus, reference)
    assert (with_aus - other_aus).abs().max() > 1e-4
    # the zero-initialised null condition adds nothing, unlike "all AUs at 0"
    assert torch.equal(unet(sample, t, text).sample, reference)
    assert not torch.allclose(unet(sample, t, text, action_units=torch.zeros(2, 12)).sample, reference)


def test_only_adapter_parameters_get_gradients(base_and_adapter):
    _, unet = base_and_adapter
    unet.freeze_base()
    sample, t, text, aus = _inputs(unet)
    unet(sample, t, text, action_units=aus).sample.square().mean().backward()
    adapter = {id(p) for p in unet.trainable_au_parameters()}
    for name, param in unet.named_parameters():
        if id(param) in adapter:
            assert param.requires_grad, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert unet.au_encoder.mlp[0].weight.grad.abs().sum() > 0
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.trainable_au_parameters()) > 3


@torch.no_grad()
def test_save_load_round_trip_keeps_au_space(tmp_path, base_and_adapter):
    _, unet = base_and_adapter
    space = AUSpace(("AU1", "AU12"), "occurrence")
    small = AUConditionedUNet2DConditionModel.from_unet(unet, au_space=space, num_au_tokens=3).eval()
    small.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = AUConditionedUNet2DConditionModel.from_pretrained(tmp_path).eval()
    assert loaded.au_space == space and loaded.config.num_au_tokens == 3
    sample, t, text, _ = _inputs(small)
    aus = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(
        loaded(sample, t, text, action_units=aus).sample, small(sample, t, text, action_units=aus).sample
    )


@torch.no_grad()
def test_resetting_processors_keeps_the_au_path_or_raises(base_and_adapter):
    _, unet = base_and_adapter
    sample, t, text, aus = _inputs(unet)
    expected = unet(sample, t, text, action_units=aus).sample
    unet.set_default_attn_processor()
    assert torch.allclose(unet(sample, t, text, action_units=aus).sample, expected, atol=1e-5)
    unet.set_attn_processor(AttnProcessor())
    assert all(isinstance(p, AUAttnProcessor2_0) for n, p in unet.attn_processors.items() if "attn2" in n)
    unet.fuse_qkv_projections()
    assert torch.allclose(unet(sample, t, text, action_units=aus).sample, expected, atol=1e-5)
    unet.unfuse_qkv_projections()
    with pytest.raises(ValueError, match="would drop the AU path"):
        unet.set_attn_processor(_CustomProcessor())


def test_stock_processor_cannot_silently_ignore_aus(base_and_adapter):
    _, unet = base_and_adapter
    sample, t, text, aus = _inputs(unet)
    # bypass the guard on purpose: a stock processor sees the AU tuple and fails loudly
    UNet2DConditionModel.set_attn_processor(unet, AttnProcessor2_0())
    # the AU conditioning itself reaches the stock processor and is refused there (not some unrelated attribute)
    with pytest.raises(AttributeError, match="'AUConditioning' object has no attribute 'shape'"):
        unet(sample, t, text, action_units=aus)


def test_bad_configs():
    base = make_tiny_base_unet(seed=0)
    with pytest.raises(ValueError, match="num_au_tokens"):
        AUConditionedUNet2DConditionModel.from_unet(base, num_au_tokens=0)
    unet = AUConditionedUNet2DConditionModel.from_unet(base)
    sample, t, text, _ = _inputs(unet)
    with pytest.raises(ValueError, match=r"\(batch, 12\)"):
        unet(sample, t, text, action_units=torch.zeros(2, 5))


@torch.no_grad()
def test_sd15_size_builds_and_runs_one_forward():
    # The whole SD 1.5-size UNet on the meta device: its parameter count and one forward through every block at SD
    # 1.5's shapes (64x64 latent, 77 text tokens of 768) with the AU path, without 3.4 GB of random weights (19 s).
    with torch.device("meta"):
        unet = AUConditionedUNet2DConditionModel(cross_attention_dim=768, num_au_tokens=4).eval()
    assert (
        859e6
        < sum(p.numel() for p in unet.parameters()) - sum(p.numel() for p in unet.trainable_au_parameters())
        < 860e6
    )
    assert all(isinstance(p, AUAttnProcessor2_0) for n, p in unet.attn_processors.items() if "attn2" in n)
    aus = AUSpace.disfa12().to_tensor({"AU6": 2.5, "AU12": 4.0})  # validated on its values, so not on meta
    sample, text = torch.randn(1, 4, 64, 64, device="meta"), torch.randn(1, 77, 768, device="meta")
    assert unet(sample, 999, text, action_units=aus).sample.shape == (1, 4, 64, 64)

    # Real numbers at SD 1.5's first level (320 channels, 8 heads of 40 attending to 77 text and 4 AU tokens of 768)
    # on a 16x16 latent, float32 (CPUs without AMX / AVX512-BF16, as this project's machines, emulate bf16 matmuls
    # many times slower).
    torch.manual_seed(0)
    level = AUConditionedUNet2DConditionModel(
        cross_attention_dim=768, num_au_tokens=4, block_out_channels=(320,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 768, generator=g)
    out = level(sample, 999, text, action_units=aus).sample
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    assert not torch.equal(out, level(sample, 999, text, action_units=torch.zeros_like(aus)).sample)  # AUs reach it


@torch.no_grad()
@pytest.mark.parametrize("heads", [1, 3, 8])
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("slice_size", [None, 2])
def test_au_branch_equals_the_decoupled_attention_formula(heads, dtype, atol, slice_size):
    # The processor's block-diagonal AU branch against the formula written out head by head:
    # to_out(Attn(Q, K_text, V_text) + s * Attn(Q, K_au, V_au)), each row with its own AU tokens.
    torch.manual_seed(heads)
    attn = Attention(query_dim=24, cross_attention_dim=16, heads=heads, dim_head=8).to(dtype).eval()
    attn.to_k_au = torch.nn.Linear(16, heads * 8, bias=False).to(dtype)
    attn.to_v_au = torch.nn.Linear(16, heads * 8, bias=False).to(dtype)
    attn.set_processor(AUAttnProcessor2_0(slice_size=slice_size))
    x, text, tokens = torch.randn(3, 10, 24, dtype=dtype), torch.randn(3, 7, 16, dtype=dtype), torch.randn(3, 4, 16, dtype=dtype)

    def split(t):  # (B, L, H*d) -> (B, H, L, d)
        return t.view(3, -1, heads, 8).transpose(1, 2)

    q = split(attn.to_q(x))
    text_out = F.scaled_dot_product_attention(q, split(attn.to_k(text)), split(attn.to_v(text)))
    au_out = F.scaled_dot_product_attention(q, split(attn.to_k_au(tokens)), split(attn.to_v_au(tokens)))
    expected = attn.to_out[0]((text_out + 0.7 * au_out).transpose(1, 2).reshape(3, 10, heads * 8))
    actual = attn(x, AUConditioning(text, tokens, 0.7))
    assert actual.shape == expected.shape and actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=atol)
    assert not torch.allclose(actual.float(), attn(x, text).float(), atol=atol, rtol=atol)  # the AU branch is there
