"""How the voters' probabilities become one label distribution per image.

Two rules, selected by `VotingConfig.aggregation`:

- **`"paper"`** (SynFER Sec. 3.3): the weighted mean of the voters' probabilities, image by image. Every voter
  counts the same everywhere, however often it is wrong; with the generation target as one of two voters, a one-hot
  target outweighs any single distribution, so the target is always kept.
- **`"dawid_skene"`** (Dawid & Skene, 1979, "Maximum likelihood estimation of observer error-rates using the EM
  algorithm"): each voter `v` gets a confusion matrix `pi_v[k, l] = P(v votes l | true class k)` and the classes a
  prior `p_k`, both estimated from the set itself by EM, without ground truth. The posterior of image `n` is
  `T[n, k] ~ p_k * prod_v pi_v[k, y_nv] ** w_v` (votes `y_nv` are each voter's argmax; `w_v` its configured weight,
  a tempering of its likelihood, times `classifier_tempering` for every voter but the target). A voter that keeps naming a confusable partner, the target included, loses weight
  exactly on that pair. It needs many images per voter (a whole set, not one batch): `synfer generate` runs it as a
  finalisation pass after the last shard, and `synfer relabel` on a finished set.

Both take `probabilities (N, V, C)` and `present (N, V)` (False where a voter abstains) and return an
[`AggregationResult`].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .config import AGGREGATIONS, TARGET_VOTER

__all__ = ["AGGREGATIONS", "AggregationResult", "aggregate", "dawid_skene", "weighted_mean"]


@dataclass
class AggregationResult:
    """`probabilities (N, C)`: each image's aggregated label distribution; `reliability`: per voter, the estimated
    probability that its vote is right (`None` for the paper's rule, which estimates nothing); `details`: what else
    the rule estimated (Dawid-Skene: `confusion` per voter as nested lists, `class_prior`, `iterations`)."""

    probabilities: torch.Tensor
    reliability: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def weighted_mean(
    probabilities: torch.Tensor,  # (N, V, C)
    present: torch.Tensor,  # (N, V) bool
    weights: torch.Tensor,  # (V,)
) -> AggregationResult:
    """The paper's rule: the weighted mean of the present voters' probabilities, image by image."""
    per_image = weights[None, :] * present.float()  # (N, V)
    total = per_image.sum(1, keepdim=True)  # (N, 1)
    return AggregationResult((per_image[..., None] * probabilities).sum(1) / total)  # (N, C)


def dawid_skene(
    probabilities: torch.Tensor,  # (N, V, C)
    present: torch.Tensor,  # (N, V) bool
    weights: torch.Tensor,  # (V,)
    voter_names: list[str],
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    smoothing: float = 1.0,
) -> AggregationResult:
    """Dawid-Skene EM on the voters' argmax votes, initialised from the paper's weighted mean.

    `smoothing` is a Dirichlet pseudo-count added to every confusion cell and class count (so a voter never gets a
    zero probability for a vote it was not seen to make), plus the same amount on each confusion matrix's diagonal,
    which breaks the label-permutation symmetry of EM toward voters that are better than chance."""
    num_images, num_voters, num_classes = probabilities.shape
    votes = torch.nn.functional.one_hot(probabilities.argmax(-1), num_classes).double()  # (N, V, C)
    votes = votes * present[..., None]  # an abstaining voter contributes nothing
    weights = weights.double()
    posterior = weighted_mean(probabilities.double(), present, weights).probabilities  # (N, C)
    prior = confusion = None
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        # M-step: class prior (C,) and each voter's confusion matrix (V, C_true, C_voted).
        prior = (posterior.sum(0) + smoothing) / (num_images + smoothing * num_classes)
        counts = torch.einsum("nk,nvl->vkl", posterior, votes) + smoothing
        counts = counts + smoothing * torch.eye(num_classes, dtype=counts.dtype)
        confusion = counts / counts.sum(-1, keepdim=True)
        # E-step: log T[n, k] = log p_k + sum_v w_v * log pi_v[k, y_nv].
        log_likelihood = torch.einsum("nvl,vkl->nvk", votes, confusion.log())  # (N, V, C); 0 where absent
        log_posterior = prior.log()[None, :] + (weights[None, :, None] * log_likelihood).sum(1)
        updated = log_posterior.softmax(-1)
        change = (updated - posterior).abs().max().item()
        posterior = updated
        if change < tolerance:
            break
    reliability = torch.einsum("k,vkk->v", prior, confusion)  # P(vote right) under the estimated prior
    return AggregationResult(
        probabilities=posterior.float(),
        reliability={name: float(r) for name, r in zip(voter_names, reliability.tolist())},
        details={
            "confusion": {name: confusion[v].float().tolist() for v, name in enumerate(voter_names)},
            "class_prior": prior.float().tolist(),
            "iterations": iterations,
        },
    )


def aggregate(
    rule: str,
    probabilities: torch.Tensor,  # (N, V, C)
    present: torch.Tensor,  # (N, V) bool
    weights: torch.Tensor,  # (V,)
    voter_names: list[str],
    classifier_tempering: float = 1.0,
) -> AggregationResult:
    """The aggregation `rule` (one of [`AGGREGATIONS`]) of the voters' probabilities; Dawid-Skene multiplies the
    weight of every voter but the target ([`TARGET_VOTER`]) by `classifier_tempering`."""
    if rule == "paper":
        return weighted_mean(probabilities, present, weights)
    if rule == "dawid_skene":
        tempering = torch.tensor([1.0 if name == TARGET_VOTER else classifier_tempering for name in voter_names])
        return dawid_skene(probabilities, present, weights * tempering, voter_names)
    raise ValueError(f"`aggregation` must be one of {list(AGGREGATIONS)}, got {rule!r}.")
