"""Mutual self-attention for expression edits (MasaCtrl, Cao et al., ICCV 2023, arXiv 2304.08465, Sec. 3.2): in some
denoising steps and self-attention layers, the edited image's queries attend to the *source's* keys and values
instead of its own, `Attention(Q_edit, K_source, V_source)`, so that the content those layers carry (the person, the
background) is read from the source while the queries, shaped by the target condition, place it (the expression).

The source's keys and values come from its reconstruction pass: at each shared step the UNet runs once on the source's
DDIM-inversion latent of that step's noise level (the trajectory the inversion recorded), under the condition it was
inverted under, without guidance (the pass a perfect reconstruction would make). [`MutualSelfAttnProcessor`] wraps a
layer's own processor: it records the hidden states that layer's `to_k` / `to_v` read in the source pass, and hands them
to the same processor as `encoder_hidden_states` in the edit's passes (each guidance branch sees its image's source), so
the attention arithmetic stays the processor's own (SDPA, slicing, the AU path of `attn2` untouched).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ...value_checks import check_int
from .options import check_window
from .semantic_guidance import semantic_guidance_steps

_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def self_attention_layers(unet: torch.nn.Module) -> list[str]:
    """The processor names of the UNet's self-attention layers (`attn1`) in forward order: encoder, middle block,
    decoder (7 in the embedded default, 16 in Stable Diffusion 1.5)."""
    names = [name for name in unet.attn_processors if name.endswith("attn1.processor")]

    def position(name: str) -> tuple[int, ...]:
        parts = name.split(".")
        return (_BLOCK_ORDER.get(parts[0], len(_BLOCK_ORDER)), *(int(p) for p in parts if p.isdigit()))

    return sorted(names, key=position)


def default_start_layer(unet: torch.nn.Module) -> int:
    """The edit's default first shared layer ([`~options.DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW`]): the decoder's
    first self-attention layer (3 in the embedded default, 7 in Stable Diffusion 1.5), or the last layer of a UNet
    whose decoder has none, so that the default is valid for every UNet."""
    layers = self_attention_layers(unet)
    return next((i for i, name in enumerate(layers) if name.startswith("up_blocks.")), len(layers) - 1)


def check_mutual_self_attention_inputs(
    unet: torch.nn.Module, window: tuple[float, float] | None, start_layer: int | None
) -> None:
    """Raises a `ValueError` naming `mutual_self_attention_window` or `mutual_self_attention_start_layer` (`None`:
    [`default_start_layer`])."""
    if window is not None:
        check_window("mutual_self_attention_window", window)
    if start_layer is not None:
        check_int("mutual_self_attention_start_layer", start_layer, 0, len(self_attention_layers(unet)) - 1)


@dataclass
class _SharedHiddenStates:
    """What the wrapped layers share: the mode (`"off"`, `"record"` the source pass, `"share"` with the edit's
    passes) and each layer's recorded source hidden states `(N, L, C)`."""

    mode: str = "off"
    hidden_states: dict[str, torch.Tensor] = field(default_factory=dict)


class MutualSelfAttnProcessor:
    """Wraps a self-attention layer's processor for [`MutualSelfAttention`]: in `"record"` mode it keeps the layer's
    input (what `to_k` and `to_v` read), in `"share"` mode it passes the recorded source input as
    `encoder_hidden_states`, tiled over the call's guidance branches (`B = branches x N`, each branch in image order),
    so that the queries attend to the source's keys and values; `"off"`, it is the wrapped processor."""

    def __init__(self, processor: Any, layer: str, shared: _SharedHiddenStates):
        self.processor = processor
        self.layer = layer
        self.shared = shared

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,  # (B, L, C)
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.shared.mode == "record":
            self.shared.hidden_states[self.layer] = hidden_states
        elif self.shared.mode == "share":
            source = self.shared.hidden_states[self.layer]  # (N, L, C)
            encoder_hidden_states = source.repeat(hidden_states.shape[0] // source.shape[0], 1, 1)
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


class MutualSelfAttention:
    """
    The source branch of a mutual self-attention edit ([`~SynFERPipeline.edit`] with `mutual_self_attention_window`).

    Args:
        unet: the pipeline's UNet.
        trajectory (`torch.Tensor` of shape `(S, N, C, h, w)`): the source latents at the noise level each of the `S`
            denoising steps starts from, variance-preserving (the UNet's input), in denoising order.
        timesteps (`torch.Tensor` of shape `(S,)`): each step's first timestep.
        unet_kwargs (`dict`): the source condition, as keyword arguments of the UNet (`encoder_hidden_states`, AU
            tokens, `cross_attention_kwargs`).
        window (`tuple[float, float]`): the shared steps, as fractions of the `S` steps (`semantic_guidance_steps`'s
            rule): `(0, 0.5)` shares the first half.
        start_layer (`int`): the first shared self-attention layer in forward order ([`self_attention_layers`]).
        order (`int`): the scheduler's order: a second-order step's two model calls share the step's keys and values.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        trajectory: torch.Tensor,
        timesteps: torch.Tensor,
        unet_kwargs: dict[str, Any],
        window: tuple[float, float],
        start_layer: int,
        order: int = 1,
    ):
        self.unet = unet
        self.trajectory = trajectory
        self.timesteps = timesteps
        self.unet_kwargs = unet_kwargs
        self.steps = semantic_guidance_steps(len(timesteps), window)
        self.layers = self_attention_layers(unet)[start_layer:]
        self.order = order
        self.shared = _SharedHiddenStates()

    @contextlib.contextmanager
    def attached(self) -> Iterator[MutualSelfAttention]:
        """Wraps the shared layers' processors for the duration (the UNet's own processors are restored on exit)."""
        original = self.unet.attn_processors
        wrapped = {name: MutualSelfAttnProcessor(original[name], name, self.shared) for name in self.layers}
        self.unet.set_attn_processor({**original, **wrapped})
        try:
            yield self
        finally:
            self.unet.set_attn_processor(original)
            self.shared.hidden_states.clear()

    def before_step(self, index: int) -> None:
        """Called before the model output of entry `index` of the denoising timesteps: in a shared step, runs the
        source pass at the step's first entry (recording each shared layer's input) and switches the layers to
        sharing; elsewhere switches them off."""
        step = index // self.order
        if step not in self.steps:
            self.shared.mode = "off"
            return
        if index % self.order == 0:
            self.shared.mode = "record"
            self.unet(self.trajectory[step], self.timesteps[step], return_dict=False, **self.unet_kwargs)
        self.shared.mode = "share"
