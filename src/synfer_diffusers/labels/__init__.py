"""Label rectification: voters (FERAnno, FER classifiers, functions, the generation target), their aggregation (the
paper's weighted mean or Dawid-Skene) and ensemble voting."""

from .aggregation import AGGREGATIONS, AggregationResult, dawid_skene, weighted_mean
from .voters import (
    VOTER_KINDS,
    CallableVoter,
    ClassifierVoter,
    FERAnnoVoter,
    GivenVoter,
    TargetVoter,
    VoteBatch,
    Voter,
    load_voter,
)
from .voting import EnsembleVoter, VotingConfig, VotingResult

__all__ = [
    "AGGREGATIONS",
    "AggregationResult",
    "CallableVoter",
    "ClassifierVoter",
    "EnsembleVoter",
    "FERAnnoVoter",
    "GivenVoter",
    "TargetVoter",
    "VOTER_KINDS",
    "VoteBatch",
    "Voter",
    "VotingConfig",
    "VotingResult",
    "dawid_skene",
    "load_voter",
    "weighted_mean",
]
