"""Label rectification by ensemble voting (SynFER stage 3).

SynFER labels a generated face with FERAnno and external FER classifiers; "where they disagree, the label is
replaced by the ensemble's averaged prediction" [paper]. Voter set, weights, thresholds and discard rules are not
given [choice: configurable, defaults reproduce the paper's rule]. Every image keeps its soft probabilities, its
agreement score and each voter's vote, so users can filter later.

Voters:

- **transformers classifiers** ([`ClassifierVoter`]): any `AutoModelForImageClassification` whose `id2label` maps
  onto [`EXPRESSIONS`] by name, as for semantic guidance ([`~synfer_diffusers.facs.map_classifier_labels`]:
  case-insensitive, `label_mapping` renames other names; outputs mapped to `None`, e.g. AffectNet-8's "contempt",
  are dropped before the softmax);
- **voters with given probabilities** (`VotingConfig.probability_voters`, default `("feranno",)`): probabilities
  over `EXPRESSIONS` computed elsewhere, e.g. by FERAnno in the generation loop or by
  [`FERAnnoPipeline.label_latents`]. FERAnno carries its own label set (`id2label`) and is mapped onto
  `EXPRESSIONS` by the same by-name mapping as the classifiers
  ([`~synfer_diffusers.facs.classifier_expression_probabilities`], `feranno_label_mapping` for its renames);
- **the generation target** (`VotingConfig.use_target`): a one-hot vote for the expression the image was generated
  for; it abstains for images without a target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from ..facs import EXPRESSIONS, classifier_expression_probabilities, map_classifier_labels

__all__ = ["ClassifierVoter", "EnsembleVoter", "VotingConfig", "VotingResult"]

TARGET_VOTER = "target"


class ClassifierVoter:
    r"""
    A transformers image classifier as a voter: its logits reordered into `EXPRESSIONS` (unmapped outputs dropped),
    then softmax.

    Args:
        model ([`~transformers.PreTrainedModel`]): an image classifier returning `logits` `(B, num_classes)` with an
            `id2label` in its config.
        image_processor: a transformers image processor; `image_processor(images, return_tensors="pt")` must give
            the model's `pixel_values`.
        name (`str`, *optional*): the voter's name in results and weights (default: `model.config.name_or_path`,
            else its `model_type`).
        label_mapping (`dict`, *optional*): renames the classifier's labels onto `EXPRESSIONS` (`None` drops an
            output), see [`~synfer_diffusers.facs.map_classifier_labels`]; unmappable labels raise a `ValueError`.

    Example:

    ```py
    >>> voter = ClassifierVoter.from_pretrained("runs/judge", name="resnet", label_mapping={"contempt": None})
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        image_processor: Any,
        name: str | None = None,
        label_mapping: Mapping[str, str | None] | None = None,
    ):
        self.model = model.eval()
        self.image_processor = image_processor
        self.name = name or model.config.name_or_path or model.config.model_type
        self.index_map = map_classifier_labels(model.config.id2label, label_mapping, field="label_mapping")

    @classmethod
    def from_pretrained(
        cls, path: str, name: str | None = None, label_mapping: Mapping[str, str | None] | None = None, **kwargs: Any
    ) -> ClassifierVoter:
        """Loads model and image processor with the Auto classes from a folder or a Hub repo id."""
        model = AutoModelForImageClassification.from_pretrained(path, **kwargs)
        return cls(model, AutoImageProcessor.from_pretrained(path), name=name, label_mapping=label_mapping)

    @torch.no_grad()
    def __call__(self, images: Any) -> torch.Tensor:  # (B, len(EXPRESSIONS))
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        logits = self.model(pixel_values=pixel_values.to(self.model.device, self.model.dtype)).logits
        return classifier_expression_probabilities(logits, self.index_map).cpu()  # (B, C) -> (B, 7)


@dataclass
class VotingConfig:
    """How the votes are combined. The defaults are the paper's rule: a unanimous label is kept as a hard label,
    a disputed one is replaced by the ensemble's averaged probabilities; nothing is discarded."""

    probability_voters: tuple[str, ...] = field(
        default=("feranno",),
        metadata={"help": "Names of voters whose probabilities over EXPRESSIONS are passed to the call (FERAnno)."},
    )
    use_target: bool = field(
        default=False, metadata={"help": f"Add the generation target as a one-hot voter named {TARGET_VOTER!r}."}
    )
    weights: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Weight per voter name (others weigh 1); 0 silences a voter."}
    )
    agreement_threshold: float = field(
        default=1.0,
        metadata={"help": "An image's label is agreed when voters weighing at least this fraction vote for it "
                          "(1.0: unanimity, the paper's rule)."},
    )  # fmt: skip
    label_type: Literal["mixed", "hard", "soft"] = field(
        default="mixed",
        metadata={"help": "Output probabilities: 'mixed' one-hot where agreed and averaged where not (paper), "
                          "'hard' always one-hot, 'soft' always the averaged probabilities."},
    )  # fmt: skip
    discard_rule: Literal["none", "disagreement", "target_mismatch"] = field(
        default="none",
        metadata={"help": "Which images get keep=False: 'disagreement' where the label is not agreed, "
                          "'target_mismatch' where the final label differs from the generation target."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.probability_voters = tuple(self.probability_voters)
        threshold = self.agreement_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`agreement_threshold` must be in [0, 1], got {threshold!r}.")
        if self.label_type not in ("mixed", "hard", "soft"):
            raise ValueError(f"`label_type` must be one of 'mixed', 'hard', 'soft', got {self.label_type!r}.")
        if self.discard_rule not in ("none", "disagreement", "target_mismatch"):
            raise ValueError(
                f"`discard_rule` must be one of 'none', 'disagreement', 'target_mismatch', got {self.discard_rule!r}."
            )
        if self.discard_rule == "target_mismatch" and not self.use_target:
            raise ValueError(
                "`discard_rule` 'target_mismatch' needs `use_target=True` (targets are passed to voting)."
            )
        for name, weight in self.weights.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not math.isfinite(weight)
                or weight < 0
            ):
                raise ValueError(f"`weights[{name!r}]` must be a finite number >= 0, got {weight!r}.")


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
    Rectifies expression labels by voting between FERAnno, transformers classifiers and, optionally, the
    generation target.

    Args:
        classifiers (`Sequence[ClassifierVoter]`, defaults to `()`): classifiers run on the images.
        config ([`VotingConfig`], *optional*): voter names, weights, threshold, output and discard rule.

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

    def __init__(self, classifiers: Sequence[ClassifierVoter] = (), config: VotingConfig | None = None):
        self.classifiers = list(classifiers)
        self.config = config or VotingConfig()
        self.voter_names = [c.name for c in self.classifiers] + list(self.config.probability_voters)
        if self.config.use_target:
            self.voter_names.append(TARGET_VOTER)
        if not self.voter_names:
            raise ValueError(
                "EnsembleVoter has no voters: give `classifiers`, `config.probability_voters` or `config.use_target`."
            )
        repeated = sorted({n for n in self.voter_names if self.voter_names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"Voter names must be unique, got {repeated} more than once; set `ClassifierVoter(name=...)`."
            )
        unknown = sorted(set(self.config.weights) - set(self.voter_names))
        if unknown:
            raise ValueError(f"`weights` name unknown voters {unknown}; the voters are {self.voter_names}.")

    def __call__(
        self,
        images: Any = None,
        probabilities: Mapping[str, torch.Tensor] | None = None,
        targets: Sequence[str | None] | None = None,
        batch_size: int = 32,
    ) -> VotingResult:
        r"""
        Votes on a batch of images.

        Args:
            images (list of PIL images, *optional*): what the classifiers see; required when there are classifiers.
            probabilities (`dict[str, torch.Tensor]`, *optional*): `(N, 7)` probabilities over `EXPRESSIONS` for every
                name in `config.probability_voters`.
            targets (`list[str | None]`, *optional*): generation targets (expression names), required with
                `use_target`; `None` entries abstain.
            batch_size (`int`, defaults to 32): images per classifier forward pass.

        Returns:
            [`VotingResult`].
        """
        voter_probabilities = self._given_probabilities(probabilities or {})
        for classifier in self.classifiers:
            if images is None:
                raise ValueError(f"`images` are required: classifier {classifier.name!r} votes on them.")
            chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
            voter_probabilities[classifier.name] = torch.cat([classifier(chunk) for chunk in chunks])
        num_images = _common_size(voter_probabilities, targets)
        present = {name: torch.ones(num_images, dtype=torch.bool) for name in voter_probabilities}
        if self.config.use_target:
            voter_probabilities[TARGET_VOTER], present[TARGET_VOTER] = _target_votes(targets, num_images)
        return self._combine(voter_probabilities, present, targets)

    def _given_probabilities(self, probabilities: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        expected, given = set(self.config.probability_voters), set(probabilities)
        if expected != given:
            raise ValueError(f"`probabilities` must hold exactly the voters {sorted(expected)}, got {sorted(given)}.")
        checked = {}
        for name, values in probabilities.items():
            values = torch.as_tensor(values, dtype=torch.float32).cpu()
            if values.ndim != 2 or values.shape[1] != len(EXPRESSIONS):
                raise ValueError(
                    f"`probabilities[{name!r}]` must have shape (N, {len(EXPRESSIONS)}), got {tuple(values.shape)}."
                )
            if not torch.isfinite(values).all() or (values < 0).any():
                raise ValueError(f"`probabilities[{name!r}]` must be finite and non-negative.")
            checked[name] = values / values.sum(-1, keepdim=True).clamp_min(1e-12)
        return checked

    def _combine(
        self,
        voter_probabilities: dict[str, torch.Tensor],  # name -> (N, 7)
        present: dict[str, torch.Tensor],  # name -> (N,) bool, False = abstains
        targets: Sequence[str | None] | None,
    ) -> VotingResult:
        names = self.voter_names
        stacked = torch.stack([voter_probabilities[n] for n in names], dim=1)  # (N, V, 7)
        weights = torch.tensor([float(self.config.weights.get(n, 1.0)) for n in names])  # (V,)
        weights = weights * torch.stack([present[n] for n in names], dim=1).float()  # (N, V)
        total = weights.sum(1)  # (N,)
        if (total == 0).any():
            raise ValueError(
                f"Image(s) {torch.nonzero(total == 0).flatten().tolist()[:5]} have no voter with weight > 0."
            )
        ensemble = (weights[..., None] * stacked).sum(1) / total[:, None]  # (N, 7)
        label_ids = ensemble.argmax(-1)  # (N,)
        vote_ids = stacked.argmax(-1)  # (N, V)
        agreement = (weights * (vote_ids == label_ids[:, None])).sum(1) / total
        agreed = agreement >= self.config.agreement_threshold - 1e-6
        one_hot = torch.nn.functional.one_hot(label_ids, len(EXPRESSIONS)).float()
        output = {"hard": one_hot, "soft": ensemble, "mixed": torch.where(agreed[:, None], one_hot, ensemble)}
        keep = torch.ones_like(agreed)
        if self.config.discard_rule == "disagreement":
            keep = agreed
        elif self.config.discard_rule == "target_mismatch":
            keep = torch.tensor(
                [t is not None and EXPRESSIONS.index(t) == i for t, i in zip(targets, label_ids.tolist())]
            )
        votes = {
            n: [EXPRESSIONS[i] if p else None for i, p in zip(vote_ids[:, v].tolist(), present[n].tolist())]
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
        )


def _common_size(voter_probabilities: Mapping[str, torch.Tensor], targets: Sequence[str | None] | None) -> int:
    sizes = {name: len(values) for name, values in voter_probabilities.items()}
    if targets is not None:
        sizes["targets"] = len(targets)
    if not sizes:
        raise ValueError("Nothing to vote on: pass `images`, `probabilities` or `targets`.")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Voters disagree on the number of images: {sizes}.")
    return next(iter(sizes.values()))


def _target_votes(targets: Sequence[str | None] | None, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot `(N, 7)` target votes and `(N,)` presence (False where the target is `None`)."""
    if targets is None:
        raise ValueError("`targets` are required with `VotingConfig(use_target=True)`.")
    votes = torch.zeros(num_images, len(EXPRESSIONS))
    for i, name in enumerate(targets):
        if name is not None:
            votes[i, EXPRESSIONS.label_id(name, field=f"targets[{i}]")] = 1.0
    return votes, torch.tensor([t is not None for t in targets])
