"""[`VotingConfig`]: how the votes are combined, with its choices (no torch: the command line reads its help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..value_checks import check_number

__all__ = ["AGGREGATIONS", "DISCARD_RULES", "LABEL_TYPES", "TARGET_VOTER", "VotingConfig"]

Aggregation = Literal["paper", "dawid_skene"]
LabelType = Literal["mixed", "hard", "soft"]
DiscardRule = Literal["none", "disagreement", "target_mismatch"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
LABEL_TYPES: tuple[str, ...] = get_args(LabelType)
DISCARD_RULES: tuple[str, ...] = get_args(DiscardRule)
TARGET_VOTER = "target"
"""The name of the generation target's one-hot vote."""


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
    label_type: LabelType = field(
        default="mixed",
        metadata={"help": "Output probabilities: 'mixed' one-hot where agreed and averaged where not (paper), "
                          "'hard' always one-hot, 'soft' always the averaged probabilities."},
    )  # fmt: skip
    aggregation: Aggregation = field(
        default="paper",
        metadata={"help": "'paper': weighted mean of the voters' probabilities per image (SynFER); 'dawid_skene': "
                          "each voter's confusion matrix estimated from the whole set by EM (Dawid & Skene 1979), "
                          "so a voter that keeps confusing two classes loses weight there."},
    )  # fmt: skip
    classifier_tempering: float = field(
        default=1.0,
        metadata={"help": "With Dawid-Skene, every voter but the target counts in the likelihood with its weight "
                          "times this (the target with its weight alone). Classifiers that read the same image make "
                          "correlated errors, which Dawid-Skene takes for independent evidence; below 1 they must "
                          "agree more strongly to overrule the target. 1: plain Dawid-Skene."},
    )  # fmt: skip
    discard_rule: DiscardRule = field(
        default="none",
        metadata={"help": "Which images get keep=False: 'disagreement' where the label is not agreed, "
                          "'target_mismatch' where the final label differs from the generation target."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.probability_voters = tuple(self.probability_voters)
        check_number("agreement_threshold", self.agreement_threshold, 0, 1)
        check_number("classifier_tempering", self.classifier_tempering, 0, open_minimum=True)
        for name, choices in (("label_type", LABEL_TYPES), ("aggregation", AGGREGATIONS),
                              ("discard_rule", DISCARD_RULES)):  # fmt: skip
            if getattr(self, name) not in choices:
                raise ValueError(f"`{name}` must be one of {list(choices)}, got {getattr(self, name)!r}.")
        if self.discard_rule == "target_mismatch" and not self.use_target:
            raise ValueError(
                "`discard_rule` 'target_mismatch' needs `use_target=True` (targets are passed to voting)."
            )
        for name, weight in self.weights.items():
            check_number(f"weights[{name!r}]", weight, 0)
