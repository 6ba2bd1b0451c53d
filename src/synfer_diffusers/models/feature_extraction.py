"""Reading a diffusion UNet's internal representations with hooks (SynFER stage 3, FERAnno's inputs).

FERAnno reads two things from one UNet forward pass:

- **decoder feature maps**: the output of every up block, `(B, C_i, H_i, W_i)`, coarse to fine;
- **cross-attention maps**: for every up block with text cross-attention (`attn2`), the attention probabilities
  `softmax(Q K^T / sqrt(d))` of image positions over text tokens, averaged over heads and over the block's
  `attn2` layers, as `(B, L, h, w)` (one spatial map per text token).

Both are taken with PyTorch forward hooks on the stock modules (`up_blocks[i]`, `attn2.to_q`, `attn2.to_k`):
no UNet code is copied and any attention processor that calls `to_q` / `to_k` (the stock ones,
`AUAttnProcessor2_0`) works. The attention probabilities are computed from the recorded queries and keys only when
[`UNetFeatureRecorder.features`] is called, so recording costs nothing but keeping references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

__all__ = ["DecoderLayout", "UNetFeatureRecorder", "UNetFeatures", "decoder_layout"]


@dataclass(frozen=True)
class DecoderLayout:
    """What a UNet's decoder gives FERAnno: channels of each up block's output (coarse to fine) and the number of
    up blocks with text cross-attention (one cross-attention map set each)."""

    feature_channels: tuple[int, ...]
    num_attention_maps: int


def _cross_attention_up_blocks(unet: nn.Module) -> list[nn.Module]:
    return [block for block in unet.up_blocks if getattr(block, "has_cross_attention", False)]


def decoder_layout(unet: UNet2DConditionModel) -> DecoderLayout:
    """The [`DecoderLayout`] of a `UNet2DConditionModel` (or subclass), from its config."""
    if not hasattr(unet, "up_blocks"):
        raise ValueError(f"`unet` must be a UNet2DConditionModel with `up_blocks`, got {type(unet).__name__}.")
    channels = tuple(reversed(unet.config.block_out_channels))  # up block i outputs reversed(block_out_channels)[i]
    return DecoderLayout(feature_channels=channels, num_attention_maps=len(_cross_attention_up_blocks(unet)))


@dataclass
class UNetFeatures:
    """FERAnno's inputs from one UNet forward pass.

    Args:
        decoder: per up block, coarse to fine, `(B, C_i, H_i, W_i)`.
        cross_attention: per cross-attention up block, coarse to fine, `(B, L, h_j, w_j)`: for each of the `L`
            text tokens, where the image attends to it (probabilities over tokens sum to 1 at each position).
    """

    decoder: list[torch.Tensor]
    cross_attention: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.decoder[0].shape[0]

    def select(self, rows: slice | torch.Tensor) -> UNetFeatures:
        """The same features for a subset of the batch, e.g. `slice(n, None)` for the conditional half of a
        classifier-free-guidance batch `[uncond, cond]`."""
        return UNetFeatures([x[rows] for x in self.decoder], [x[rows] for x in self.cross_attention])


class UNetFeatureRecorder:
    r"""
    Records [`UNetFeatures`] during any forward pass of a stock `UNet2DConditionModel` (or
    [`AUConditionedUNet2DConditionModel`]), with hooks that are removed on exit.

    Each UNet forward replaces what the previous one recorded, so inside a denoising loop `features()` after the
    loop gives the features of the final step. Fused QKV projections (`fuse_qkv_projections`) bypass `to_k` and
    are not supported while recording.

    Args:
        unet (`UNet2DConditionModel`): the UNet to read.

    Example:

    ```py
    >>> from synfer_diffusers.models.feature_extraction import UNetFeatureRecorder

    >>> with UNetFeatureRecorder(unet) as recorder:
    ...     unet(latents, timestep, encoder_hidden_states=text_embeds)
    ...     features = recorder.features()  # decoder maps (B, C_i, H_i, W_i), attention maps (B, L, h_j, w_j)
    >>> logits = head(features).logits  # FERAnnoHead
    ```
    """

    def __init__(self, unet: UNet2DConditionModel):
        self.layout = decoder_layout(unet)
        self.unet = unet
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._decoder: dict[int, torch.Tensor] = {}
        self._queries: dict[Attention, torch.Tensor] = {}
        self._keys: dict[Attention, torch.Tensor] = {}
        self._spatial: dict[nn.Module, tuple[int, int]] = {}
        # per cross-attention up block: [(transformer, [its attn2 layers]), ...]
        self._attention_groups = [
            [
                (t, [m for m in t.modules() if isinstance(m, Attention) and m.is_cross_attention])
                for t in block.attentions
            ]
            for block in _cross_attention_up_blocks(unet)
        ]

    def __enter__(self) -> UNetFeatureRecorder:
        if self._handles:
            raise RuntimeError("This UNetFeatureRecorder is already recording.")
        self._handles.append(self.unet.register_forward_pre_hook(lambda module, args: self._clear()))
        for index, block in enumerate(self.unet.up_blocks):
            self._handles.append(block.register_forward_hook(self._store_decoder(index)))
        for group in self._attention_groups:
            for transformer, layers in group:
                self._handles.append(transformer.register_forward_pre_hook(self._store_spatial, with_kwargs=True))
                for attn in layers:
                    self._handles.append(attn.to_q.register_forward_hook(self._store(self._queries, attn)))
                    self._handles.append(attn.to_k.register_forward_hook(self._store(self._keys, attn)))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._clear()

    def _clear(self) -> None:
        for records in (self._decoder, self._queries, self._keys, self._spatial):
            records.clear()

    def _store_decoder(self, index: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._decoder[index] = output

        return hook

    @staticmethod
    def _store(records: dict[Attention, torch.Tensor], attn: Attention):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            records[attn] = output

        return hook

    def _store_spatial(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]  # (B, C, h, w)
        self._spatial[module] = tuple(hidden_states.shape[-2:])

    def features(self) -> UNetFeatures:
        """The features of the latest UNet forward pass inside this context."""
        if len(self._decoder) != len(self.unet.up_blocks):
            raise RuntimeError("No UNet forward pass was recorded: call the UNet inside the `with` block first.")
        decoder = [self._decoder[i] for i in range(len(self.unet.up_blocks))]
        return UNetFeatures(decoder, [self._block_attention(group) for group in self._attention_groups])

    def _block_attention(self, group: list[tuple[nn.Module, list[Attention]]]) -> torch.Tensor:  # (B, L, h, w)
        layers = [attn for _, block_layers in group for attn in block_layers]
        if any(attn not in self._keys for attn in layers):
            raise RuntimeError(
                "A cross-attention layer did not call `to_k` (fused QKV projections?); unfuse them to record "
                "cross-attention maps."
            )
        probs = torch.stack([_attention_probabilities(a, self._queries[a], self._keys[a]) for a in layers]).mean(0)
        height, width = self._spatial[group[0][0]]  # every transformer of a block works at one resolution
        return probs.transpose(1, 2).unflatten(2, (height, width))  # (B, h*w, L) -> (B, L, h, w)


def _attention_probabilities(attn: Attention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`softmax(Q K^T * scale)` of one attention layer, averaged over heads: `(B, N, inner) x (B, L, inner) ->
    (B, N, L)`, in float32."""
    probs = attn.get_attention_scores(attn.head_to_batch_dim(query.float()), attn.head_to_batch_dim(key.float()))
    return probs.unflatten(0, (-1, attn.heads)).mean(1)  # (B * H, N, L) -> (B, N, L)
