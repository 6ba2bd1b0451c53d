"""Conditioning augmentations: FineFace's AU smoothing and IP-Adapter's condition dropout."""

from __future__ import annotations

import torch

from ..facs import AUSpace
from .determinism import StepRandom


def smooth_action_units(
    action_units: torch.Tensor,  # (B, num_aus)
    au_space: AUSpace,
    random: StepRandom,
    noise_std: float = 0.2,
    noise_prob: float = 1.0,
    round_prob: float = 0.1,
) -> torch.Tensor:  # (B, num_aus)
    """FineFace's AU "distribution smoothing": each row gets Gaussian noise (std `noise_std`) with probability
    `noise_prob`, or, with probability `round_prob`, is rounded to whole intensity levels instead; the result is
    clipped to the space's range. Training on nearby values makes the adapter respond smoothly to intensities
    it never saw exactly (FineFace reports better AU consistency)."""
    batch = action_units.shape[0]
    noise = random.randn(action_units.shape) * noise_std
    add_noise = random.rand((batch,)) < noise_prob
    round_row = random.rand((batch,)) < round_prob
    smoothed = torch.where(add_noise[:, None], action_units + noise.to(action_units), action_units)
    smoothed = torch.where(round_row[:, None].to(action_units.device), action_units.round(), smoothed)
    return smoothed.clamp(0.0, au_space.max_value)


def condition_dropout_masks(
    batch_size: int, random: StepRandom, text_prob: float, au_prob: float = 0.0, both_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:  # (B,) bool each: drop text, drop AUs
    """IP-Adapter's condition dropout: each row independently drops only the text (`text_prob`), only the AUs
    (`au_prob`) or both (`both_prob`), the three events disjoint (their sum must be <= 1). Dropped text is the
    empty prompt; dropped AUs are the UNet's null AU tokens (what classifier-free guidance uses)."""
    if text_prob + au_prob + both_prob > 1.0:
        raise ValueError(f"Condition dropout probabilities sum to {text_prob + au_prob + both_prob} > 1.")
    u = random.rand((batch_size,))
    text_only = u < text_prob
    au_only = (u >= text_prob) & (u < text_prob + au_prob)
    both = (u >= text_prob + au_prob) & (u < text_prob + au_prob + both_prob)
    return text_only | both, au_only | both
