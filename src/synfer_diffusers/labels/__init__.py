"""Label rectification: voters (FERAnno, FER classifiers, functions, the generation target), their aggregation (the
paper's weighted mean or Dawid-Skene) and ensemble voting. Names are imported lazily: [`VotingConfig`] loads no
torch."""

from ..lazy_imports import lazy_namespace

_import_structure = {
    "aggregation": ["AggregationResult", "dawid_skene", "weighted_mean"],
    "config": ["AGGREGATIONS", "VotingConfig"],
    "voters": [
        "VOTER_KINDS", "CallableVoter", "ClassifierVoter", "FERAnnoVoter", "GivenVoter", "TargetVoter", "VoteBatch",
        "Voter", "load_voter",
    ],
    "voting": ["EnsembleVoter", "VotingResult"],
}  # fmt: skip

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)
