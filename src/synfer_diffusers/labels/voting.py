"""Label rectification by ensemble voting (SynFER stage 3).

SynFER labels a generated face with FERAnno and external FER classifiers; "where they disagree, the label is
replaced by the ensemble's averaged prediction" [paper]. Voter set, weights, thresholds and discard rules are not
given [choice: configurable, defaults reproduce the paper's rule]. Every image keeps its soft probabilities, its
agreement score and each voter's vote, so users can filter later, or relabel the set from its votes.

Voters ([`~synfer_diffusers.labels.voters.Voter`], see `voters.py`): transformers classifiers
([`ClassifierVoter`], mapped onto [`EXPRESSIONS`] by name as for semantic guidance), FERAnno as a separate pass
([`FERAnnoVoter`]), plain functions ([`CallableVoter`]), probabilities computed elsewhere
(`VotingConfig.probability_voters`, default `("feranno",)`: FERAnno in the generation loop) and the generation
target (`VotingConfig.use_target`, a one-hot vote that abstains for images without a target).

Aggregation (`VotingConfig.aggregation`, see `aggregation.py`): `"paper"`, the weighted mean of the voters'
probabilities image by image, or `"dawid_skene"`, which estimates each voter's confusion matrix from all the images
voted on together and weighs its votes by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..facs import EXPRESSIONS
from .aggregation import aggregate
from .config import VotingConfig
from .voters import GivenVoter, TargetVoter, VoteBatch, Voter

__all__ = ["EnsembleVoter", "VotingConfig", "VotingResult"]


@dataclass
class VotingResult:
    """Per image: the final label, its probabilities, how much the voters agree and what each voted.

    Args:
        labels (`list[str]`): final labels (argmax of the weighted mean of the voters' probabilities).
        label_ids (`torch.Tensor` `(N,)`): their indices in `EXPRESSIONS`.
        probabilities (`torch.Tensor` `(N, 7)`): the label distribution chosen by `VotingConfig.label_type`.
        ensemble_probabilities (`torch.Tensor` `(N, 7)`): the weighted mean of the voters' probabilities.
        agreement (`torch.Tensor` `(N,)`): weighted fraction of (non-abstaining) voters whose vote is the final label.
        agreed (`torch.Tensor` `(N,)` bool): `agreement >= agreement_threshold`.
        keep (`torch.Tensor` `(N,)` bool): False where the discard rule drops the image.
        votes (`dict[str, list[str | None]]`): each voter's label per image (`None` where it abstains).
        voter_probabilities (`dict[str, torch.Tensor]`): each voter's `(N, 7)` probabilities.
        reliability (`dict[str, float]`, *optional*): with `aggregation="dawid_skene"`, each voter's estimated
            probability of voting the true class; `aggregation_details` holds its confusion matrices and class prior.
    """

    labels: list[str]
    label_ids: torch.Tensor
    probabilities: torch.Tensor
    ensemble_probabilities: torch.Tensor
    agreement: torch.Tensor
    agreed: torch.Tensor
    keep: torch.Tensor
    votes: dict[str, list[str | None]]
    voter_probabilities: dict[str, torch.Tensor]
    reliability: dict[str, float] | None = None
    aggregation_details: dict[str, Any] = field(default_factory=dict)

    def agreement_with(self, reference: Sequence[str]) -> dict[str, float]:
        """Fraction of images on which each voter (where it votes) and the final label (`"voted"`) equal `reference`
        labels, e.g. those of an independent judge classifier."""
        if len(reference) != len(self.labels):
            raise ValueError(f"`reference` has {len(reference)} labels for {len(self.labels)} images.")
        rates = {}
        for name, labels in {**self.votes, "voted": self.labels}.items():
            pairs = [(label, ref) for label, ref in zip(labels, reference) if label is not None]
            rates[name] = sum(label == ref for label, ref in pairs) / len(pairs) if pairs else float("nan")
        return rates

    def to_columns(self) -> dict[str, list]:
        """Plain-Python columns for a `datasets.Dataset`: `label`, `label_probabilities`, `agreement`, `keep` and
        one `vote_{name}` column per voter."""
        columns: dict[str, list] = {
            "label": list(self.labels),
            "label_probabilities": self.probabilities.tolist(),
            "agreement": self.agreement.tolist(),
            "keep": self.keep.tolist(),
        }
        columns.update({f"vote_{name}": list(votes) for name, votes in self.votes.items()})
        return columns


class EnsembleVoter:
    r"""
    Rectifies expression labels by voting between voters (FERAnno, transformers classifiers, any
    [`~synfer_diffusers.labels.voters.Voter`]) and, optionally, the generation target.

    Args:
        voters (`Sequence[Voter]`, defaults to `()`): voters run on each batch ([`ClassifierVoter`], ...).
        config ([`VotingConfig`], *optional*): given-probability voters, target, weights, threshold, aggregation,
            output and discard rule.

    A voter set that is empty, has repeated names, or is weighted by names it does not contain raises a
    `ValueError`.

    Example:

    ```py
    >>> from synfer_diffusers import EnsembleVoter
    >>> from synfer_diffusers.labels import ClassifierVoter, VotingConfig

    >>> voter = EnsembleVoter(
    ...     [ClassifierVoter.from_pretrained("runs/resnet"), ClassifierVoter.from_pretrained("runs/convnext")],
    ...     VotingConfig(use_target=True, weights={"feranno": 2.0}),
    ... )
    >>> result = voter(images, probabilities={"feranno": feranno_out.probabilities}, targets=out.expressions)
    >>> result.labels, result.agreement, result.votes
    ```
    """

    def __init__(self, voters: Sequence[Voter] = (), config: VotingConfig | None = None):
        self.config = config or VotingConfig()
        for voter in voters:
            if not isinstance(voter, Voter):
                raise TypeError(f"`voters` must be Voters (name, config(), vote(batch)), got {type(voter).__name__}.")
        self.voters: list[Voter] = [*voters, *(GivenVoter(name) for name in self.config.probability_voters)]
        if self.config.use_target:
            self.voters.append(TargetVoter())
        self.voter_names = [voter.name for voter in self.voters]
        if not self.voter_names:
            raise ValueError(
                "EnsembleVoter has no voters: give `voters`, `config.probability_voters` or `config.use_target`."
            )
        repeated = sorted({n for n in self.voter_names if self.voter_names.count(n) > 1})
        if repeated:
            raise ValueError(f"Voter names must be unique, got {repeated} more than once; give the voters names.")
        unknown = sorted(set(self.config.weights) - set(self.voter_names))
        if unknown:
            raise ValueError(f"`weights` name unknown voters {unknown}; the voters are {self.voter_names}.")

    def __call__(
        self,
        images: Any = None,
        probabilities: Mapping[str, torch.Tensor] | None = None,
        targets: Sequence[str | None] | None = None,
    ) -> VotingResult:
        r"""
        Votes on a batch of images.

        Args:
            images (list of PIL images, *optional*): what the image voters see; required when there are any.
            probabilities (`dict[str, torch.Tensor]`, *optional*): `(N, 7)` probabilities over `EXPRESSIONS` for every
                name in `config.probability_voters`.
            targets (`list[str | None]`, *optional*): generation targets (expression names), required with
                `use_target`; `None` entries abstain.

        Returns:
            [`VotingResult`].
        """
        probabilities = dict(probabilities or {})
        expected, given = set(self.config.probability_voters), set(probabilities)
        if expected != given:
            raise ValueError(f"`probabilities` must hold exactly the voters {sorted(expected)}, got {sorted(given)}.")
        probabilities = {name: _checked_probabilities(name, values) for name, values in probabilities.items()}
        batch = VoteBatch(images=images, targets=targets, probabilities=probabilities)
        return self.combine({voter.name: voter.vote(batch) for voter in self.voters}, targets)

    def combine(
        self, voter_probabilities: Mapping[str, torch.Tensor], targets: Sequence[str | None] | None = None
    ) -> VotingResult:
        r"""
        Aggregates votes already cast, e.g. those stored in a synthetic set's `votes` column.

        Args:
            voter_probabilities (`dict[str, torch.Tensor]`): `(N, 7)` non-negative probabilities over `EXPRESSIONS`
                for every voter of this ensemble; a zero row abstains.
            targets (`list[str | None]`, *optional*): generation targets, for the `target_mismatch` discard rule.

        Returns:
            [`VotingResult`].
        """
        missing = sorted(set(self.voter_names) - set(voter_probabilities))
        if missing:
            raise ValueError(f"Votes of voters {missing} are missing; the voters are {self.voter_names}.")
        checked = {name: _checked_probabilities(name, voter_probabilities[name]) for name in self.voter_names}
        sizes = {name: len(values) for name, values in checked.items()}
        if targets is not None:
            sizes["targets"] = len(targets)
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Voters disagree on the number of images: {sizes}.")
        return self._combine(checked, targets)

    def _combine(
        self,
        voter_probabilities: dict[str, torch.Tensor],  # name -> (N, 7), rows summing to 1 or 0 (abstains)
        targets: Sequence[str | None] | None,
    ) -> VotingResult:
        names = self.voter_names
        stacked = torch.stack([voter_probabilities[n] for n in names], dim=1)  # (N, V, 7)
        present = stacked.sum(-1) > 0  # (N, V)
        weights = torch.tensor([float(self.config.weights.get(n, 1.0)) for n in names])  # (V,)
        per_image = weights[None, :] * present.float()  # (N, V)
        total = per_image.sum(1)  # (N,)
        if (total == 0).any():
            raise ValueError(
                f"Image(s) {torch.nonzero(total == 0).flatten().tolist()[:5]} have no voter with weight > 0."
            )
        aggregated = aggregate(
            self.config.aggregation, stacked, present, weights, names, self.config.classifier_tempering
        )
        ensemble = aggregated.probabilities  # (N, 7)
        label_ids = ensemble.argmax(-1)  # (N,)
        vote_ids = stacked.argmax(-1)  # (N, V)
        agreement = (per_image * (vote_ids == label_ids[:, None])).sum(1) / total
        agreed = agreement >= self.config.agreement_threshold - 1e-6
        one_hot = torch.nn.functional.one_hot(label_ids, len(EXPRESSIONS)).float()
        output = {"hard": one_hot, "soft": ensemble, "mixed": torch.where(agreed[:, None], one_hot, ensemble)}
        keep = torch.ones_like(agreed)
        if self.config.discard_rule == "disagreement":
            keep = agreed
        elif self.config.discard_rule == "target_mismatch":
            if targets is None:
                raise ValueError("`targets` are required with the 'target_mismatch' discard rule.")
            keep = torch.tensor(
                [t is not None and EXPRESSIONS.index(t) == i for t, i in zip(targets, label_ids.tolist())]
            )
        votes = {
            n: [EXPRESSIONS[i] if p else None for i, p in zip(vote_ids[:, v].tolist(), present[:, v].tolist())]
            for v, n in enumerate(names)
        }
        return VotingResult(
            labels=[EXPRESSIONS[i] for i in label_ids.tolist()],
            label_ids=label_ids,
            probabilities=output[self.config.label_type],
            ensemble_probabilities=ensemble,
            agreement=agreement,
            agreed=agreed,
            keep=keep,
            votes=votes,
            voter_probabilities={n: voter_probabilities[n] for n in names},
            reliability=aggregated.reliability,
            aggregation_details=aggregated.details,
        )


def _checked_probabilities(name: str, values: torch.Tensor) -> torch.Tensor:
    """`values` as float32 `(N, 7)` rows summing to 1 (a zero row stays zero: the voter abstains)."""
    values = torch.as_tensor(values, dtype=torch.float32).cpu()
    if values.ndim != 2 or values.shape[1] != len(EXPRESSIONS):
        raise ValueError(f"`probabilities[{name!r}]` must have shape (N, {len(EXPRESSIONS)}), got {tuple(values.shape)}.")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"`probabilities[{name!r}]` must be finite and non-negative.")
    return values / values.sum(-1, keepdim=True).clamp_min(1e-12)
