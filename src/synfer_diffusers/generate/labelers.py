"""Labellers of generated images: the target alone, or an ensemble vote (FERAnno, the guide, classifiers, the
target; SynFER Sec. 3.3), each recording its full configuration for the plan and each voter's vote for the rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..facs import EXPRESSIONS
from ..labels import ClassifierVoter, EnsembleVoter, VoteBatch, Voter, VotingConfig, VotingResult
from ..labels.voters import TARGET_VOTER
from ..pipelines.synfer.pipeline_output import SynFERPipelineOutput
from ..pipelines.synfer.pipeline_synfer import SynFERPipeline
from .config import SyntheticSetConfig


@dataclass
class SampleLabels:
    """Labels of a batch: `label` (class ids), `label_probs` `(batch, 7)`, `agreement` in [0, 1], `keep` (False where
    the voting discard rule drops the image) and `votes`: per image, each voter's `{"voter", "probs"}` (its
    probabilities over `EXPRESSIONS`; the target's is one-hot)."""

    label: list[int]
    label_probs: np.ndarray
    agreement: list[float]
    keep: list[bool]
    votes: list[list[dict[str, Any]]]


@dataclass
class GeneratedOutput(SynFERPipelineOutput):
    """A pipeline output as `synfer generate` hands it to its labeller: `images` as PIL (byte for byte what
    `output_type="pil"` gives) and `pixel_values`, the same images as the pipeline made them, `(B, 3, H, W)` in
    [0, 1] on its device, for voters that read tensors."""

    pixel_values: torch.Tensor | None = None


class Labeler(Protocol):
    """Maps a generated batch (the pipeline output: PIL `images`, and `feranno_probabilities` when the pipeline
    has a `feranno_head`; in `synfer generate` a [`GeneratedOutput`]) and its target class ids to [`SampleLabels`]. `config` (JSON: everything that decides the
    labels, e.g. the voters' weight fingerprints and the voting rule) goes into the plan, so a resume with another
    labelling is refused; `description` goes into the card. A labeller whose `needs_whole_set` is true labels
    batches provisionally and gets the whole set's stored votes once every shard is written ([`relabel`])."""

    name: str
    description: str
    config: dict[str, Any]
    needs_whole_set: bool

    def __call__(self, output: SynFERPipelineOutput, target_labels: list[int]) -> SampleLabels: ...


class TargetLabeler:
    """The generation target as the label: one-hot `label_probs`, `agreement` 1.0. [`default_labeler`] uses it
    when there is nothing to vote with (no FERAnno head, no classifiers); otherwise [`VotingLabeler`]."""

    name = "target"
    description = (
        "the generation target (no pseudo-labeller): `label` = `target_label`, one-hot `label_probs`, `agreement` 1.0"
    )
    needs_whole_set = False

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __call__(self, output: SynFERPipelineOutput, target_labels: list[int]) -> SampleLabels:
        probs = np.eye(len(EXPRESSIONS), dtype=np.float32)[target_labels]
        votes = [[{"voter": TARGET_VOTER, "probs": row.tolist()}] for row in probs]
        count = len(target_labels)
        return SampleLabels(list(target_labels), probs, [1.0] * count, [True] * count, votes)


class VotingLabeler:
    """Labels rectified by an [`EnsembleVoter`]: FERAnno's in-loop probabilities (when the pipeline has a
    `feranno_head`), the voter's voters on the images and, with `use_target`, the generation target. `label_probs`
    are the voter's output (the paper's rule by default: one-hot where voters agree, averaged probabilities where
    they disagree) and `agreement` its agreement score. With a set-level aggregation (Dawid-Skene) the batch labels
    are provisional: [`relabel`] recomputes them from the whole set's votes."""

    def __init__(self, voter: EnsembleVoter):
        self.voter = voter
        voters = list(voter.voter_names)
        self.name = "vote:" + ",".join(voters)
        config = voter.config
        self.needs_whole_set = config.aggregation != "paper"
        weights = f", weights {config.weights}" if config.weights else ""
        discard = f", `keep` False by the {config.discard_rule!r} rule" if config.discard_rule != "none" else ""
        rule = {
            "paper": "the paper's weighted mean",
            "dawid_skene": f"Dawid-Skene over the whole set, classifiers tempered by {config.classifier_tempering:g}",
        }
        named = [f"{v.name} ({v.family})" if hasattr(v, "family") else v.name for v in voter.voters]
        self.description = (
            f"ensemble vote of {', '.join(named)} ({config.label_type} labels, aggregated by "
            f"{rule[config.aggregation]}, agreement threshold {config.agreement_threshold}{weights}{discard}); "
            "`agreement` is the weighted fraction of voters for the label; `votes` holds each voter's probabilities"
        )
        self.config = {
            "name": self.name,
            "voting": asdict(config),
            "voters": [v.config() for v in voter.voters],
        }

    def __call__(self, output: SynFERPipelineOutput, target_labels: list[int]) -> SampleLabels:
        given = {}
        if output.feranno_probabilities is not None:
            given["feranno"] = output.feranno_probabilities
        pixel_values = output.pixel_values if isinstance(output, GeneratedOutput) else None
        batch = VoteBatch(output.images, [EXPRESSIONS[i] for i in target_labels], given, pixel_values)
        for name in self.voter.config.probability_voters:
            if name not in given:
                raise ValueError(f"The voter expects {name!r} probabilities but the pipeline gives none.")
        return self.labels(self.voter.combine({v.name: v.vote(batch) for v in self.voter.voters}, batch.targets))

    def relabel(self, votes: Sequence[Sequence[Mapping[str, Any]]], target_labels: Sequence[int]) -> VotingResult:
        """The votes of a whole set (each row's stored `votes`: `[{"voter", "probs"}, ...]`) aggregated together."""
        stored: dict[str, list] = {name: [] for name in self.voter.voter_names}
        for i, row in enumerate(votes):
            by_name = {vote["voter"]: vote["probs"] for vote in row}
            missing = sorted(set(stored) - set(by_name))
            if missing:
                raise ValueError(f"row {i} has no stored votes of {missing}; its voters are {sorted(by_name)}.")
            for name in stored:
                stored[name].append(by_name[name])
        targets = [EXPRESSIONS[i] for i in target_labels]
        return self.voter.combine({name: torch.tensor(rows) for name, rows in stored.items()}, targets)

    @staticmethod
    def labels(result: VotingResult) -> SampleLabels:
        """The dataset columns of a [`VotingResult`]."""
        voter_probs = {name: p.float().tolist() for name, p in result.voter_probabilities.items()}
        votes = [[{"voter": name, "probs": p[i]} for name, p in voter_probs.items()] for i in range(len(result.labels))]
        return SampleLabels(
            label=result.label_ids.tolist(),
            label_probs=result.probabilities.numpy().astype(np.float32),
            agreement=result.agreement.tolist(),
            keep=result.keep.tolist(),
            votes=votes,
        )


def default_labeler(
    pipe: SynFERPipeline,
    voters: Sequence[Voter] = (),
    voting: Mapping[str, Any] | None = None,
    guided: bool = False,
    guide_label_mapping: Mapping[str, str | None] | None = None,
) -> Labeler:
    """The target voted with FERAnno (when the pipeline has a `feranno_head`), the pipeline's guide classifier (when
    it has a `guidance_classifier` and its image processor, as voter `"guide"`) and the given voters; the
    target alone ([`TargetLabeler`]) when there is nothing to vote with. With FERAnno and the target only, the
    paper's averaging rule always keeps the target label (a one-hot vote outweighs any one distribution), so a
    third opinion is what lets a vote overrule the target.

    `guided`: the images were made with semantic guidance. The guide then does not vote: sampling optimised the
    images until the guide agreed with their targets, so its vote would echo the target rather than judge the image.
    Independent classifiers (`voters`) still vote.

    `guide_label_mapping` renames the guide's labels onto `EXPRESSIONS` (as for semantic guidance).

    `voting` holds [`VotingConfig`] fields (threshold, weights, label type, discard rule; see
    [`SyntheticSetConfig.voting_options`]); other than the defaults they need something to vote with."""
    voting = dict(voting or {})
    if not guided and pipe.guidance_classifier is not None and pipe.guidance_image_processor is not None:
        guide = ClassifierVoter(pipe.guidance_classifier, pipe.guidance_image_processor, name="guide",
                                label_mapping=guide_label_mapping)  # fmt: skip
        voters = [guide, *voters]
    if pipe.feranno_head is None and not voters:
        changed = changed_voting_options(voting)
        if changed:
            guide = "an unguided guide classifier" if guided else "a guide classifier"
            raise ValueError(
                f"Voting options {changed} need voters: the model has no `feranno_head` or {guide} and no "
                "`voters` were given."
            )
        return TargetLabeler()
    probability_voters = ("feranno",) if pipe.feranno_head is not None else ()
    return VotingLabeler(
        EnsembleVoter(voters, VotingConfig(probability_voters=probability_voters, use_target=True, **voting))
    )


def changed_voting_options(voting: Mapping[str, Any]) -> list[str]:
    """Names of the voting options in `voting` ([`SyntheticSetConfig.voting_options`]) that differ from those of a
    default [`SyntheticSetConfig`] (whose aggregation, Dawid-Skene, is not [`VotingConfig`]'s)."""
    defaults = SyntheticSetConfig().voting_options()
    return sorted(name for name, value in voting.items() if value != defaults[name])
