"""FERAnnoHead: expression logits from a diffusion UNet's decoder features and cross-attention maps (SynFER stage 3).

FERAnno (SynFER, arXiv 2410.09865, Sec. 3.3) brings an image to a minimal noise level (t ~ 1), runs the UNet once
and reads two branches; this head turns them into expression logits:

1. **Feature branch**: each decoder map `(B, C_i, H_i, W_i)` -> 1x1 conv to `hidden_dim` -> adaptive average pool
   to `tokens_per_side`^2 positions -> tokens `(B, S * g^2, D)` with a learned position and scale embedding.
2. **Attention branch**: the cross-attention maps `(B, L, h_j, w_j)` of the `A` cross-attention up blocks are
   pooled to `g x g` and concatenated per text token -> `(B, L, A * g^2)` -> LayerNorm + Linear -> tokens
   `(B, L, D)`. One token per text token, so any prompt length works and the head does not depend on which
   word sits at which position.
3. **Fusion** [choice: the paper gives no sizes]: `num_fusion_layers` bidirectional cross-attention blocks; in each,
   feature tokens attend to attention tokens and attention tokens to feature tokens (pre-norm, residual), then
   each stream has an MLP.
4. **Classifier**: mean-pool each stream, concatenate `(B, 2D)`, LayerNorm, dropout, Linear -> logits over the
   head's label set (`id2label`, as a transformers classifier; default [`EXPRESSIONS`], any set works, e.g.
   AffectNet-8 with "contempt"). Voting maps them onto `EXPRESSIONS` by name as for external classifiers
   ([`FERAnnoHead.expression_index_map`]).

The head is configured by the UNet it reads ([`FERAnnoHead.from_unet`]): the channels of its up blocks and the
number of up blocks with cross-attention. It also records the noise level and prompt it was trained with, which
[`FERAnnoPipeline`] uses by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.utils import BaseOutput
from torch import nn

from ..facs import EXPRESSIONS, map_classifier_labels
from ..value_checks import check_int, check_number
from .feature_extraction import UNetFeatures, decoder_layout

__all__ = ["FERAnnoHead", "FERAnnoHeadOutput", "ModelMixin"]
# `ModelMixin` is exported because diffusers' pipeline loader looks the base class up in this module
# (model_index.json stores "synfer_diffusers.models.feranno").


@dataclass
class FERAnnoHeadOutput(BaseOutput):
    """
    Args:
        logits (`torch.Tensor` of shape `(batch, num_labels)`): unnormalised scores in the head's `id2label` order.
    """

    logits: torch.Tensor


class BidirectionalCrossAttention(nn.Module):
    """One fusion block: `a <- a + Attn(a, b)`, `b <- b + Attn(b, a)` (both from the same inputs), then an MLP on
    each stream. Pre-norm, residual."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.a_to_b = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.b_to_a = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.mlp_a, self.mlp_b = _mlp(dim, dropout), _mlp(dim, dropout)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, Na, D), (B, Nb, D)
        na, nb = self.norm_a(a), self.norm_b(b)
        a = a + self.a_to_b(na, nb, nb, need_weights=False)[0]
        b = b + self.b_to_a(nb, na, na, need_weights=False)[0]
        return a + self.mlp_a(a), b + self.mlp_b(b)


def _mlp(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
    )


class FERAnnoHead(ModelMixin, ConfigMixin):
    r"""
    FERAnno's classifier on UNet features: feature and attention branches, bidirectional cross-attention fusion,
    pooling and a linear layer over the head's label set (`id2label`).

    Args:
        feature_channels (`tuple[int, ...]`): channels of the UNet's up-block outputs, coarse to fine (see
            [`~synfer_diffusers.models.feature_extraction.decoder_layout`]).
        num_attention_maps (`int`): number of up blocks with text cross-attention.
        hidden_dim (`int`, defaults to 256): token width.
        tokens_per_side (`int`, defaults to 8): each map is pooled to `tokens_per_side`^2 positions.
        num_heads (`int`, defaults to 8): attention heads of the fusion blocks (must divide `hidden_dim`).
        num_fusion_layers (`int`, defaults to 1): bidirectional cross-attention blocks.
        dropout (`float`, defaults to 0.1): dropout in the fusion blocks and before the linear layer.
        timestep (`int`, defaults to 1): diffusion timestep at which the features are read (the paper's t ~ 1).
        prompt (`str`, defaults to `""`): prompt of the UNet pass. The empty prompt with the null AU condition is
            exactly the unconditional branch of classifier-free guidance, so in-loop labelling can reuse that branch.
        id2label (`dict[int, str]`, *optional*): the label of each output, as in a transformers classifier's config
            (ids `0..n-1`); defaults to [`EXPRESSIONS`] order, which is also what configs without it load as.
        label2id (`dict[str, int]`, *optional*): its inverse; derived from `id2label` when not given.

    Example:

    ```py
    >>> from synfer_diffusers import FERAnnoHead
    >>> from synfer_diffusers.models.feature_extraction import UNetFeatureRecorder

    >>> head = FERAnnoHead.from_unet(unet)  # configured by the UNet it reads
    >>> with UNetFeatureRecorder(unet) as recorder:
    ...     unet(noisy_latents, head.config.timestep, encoder_hidden_states=empty_prompt_embeds)
    ...     probabilities = head(recorder.features()).logits.softmax(-1)  # (B, num_labels) over head.labels
    ```
    """

    @register_to_config
    def __init__(
        self,
        feature_channels: tuple[int, ...],
        num_attention_maps: int,
        hidden_dim: int = 256,
        tokens_per_side: int = 8,
        num_heads: int = 8,
        num_fusion_layers: int = 1,
        dropout: float = 0.1,
        timestep: int = 1,
        prompt: str = "",
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
    ):
        super().__init__()
        id2label, label2id = _label_maps(id2label, label2id)
        self.register_to_config(id2label=id2label, label2id=label2id)
        if not feature_channels or any(not isinstance(c, int) or c < 1 for c in feature_channels):
            raise ValueError(
                f"`feature_channels` must be a non-empty list of positive ints, got {feature_channels!r}."
            )
        for name, value in (("num_attention_maps", num_attention_maps), ("num_fusion_layers", num_fusion_layers),
                            ("tokens_per_side", tokens_per_side)):  # fmt: skip
            check_int(name, value, 1)
        if not isinstance(hidden_dim, int) or hidden_dim < 1 or hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` must be a positive multiple of `num_heads` ({num_heads}), got {hidden_dim!r}."
            )
        check_number("dropout", dropout, 0, 1, open_maximum=True)
        check_int("timestep", timestep, 0)
        grid = tokens_per_side**2
        self.feature_proj = nn.ModuleList(nn.Conv2d(c, hidden_dim, kernel_size=1) for c in feature_channels)
        self.feature_norm = nn.LayerNorm(hidden_dim)
        self.position_embedding = nn.Parameter(torch.randn(grid, hidden_dim) * 0.02)
        self.scale_embedding = nn.Parameter(torch.randn(len(feature_channels), hidden_dim) * 0.02)
        self.attention_proj = nn.Sequential(
            nn.LayerNorm(num_attention_maps * grid), nn.Linear(num_attention_maps * grid, hidden_dim)
        )
        self.fusion = nn.ModuleList(
            BidirectionalCrossAttention(hidden_dim, num_heads, dropout) for _ in range(num_fusion_layers)
        )
        self.classifier = nn.Sequential(
            nn.LayerNorm(2 * hidden_dim), nn.Dropout(dropout), nn.Linear(2 * hidden_dim, len(id2label))
        )

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, **kwargs) -> FERAnnoHead:
        """A new head for `unet`'s decoder layout; `kwargs` set the other config fields (`hidden_dim`, ...)."""
        layout = decoder_layout(unet)
        return cls(feature_channels=layout.feature_channels, num_attention_maps=layout.num_attention_maps, **kwargs)

    @property
    def labels(self) -> list[str]:
        """The head's label names in output order."""
        return [self.config.id2label[i] for i in range(len(self.config.id2label))]

    def expression_index_map(self, label_mapping: Mapping[str, str | None] | None = None) -> list[int | None]:
        """For each output, its index in [`EXPRESSIONS`] by name, exactly as for external classifiers
        ([`~synfer_diffusers.facs.map_classifier_labels`]): `label_mapping` renames labels, `None` drops an output
        (e.g. `{"contempt": None}` for AffectNet-8); unmappable labels raise a `ValueError` naming
        `feranno_label_mapping`. [`~synfer_diffusers.facs.classifier_expression_probabilities`] applies it."""
        return map_classifier_labels(self.config.id2label, label_mapping, field="feranno_label_mapping")

    def check_unet(self, unet: UNet2DConditionModel) -> None:
        """Raises a `ValueError` naming the field if `unet`'s decoder does not give the features this head reads."""
        layout = decoder_layout(unet)
        for name in ("feature_channels", "num_attention_maps"):
            expected, found = getattr(self.config, name), getattr(layout, name)
            if _as_tuple(expected) != _as_tuple(found):
                raise ValueError(
                    f"`head` does not match the UNet: the head's `{name}` is {expected} but the UNet's decoder gives "
                    f"{found}. Train a head for this UNet (`FERAnnoHead.from_unet`)."
                )

    def _feature_tokens(self, maps: list[torch.Tensor]) -> torch.Tensor:  # (B, S * g^2, D)
        g = self.config.tokens_per_side
        tokens = []
        for scale, (proj, x) in enumerate(zip(self.feature_proj, maps)):
            x = F.adaptive_avg_pool2d(proj(x.to(self.dtype)), g)  # (B, D, g, g)
            tokens.append(x.flatten(2).transpose(1, 2) + self.position_embedding + self.scale_embedding[scale])
        return self.feature_norm(torch.cat(tokens, dim=1))

    def _attention_tokens(self, maps: list[torch.Tensor]) -> torch.Tensor:  # (B, L, D)
        g = self.config.tokens_per_side
        pooled = [F.adaptive_avg_pool2d(m.to(self.dtype), g).flatten(2) for m in maps]  # (B, L, g^2) each
        return self.attention_proj(torch.cat(pooled, dim=-1))  # (B, L, A * g^2) -> (B, L, D)

    def forward(self, features: UNetFeatures, return_dict: bool = True) -> FERAnnoHeadOutput | tuple:
        r"""
        Args:
            features ([`~synfer_diffusers.models.feature_extraction.UNetFeatures`]): decoder maps and
                cross-attention maps of one UNet pass, as a `UNetFeatureRecorder` gives them.
            return_dict (`bool`, defaults to True): return a [`FERAnnoHeadOutput`] instead of a tuple.

        Returns:
            [`FERAnnoHeadOutput`] or `(logits,)`, logits `(B, num_labels)`.
        """
        self._check_features(features)
        a = self._feature_tokens(features.decoder)
        b = self._attention_tokens(features.cross_attention)
        for block in self.fusion:
            a, b = block(a, b)
        logits = self.classifier(torch.cat([a.mean(1), b.mean(1)], dim=-1))  # (B, 2D) -> (B, num_labels)
        return FERAnnoHeadOutput(logits=logits) if return_dict else (logits,)

    def _check_features(self, features: UNetFeatures) -> None:
        channels = tuple(x.shape[1] for x in features.decoder)
        if channels != _as_tuple(self.config.feature_channels):
            raise ValueError(
                f"`features.decoder` have channels {channels}, the head expects {tuple(self.config.feature_channels)}."
            )
        if len(features.cross_attention) != self.config.num_attention_maps:
            raise ValueError(
                f"`features.cross_attention` has {len(features.cross_attention)} maps, the head expects "
                f"{self.config.num_attention_maps}."
            )


def _label_maps(
    id2label: Mapping[int | str, str] | None, label2id: Mapping[str, int | str] | None
) -> tuple[dict[int, str], dict[str, int]]:
    """`id2label` with int keys `0..n-1` (JSON stores them as strings) and a consistent `label2id`; configs
    without them get [`EXPRESSIONS`]."""
    if id2label is None:
        id2label = dict(enumerate(EXPRESSIONS))
    try:
        id2label = {int(i): str(name) for i, name in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"`id2label` must map ids 0..n-1 to label names, got {id2label!r}.") from None
    if sorted(id2label) != list(range(len(id2label))) or len(id2label) < 2:
        raise ValueError(f"`id2label` must have the ids 0..n-1 (n >= 2), got {sorted(id2label)}.")
    if len(set(id2label.values())) != len(id2label):
        raise ValueError(f"`id2label` names must be unique, got {list(id2label.values())}.")
    expected = {name: i for i, name in id2label.items()}
    if label2id is not None and {str(k): int(v) for k, v in label2id.items()} != expected:
        raise ValueError(f"`label2id` {dict(label2id)} is not the inverse of `id2label` {id2label}.")
    return id2label, expected


def _as_tuple(value: int | list | tuple) -> int | tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else value
