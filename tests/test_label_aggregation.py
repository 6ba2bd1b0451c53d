"""Aggregation of votes: Dawid-Skene recovers the voters' confusion matrices from simulated votes (no ground truth),
and labels a set where the target keeps naming a confusable partner better than the paper's weighted mean does.
The voter protocol: a custom voter of any kind votes through `EnsembleVoter` and `load_voter`."""

import numpy as np
import pytest
import torch

from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.labels import (
    CallableVoter,
    EnsembleVoter,
    VoteBatch,
    Voter,
    VotingConfig,
    dawid_skene,
    load_voter,
    weighted_mean,
)

NUM_CLASSES = len(EXPRESSIONS)
PARTNER = {0: 2, 1: 1, 2: 0, 3: 4, 4: 3, 5: 6, 6: 5}  # a confusable partner per class (happy has none)


def confusion(accuracy: float, partner_rate: float = 0.0) -> np.ndarray:
    """A voter that is right with `accuracy`, names the confusable partner with `partner_rate`, else errs uniformly."""
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for k in range(NUM_CLASSES):
        partner = PARTNER[k]
        if partner == k:  # no partner: the partner share is right
            matrix[k, :] = (1.0 - accuracy - partner_rate) / (NUM_CLASSES - 1)
            matrix[k, k] = accuracy + partner_rate
        else:
            matrix[k, :] = (1.0 - accuracy - partner_rate) / (NUM_CLASSES - 2)
            matrix[k, k], matrix[k, partner] = accuracy, partner_rate
    return matrix


def simulate(matrices: dict[str, np.ndarray], num_images: int = 3000, seed: int = 0):
    """True classes and each voter's one-hot votes drawn from its confusion matrix."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, NUM_CLASSES, num_images)
    votes = {}
    for name, matrix in matrices.items():
        drawn = np.array([rng.choice(NUM_CLASSES, p=matrix[k]) for k in truth])
        votes[name] = torch.nn.functional.one_hot(torch.tensor(drawn), NUM_CLASSES).float()
    return truth, votes


# The hard regime's shape: a target that names the confusable partner 35% of the time, two independent voters.
VOTERS = {
    "target": confusion(0.60, partner_rate=0.35),
    "feranno": confusion(0.75),
    "independent": confusion(0.70),
}


def test_dawid_skene_recovers_voter_confusion_matrices_without_ground_truth():
    truth, votes = simulate(VOTERS)
    names = list(votes)
    stacked = torch.stack([votes[n] for n in names], dim=1)  # (N, V, C)
    result = dawid_skene(stacked, torch.ones(stacked.shape[:2], dtype=torch.bool), torch.ones(len(names)), names)
    for name in names:
        estimated = np.array(result.details["confusion"][name])
        assert np.abs(estimated - VOTERS[name]).max() < 0.07, name
        assert result.reliability[name] == pytest.approx(np.trace(VOTERS[name]) / NUM_CLASSES, abs=0.03)
    assert np.allclose(result.details["class_prior"], 1 / NUM_CLASSES, atol=0.03)


def test_dawid_skene_beats_the_papers_rule_where_the_target_keeps_naming_a_partner():
    truth, votes = simulate(VOTERS)
    accuracy = {}
    for rule in ("paper", "dawid_skene"):
        voter = EnsembleVoter(config=VotingConfig(probability_voters=tuple(votes), aggregation=rule))
        labels = voter.combine(votes).label_ids.numpy()
        accuracy[rule] = float((labels == truth).mean())
    # the paper's mean is a plurality vote that splits 3 ways on every disagreement, decided by voter order
    assert accuracy["dawid_skene"] > accuracy["paper"] + 0.05, accuracy
    assert accuracy["dawid_skene"] > 0.85, accuracy


def test_dawid_skene_discounts_the_voter_that_errs_and_keeps_unanimous_labels():
    truth, votes = simulate(VOTERS)
    names = list(votes)
    stacked = torch.stack([votes[n] for n in names], dim=1)
    present = torch.ones(stacked.shape[:2], dtype=torch.bool)
    result = dawid_skene(stacked, present, torch.ones(len(names)), names)
    assert result.reliability["target"] < result.reliability["independent"] < result.reliability["feranno"]
    unanimous = (stacked.argmax(-1) == stacked.argmax(-1)[:, :1]).all(1)
    assert torch.equal(result.probabilities[unanimous].argmax(-1), stacked[unanimous, 0].argmax(-1))
    # an abstaining voter (zero row) changes nothing for that image
    reduced = dawid_skene(stacked[:, 1:], present[:, 1:], torch.ones(2), names[1:])
    silenced = dawid_skene(stacked, torch.cat([torch.zeros_like(present[:, :1]), present[:, 1:]], 1),
                           torch.ones(3), names)  # fmt: skip
    assert torch.allclose(reduced.probabilities, silenced.probabilities, atol=1e-4)


def test_classifier_tempering_keeps_an_accurate_target_against_classifiers_that_err_together():
    """Two classifiers that read the same 8% of images the same wrong way (correlated errors, which Dawid-Skene takes
    for independent evidence) outvote a 97%-right target there; tempered to half, they no longer can."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, NUM_CLASSES, 3000)
    target = np.where(rng.random(truth.size) < 0.97, truth, rng.integers(0, NUM_CLASSES, truth.size))
    shared = rng.random(truth.size) < 0.08
    misread = np.array([PARTNER[k] if PARTNER[k] != k else (k + 1) % NUM_CLASSES for k in truth])

    def classifier() -> np.ndarray:
        own = np.where(rng.random(truth.size) < 0.92, truth, rng.integers(0, NUM_CLASSES, truth.size))
        return np.where(shared, misread, own)

    votes = {
        name: torch.nn.functional.one_hot(torch.tensor(v), NUM_CLASSES).float()
        for name, v in (("target", target), ("feranno", classifier()), ("guide", classifier()))
    }
    accuracy = {}
    for tempering in (1.0, 0.5):
        config = VotingConfig(probability_voters=tuple(votes), aggregation="dawid_skene", classifier_tempering=tempering)
        accuracy[tempering] = float((EnsembleVoter(config=config).combine(votes).label_ids.numpy() == truth).mean())
    assert accuracy[0.5] > accuracy[1.0] + 0.05, accuracy
    assert accuracy[0.5] >= float((target == truth).mean()) - 0.005, accuracy
    with pytest.raises(ValueError, match="classifier_tempering"):
        VotingConfig(classifier_tempering=0.0)


def test_papers_rule_is_the_weighted_mean():
    probabilities = torch.softmax(torch.randn(5, 3, NUM_CLASSES, generator=torch.Generator().manual_seed(0)), -1)
    present = torch.tensor([[True, True, False]] * 5)
    weights = torch.tensor([2.0, 1.0, 5.0])
    expected = (2 * probabilities[:, 0] + probabilities[:, 1]) / 3
    assert torch.allclose(weighted_mean(probabilities, present, weights).probabilities, expected)


def always(name: str):
    def vote(images):
        return torch.nn.functional.one_hot(torch.full((len(images),), EXPRESSIONS.index(name)), NUM_CLASSES).float()

    return vote


class MouthVoter:
    """A custom voter kind written by a user: one class with `name`, `config()` and `vote(batch)`."""

    name = "mouth"

    def config(self):
        return {"kind": "mouth", "name": self.name}

    def vote(self, batch: VoteBatch) -> torch.Tensor:
        return torch.tensor([[0.0] * 6 + [1.0] if t == "anger" else [1.0] + [0.0] * 6 for t in batch.targets])


def test_custom_voters_vote_through_the_ensemble():
    happy = CallableVoter(always("happy"), name="happy")
    assert isinstance(happy, Voter) and isinstance(MouthVoter(), Voter)
    voter = EnsembleVoter([happy, MouthVoter()], VotingConfig(probability_voters=(), use_target=True))
    result = voter(images=[object()] * 2, targets=["anger", "sad"])
    assert result.votes == {"happy": ["happy", "happy"], "mouth": ["anger", "neutral"], "target": ["anger", "sad"]}
    assert result.labels[0] == "anger"


def test_load_voter_names_kind_and_refuses_what_it_cannot_load():
    voter = load_voter("callable:tests.test_label_aggregation:MouthVoter")
    assert voter.name == "MouthVoter" and voter.config()["kind"] == "callable"
    with pytest.raises(ValueError, match=r"`voters`: 'callable:no_such_module:f' could not be loaded"):
        load_voter("callable:no_such_module:f")
    with pytest.raises(ValueError, match=r"`voters`: '/no/such/classifier' could not be loaded as a classifier"):
        load_voter("/no/such/classifier")
    with pytest.raises(ValueError, match="could not be loaded as a feranno voter"):
        load_voter("feranno:/no/such/feranno")
    with pytest.raises(TypeError, match="Voters"):
        EnsembleVoter([always("happy")])
