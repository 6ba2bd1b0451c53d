"""Label rectification: ensemble voting between FERAnno, FER classifiers and the generation target."""

from .voting import ClassifierVoter, EnsembleVoter, VotingConfig, VotingResult

__all__ = ["ClassifierVoter", "EnsembleVoter", "VotingConfig", "VotingResult"]
