"""AU-conditioned UNet: Stable Diffusion's UNet with decoupled action-unit cross-attention (SynFER stage 2).

Every text cross-attention layer (`attn2`) gets a second key/value projection that reads AU tokens:

    out = to_out( Attn(Q, K_text, V_text) + au_scale * Attn(Q, K_au, V_au) ),
    K_au = W'_k c_au,  V_au = W'_v c_au,  W'_k, W'_v initialised from the text W_k, W_v,

and `c_au` are `num_au_tokens` tokens made from the AU vector by a small MLP with LayerNorm
(IP-Adapter-style decoupled cross-attention, as the SynFER paper describes its AU adapter).

Null AU condition (classifier-free guidance and condition dropout): a learned set of tokens
`au_null_tokens`, initialised at zero. Zero tokens give zero AU keys/values, so at initialisation the null
condition adds exactly nothing; it is a different condition from "all AUs at intensity 0" (a neutral face).

The AU tokens of a sampling run do not change across denoising steps, so neither do `K_au`, `V_au`: inside
[`AUConditionedUNet2DConditionModel.cached_au_attention`] they are computed once per distinct AU-token tensor and
reused by every later step.

The AU branch attends over only `num_au_tokens` keys per head, a shape for which a fused attention kernel spends its
time on bookkeeping (on a CPU, the second `scaled_dot_product_attention` cost as much as a third of the text one). So
`K_au`, `V_au` are kept block-diagonal over heads, `(B, H * T, H * d)`, and the branch is two batched matrix products
on the unsplit query plus a softmax over each head's T scores, its output added in the same product
(`baddbmm`): equal to the separate attention within float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from torch import nn

from ..facs import AUSpace
from ..value_checks import check_int

__all__ = [
    "AUAttnProcessor2_0",
    "AUConditionedUNet2DConditionModel",
    "AUConditioning",
    "AUEncoder",
    "FusedAUAttnProcessor2_0",
    "ModelMixin",
]
# `ModelMixin` is exported because diffusers' pipeline loader looks the base class up in this module
# (model_index.json stores "synfer_diffusers.models.unet_au").

AU_PARAMETER_MARKERS = ("au_encoder.", "au_null_tokens", ".to_k_au.", ".to_v_au.")
"""Substrings that identify the adapter's parameters in a state dict."""

_PLAIN_PROCESSORS = (AttnProcessor, AttnProcessor2_0)


class AUConditioning(NamedTuple):
    """What `attn2` layers receive as `encoder_hidden_states` when AUs condition the UNet.

    A stock attention processor cannot read this tuple and fails loudly instead of silently ignoring AUs.
    """

    text: torch.Tensor  # (B, L, D) text tokens
    au_tokens: torch.Tensor  # (B, T, D) AU tokens
    au_scale: float
    au_key_values: Mapping[Attention, tuple[torch.Tensor, torch.Tensor]] | None = None
    """Each `attn2`'s AU key and value for `au_tokens` as [`au_key_value`] makes them, precomputed; None: computed by
    the processor."""


class AUEncoder(nn.Module):
    """AU vector -> `num_tokens` tokens: Linear -> SiLU -> Linear -> reshape -> LayerNorm."""

    def __init__(self, num_aus: int, num_tokens: int, token_dim: int, hidden_dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.mlp = nn.Sequential(
            nn.Linear(num_aus, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, num_tokens * token_dim)
        )
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, action_units: torch.Tensor) -> torch.Tensor:
        tokens = self.mlp(action_units)  # (B, T * D)
        return self.norm(tokens.view(-1, self.num_tokens, self.token_dim))  # (B, T, D)


class AUAttnProcessor2_0:
    """Scaled-dot-product cross-attention with a decoupled AU branch.

    Reads `attn.to_k_au` / `attn.to_v_au`, which belong to the UNet (so replacing processors never loses
    AU weights). With a plain tensor as `encoder_hidden_states`, or `au_scale == 0`, it computes exactly the
    text-only attention. Supports attention slicing (`slice_size`: the text attention computed `slice_size`
    (batch x head) rows at a time, as diffusers' `SlicedAttnProcessor`, which `enable_attention_slicing` installs on
    the UNet's other layers; the AU branch's scores, `(B, H * T, N)`, are never larger than the query and need no
    slicing); [`FusedAUAttnProcessor2_0`] reads fused key/value projections instead.

    Args:
        slice_size (`int`, *optional*): rows of the flattened (batch x heads) dimension per attention call;
            `None` computes all at once.
    """

    fused = False

    def __init__(self, slice_size: int | None = None):
        self.slice_size = slice_size

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | AUConditioning | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        au_tokens, au_scale, au_key_values = None, 0.0, None
        if isinstance(encoder_hidden_states, AUConditioning):
            encoder_hidden_states, au_tokens, au_scale, au_key_values = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, context_length, _ = context.shape

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.to_q(hidden_states)  # (B, N, inner)
        if self.fused:
            key, value = attn.to_kv(context).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (_split_heads(x, attn.heads, head_dim) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = _merge_heads(_attention(query, key, value, attention_mask, self.slice_size))  # (B, N, H*d)

        if au_tokens is not None and au_scale != 0:
            au_key, au_value = au_key_values[attn] if au_key_values is not None else au_key_value(attn, au_tokens)
            hidden_states = _add_au_attention(
                hidden_states, _merge_heads(query), au_key, au_value, attn.heads, au_scale
            )  # (B, N, H*d)

        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class FusedAUAttnProcessor2_0(AUAttnProcessor2_0):
    """[`AUAttnProcessor2_0`] reading the text key/value from the fused projection `attn.to_kv` that
    `fuse_qkv_projections` builds (what `FusedAttnProcessor2_0` is for the other layers); the AU key/value stay
    separate. `unfuse_qkv_projections` restores the unfused processor, which reads `to_k` / `to_v` again."""

    fused = True


def _split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)  # (B, L, H*d) -> (B, H, L, d)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)  # (B, H, L, d) -> (B, L, H*d)


def au_key_value(attn: Attention, au_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`K_au = W'_k c_au / sqrt(d)`, `V_au = W'_v c_au` of one `attn2` layer, from AU tokens `(B, T, D)`, each
    block-diagonal over heads, `(B, H * T, H * d)`: row `h * T + t` holds head h's token t in columns
    `h * d ... (h + 1) * d` and zeros elsewhere, the form [`_add_au_attention`] multiplies with."""
    heads = attn.heads
    head_dim = attn.to_k_au.out_features // heads
    mask = torch.eye(heads, dtype=au_tokens.dtype, device=au_tokens.device).view(1, heads, 1, heads, 1)

    def block_diagonal(x: torch.Tensor) -> torch.Tensor:
        x = _split_heads(x, heads, head_dim)  # (B, H, T, d)
        return (x.unsqueeze(3) * mask).flatten(1, 2).flatten(2)  # (B, H, T, H, d) -> (B, H*T, H*d)

    return block_diagonal(attn.to_k_au(au_tokens) * head_dim**-0.5), block_diagonal(attn.to_v_au(au_tokens))


def _add_au_attention(
    hidden_states: torch.Tensor,  # (B, N, H*d) text attention output
    query: torch.Tensor,  # (B, N, H*d)
    key: torch.Tensor,  # (B, H*T, H*d) block-diagonal, scaled (`au_key_value`)
    value: torch.Tensor,  # (B, H*T, H*d) block-diagonal
    heads: int,
    scale: float,
) -> torch.Tensor:  # (B, N, H*d)
    """`hidden_states + scale * Attn(Q, K_au, V_au)`, every head at once: the scores of head h's T tokens are rows
    `h * T ... (h + 1) * T` of `K Q^T`, softmaxed over those T rows."""
    batch, length, _ = query.shape
    scores = torch.bmm(key, query.transpose(1, 2))  # (B, H*T, N)
    probs = scores.view(batch, heads, -1, length).softmax(dim=2).view_as(scores)  # over each head's T tokens
    return torch.baddbmm(hidden_states, probs.transpose(1, 2), value, alpha=scale)  # (B, N, H*d)


class _AUKeyValueCache:
    """The AU keys and values of every `attn2` layer for the last few AU-token tensors of one
    [`~AUConditionedUNet2DConditionModel.cached_au_attention`] scope.

    An entry is found by the tokens' values (`torch.equal` against a copy taken when it was made, so tokens changed
    in place miss) and by the identity, version counter and storage of every AU projection weight (so an optimizer
    step, `load_state_dict`, `copy_`, a move to another dtype or device or a swapped parameter misses). A sampling
    call needs at most three entries (`[null; cond]` with CFG, `cond` alone and `null` alone in semantic-guidance
    steps); the oldest is dropped beyond `max_entries`.
    """

    max_entries = 4

    def __init__(self, layers: list[Attention]):
        self.layers = layers
        self.entries: list[tuple[torch.Tensor, list[tuple[torch.Tensor, int, int]], dict]] = []

    def key_values(self, au_tokens: torch.Tensor) -> dict[Attention, tuple[torch.Tensor, torch.Tensor]] | None:
        """Every layer's `(K_au, V_au)` for `au_tokens` `(B, T, D)`, from the cache or computed and stored; None
        where caching does not apply: an AU projection that is not a plain `nn.Linear` (e.g. a LoRA-wrapped one,
        whose output also depends on adapter state), or a gradient that must flow through the keys and values."""
        projections = [proj for attn in self.layers for proj in (attn.to_k_au, attn.to_v_au)]
        if any(type(proj) is not nn.Linear for proj in projections):
            return None
        if torch.is_grad_enabled() and (au_tokens.requires_grad or any(p.weight.requires_grad for p in projections)):
            return None
        weights = [(p.weight, p.weight._version, p.weight.data_ptr()) for p in projections]
        for tokens, entry_weights, key_values in self.entries:
            same_weights = all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(weights, entry_weights))
            same_tokens = (tokens.shape, tokens.dtype, tokens.device) == (au_tokens.shape, au_tokens.dtype,
                                                                          au_tokens.device)  # fmt: skip
            if same_weights and same_tokens and torch.equal(tokens, au_tokens):
                return key_values
        key_values = {attn: au_key_value(attn, au_tokens) for attn in self.layers}
        self.entries = [*self.entries[1 - self.max_entries :], (au_tokens.detach().clone(), weights, key_values)]
        return key_values


def _attention(
    query: torch.Tensor,  # (B, H, N, d)
    key: torch.Tensor,  # (B, H, L, d)
    value: torch.Tensor,  # (B, H, L, d)
    mask: torch.Tensor | None,  # (B, H, N, L) or broadcastable
    slice_size: int | None,
) -> torch.Tensor:  # (B, H, N, d)
    """Scaled dot-product attention, all at once or `slice_size` rows of the flattened (B * H) dimension at a time."""
    if slice_size is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    batch, heads, length, dim = query.shape
    flat = [x.reshape(batch * heads, *x.shape[2:]) for x in (query, key, value)]  # (B * H, ., d)
    flat_mask = None if mask is None else mask.expand(batch, heads, -1, -1).reshape(batch * heads, *mask.shape[2:])
    out = torch.cat(
        [
            F.scaled_dot_product_attention(
                flat[0][i : i + slice_size], flat[1][i : i + slice_size], flat[2][i : i + slice_size],
                attn_mask=None if flat_mask is None else flat_mask[i : i + slice_size],
            )  # fmt: skip
            for i in range(0, batch * heads, slice_size)
        ]
    )
    return out.view(batch, heads, length, dim)


AU_CONFIG_KEYS = ("au_space", "num_au_tokens", "au_encoder_hidden_dim")


def _base_unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A UNet config without the AU adapter's keys (and without diffusers' private `_` keys)."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in AU_CONFIG_KEYS}


class AUConditionedUNet2DConditionModel(UNet2DConditionModel):
    r"""
    A [`~diffusers.UNet2DConditionModel`] with SynFER's AU adapter: an AU encoder and decoupled AU
    cross-attention in every `attn2` layer.

    Takes every argument of `UNet2DConditionModel` plus:

    Args:
        au_space (`dict`, *optional*):
            The AU vocabulary as [`AUSpace.to_config`] (defaults to DISFA-12 intensities). Stored in the config.
        num_au_tokens (`int`, defaults to 4): number of AU tokens the encoder makes.
        au_encoder_hidden_dim (`int`, *optional*): hidden width of the AU encoder MLP (default:
            `cross_attention_dim`).

    Example:

    ```py
    >>> from diffusers import UNet2DConditionModel
    >>> from synfer_diffusers import AUConditionedUNet2DConditionModel, AUSpace

    >>> base = UNet2DConditionModel(cross_attention_dim=768)  # or .from_pretrained(...)
    >>> unet = AUConditionedUNet2DConditionModel.from_unet(base, au_space=AUSpace.disfa12(), num_au_tokens=4)
    >>> aus = unet.au_space.to_tensor({"AU6": 2.5, "AU12": 4.0})  # (1, 12)
    >>> noise_pred = unet(latents, t, text_embeds, action_units=aus, au_scale=1.0).sample
    ```
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int] = 1280,
        transformer_layers_per_block: int | tuple[int] | tuple[tuple] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int]] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int] = 8,
        num_attention_heads: int | tuple[int] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
        au_space: dict[str, Any] | None = None,
        num_au_tokens: int = 4,
        au_encoder_hidden_dim: int | None = None,
    ):
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            center_input_sample=center_input_sample, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift,
            down_block_types=down_block_types, mid_block_type=mid_block_type, up_block_types=up_block_types,
            only_cross_attention=only_cross_attention, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor, dropout=dropout, act_fn=act_fn,
            norm_num_groups=norm_num_groups, norm_eps=norm_eps, cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            reverse_transformer_layers_per_block=reverse_transformer_layers_per_block,
            encoder_hid_dim=encoder_hid_dim, encoder_hid_dim_type=encoder_hid_dim_type,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            dual_cross_attention=dual_cross_attention, use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type, addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim, num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention, resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_skip_time_act=resnet_skip_time_act, resnet_out_scale_factor=resnet_out_scale_factor,
            time_embedding_type=time_embedding_type, time_embedding_dim=time_embedding_dim,
            time_embedding_act_fn=time_embedding_act_fn, timestep_post_act=timestep_post_act,
            time_cond_proj_dim=time_cond_proj_dim, conv_in_kernel=conv_in_kernel, conv_out_kernel=conv_out_kernel,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            attention_type=attention_type, class_embeddings_concat=class_embeddings_concat,
            mid_block_only_cross_attention=mid_block_only_cross_attention, cross_attention_norm=cross_attention_norm,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )  # fmt: skip
        if not isinstance(cross_attention_dim, int):
            raise ValueError(f"`cross_attention_dim` must be one int for AU conditioning, got {cross_attention_dim}.")
        if encoder_hid_dim_type is not None:
            raise ValueError("`encoder_hid_dim_type` must be None: AU tokens take the place of added encoder tokens.")
        check_int("num_au_tokens", num_au_tokens, 1)
        space = AUSpace.from_config(au_space) if au_space is not None else AUSpace.disfa12()
        self.register_to_config(au_space=space.to_config())
        self._au_space = space
        self.au_encoder = AUEncoder(
            space.num_aus, num_au_tokens, cross_attention_dim, au_encoder_hidden_dim or cross_attention_dim
        )
        self.au_null_tokens = nn.Parameter(torch.zeros(num_au_tokens, cross_attention_dim))
        for attn in self._cross_attention_layers():
            attn.to_k_au = nn.Linear(cross_attention_dim, attn.to_k.out_features, bias=False)
            attn.to_v_au = nn.Linear(cross_attention_dim, attn.to_v.out_features, bias=False)
        self.set_attn_processor(AttnProcessor2_0())
        self._au_cache: _AUKeyValueCache | None = None

    @property
    def au_space(self) -> AUSpace:
        return self._au_space

    def _cross_attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention) and m.is_cross_attention]

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        au_space: AUSpace | None = None,
        num_au_tokens: int = 4,
        au_encoder_hidden_dim: int | None = None,
    ) -> AUConditionedUNet2DConditionModel:
        """Wraps a pretrained UNet: copies all its weights and initialises only the AU adapter, with each AU
        key/value projection copied from the text one of its layer (the SynFER / IP-Adapter initialisation)."""
        model = cls.from_config(
            _base_unet_config(unet.config),
            au_space=(au_space or AUSpace.disfa12()).to_config(),
            num_au_tokens=num_au_tokens,
            au_encoder_hidden_dim=au_encoder_hidden_dim,
        )
        base_state = {k: v for k, v in unet.state_dict().items() if not is_au_parameter(k)}
        missing, unexpected = model.load_state_dict(base_state, strict=False)
        not_adapter = [k for k in missing if not is_au_parameter(k)]
        if not_adapter or unexpected:
            raise ValueError(
                f"`unet` does not match its config: missing {not_adapter[:5]}, unexpected {unexpected[:5]}."
            )
        with torch.no_grad():
            for attn in model._cross_attention_layers():
                attn.to_k_au.weight.copy_(attn.to_k.weight)
                attn.to_v_au.weight.copy_(attn.to_v.weight)
        model = model.to(unet.device)
        return model if model.dtype == unet.dtype else model.to(unet.dtype)

    def to_base_unet(self) -> UNet2DConditionModel:
        """The stock `UNet2DConditionModel` with this model's base weights and no AU adapter: the inverse of
        [`~AUConditionedUNet2DConditionModel.from_unet`]. With a frozen base (SynFER stage B), this is the
        text-to-image model the adapter was trained on (the text-only ablation).

        Example:

        ```py
        >>> base = unet.to_base_unet()  # unet: an AUConditionedUNet2DConditionModel
        >>> sorted(set(unet.state_dict()) - set(base.state_dict()))[:1]  # only AU parameters are dropped
        ```
        """
        base = UNet2DConditionModel.from_config(_base_unet_config(self.config))
        base.load_state_dict({k: v for k, v in self.state_dict().items() if not is_au_parameter(k)})
        return base.to(device=self.device, dtype=self.dtype).eval()

    def set_attn_processor(self, processor: Any) -> None:
        """Sets attention processors like the parent class, but keeps the AU path of every `attn2`: a stock
        processor (`AttnProcessor`, `AttnProcessor2_0`, `FusedAttnProcessor2_0`, `SlicedAttnProcessor`) requested
        for a cross-attention layer is replaced by [`AUAttnProcessor2_0`] (with the same slice size); any other
        processor there raises a `ValueError`."""
        names = list(self.attn_processors.keys())
        processors = processor if isinstance(processor, dict) else dict.fromkeys(names, processor)
        kept = {name: _keep_au_path(name, proc) for name, proc in processors.items()}
        super().set_attn_processor(kept)

    def set_attention_slice(self, slice_size: str | int | list[int] | None) -> None:
        """Attention slicing as in the parent class (`enable_attention_slicing` / `disable_attention_slicing` of a
        pipeline call this), which sets `SlicedAttnProcessor` (or, for `None`, the default processor) on every
        attention layer directly; each `attn2` then gets [`AUAttnProcessor2_0`] with the same slice size, so the AU
        path is kept."""
        super().set_attention_slice(slice_size)
        for attn in self._cross_attention_layers():
            attn.set_processor(AUAttnProcessor2_0(slice_size=getattr(attn.processor, "slice_size", None)))

    def set_default_attn_processor(self) -> None:
        """Plain attention for self-attention layers; [`AUAttnProcessor2_0`] for cross-attention layers."""
        self.set_attn_processor(AttnProcessor())

    @contextlib.contextmanager
    def cached_au_attention(self) -> Iterator[None]:
        """Within this context (a sampling loop), each `attn2`'s AU keys and values are computed once per distinct
        AU-token tensor and reused by later calls, instead of at every denoising step; outputs are unchanged. The
        cache is keyed on the tokens' values and the AU weights (see `_AUKeyValueCache`), so it cannot go stale; it
        is skipped where a gradient must flow to the AU projections or tokens (training), and dropped on exit.
        Nested scopes share the outer one's cache.

        Example:

        ```py
        >>> with unet.cached_au_attention():
        ...     for t in scheduler.timesteps:
        ...         noise = unet(latents, t, text_embeds, au_embeds=au_tokens).sample  # K_au, V_au from step 1
        ```
        """
        if self._au_cache is not None:
            yield
            return
        self._au_cache = _AUKeyValueCache(self._cross_attention_layers())
        try:
            yield
        finally:
            self._au_cache = None

    def trainable_au_parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters (AU encoder, null tokens, per-layer AU key/value), for adapter-only training."""
        return [p for name, p in self.named_parameters() if is_au_parameter(name)]

    def freeze_base(self) -> None:
        """Freezes every parameter except the AU adapter's."""
        for name, param in self.named_parameters():
            param.requires_grad_(is_au_parameter(name))

    def au_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the adapter's tensors (e.g. to save next to a LoRA file, which holds LoRA keys only)."""
        return {k: v for k, v in self.state_dict().items() if is_au_parameter(k)}

    def encode_action_units(
        self, action_units: torch.Tensor | None, batch_size: int | None = None, drop_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """AU vectors `(B, num_aus)` -> AU tokens `(B, T, D)`. `None` gives the null condition for `batch_size`
        rows; `drop_mask` `(B,)` (True = drop) swaps rows for the null condition (condition dropout)."""
        null = self.au_null_tokens[None]  # (1, T, D)
        if action_units is None:
            if batch_size is None:
                raise ValueError("`batch_size` is required when `action_units` is None.")
            return null.expand(batch_size, -1, -1)
        action_units = self.au_space.validate_tensor(action_units).to(device=null.device, dtype=null.dtype)
        tokens = self.au_encoder(action_units)
        if drop_mask is not None:
            tokens = torch.where(drop_mask.to(tokens.device).view(-1, 1, 1), null, tokens)
        return tokens

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        action_units: torch.Tensor | None = None,
        au_embeds: torch.Tensor | None = None,
        au_scale: float = 1.0,
        **kwargs: Any,
    ) -> UNet2DConditionOutput | tuple:
        r"""
        Same as [`UNet2DConditionModel.forward`], plus:

        Args:
            action_units (`torch.Tensor` of shape `(batch, num_aus)`, *optional*): AU values in this UNet's AU space.
            au_embeds (`torch.Tensor` of shape `(batch, num_au_tokens, cross_attention_dim)`, *optional*):
                precomputed AU tokens (from [`encode_action_units`]); takes precedence over `action_units`.
            au_scale (`float`, defaults to 1.0): weight of the AU branch; 0 gives exactly the base UNet.

        With neither `action_units` nor `au_embeds`, the null AU condition is used.
        """
        if au_scale != 0:
            if au_embeds is None:
                au_embeds = self.encode_action_units(action_units, batch_size=sample.shape[0])
            au_embeds = au_embeds.to(encoder_hidden_states.dtype)
            key_values = self._au_cache.key_values(au_embeds) if self._au_cache is not None else None
            encoder_hidden_states = AUConditioning(encoder_hidden_states, au_embeds, float(au_scale), key_values)
        return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)


def is_au_parameter(name: str) -> bool:
    """True for state-dict keys of the AU adapter."""
    return any(marker in name or name.startswith(marker) for marker in AU_PARAMETER_MARKERS)


def _keep_au_path(name: str, processor: Any) -> Any:
    if not name.endswith("attn2.processor") or isinstance(processor, AUAttnProcessor2_0):
        return processor
    if type(processor) in _PLAIN_PROCESSORS:
        return AUAttnProcessor2_0()
    if type(processor) is FusedAttnProcessor2_0:
        return FusedAUAttnProcessor2_0()
    if type(processor) is SlicedAttnProcessor:
        return AUAttnProcessor2_0(slice_size=processor.slice_size)
    raise ValueError(
        f"Processor {type(processor).__name__} for {name} would drop the AU path; use AUAttnProcessor2_0 "
        "(or a subclass) for cross-attention layers."
    )
