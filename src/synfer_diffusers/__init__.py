"""synfer_diffusers: SynFER (ICCV 2025) as a Hugging Face-style package."""

from .facs import AU_DESCRIPTIONS, EMFACS_PROTOTYPES, EXPRESSIONS, AUSpace, describe_au, expression_prototype
from .labels import ClassifierVoter, EnsembleVoter, VotingConfig, VotingResult
from .models.feranno import FERAnnoHead
from .models.unet_au import AUAttnProcessor2_0, AUConditionedUNet2DConditionModel
from .pipelines.synfer.pipeline_feranno import FERAnnoPipeline, FERAnnoPipelineOutput
from .pipelines.synfer.pipeline_output import SynFEREditOutput, SynFERPipelineOutput
from .pipelines.synfer.pipeline_synfer import SynFERPipeline

__version__ = "0.1.0"

__all__ = [
    "AU_DESCRIPTIONS",
    "EMFACS_PROTOTYPES",
    "EXPRESSIONS",
    "AUAttnProcessor2_0",
    "AUConditionedUNet2DConditionModel",
    "AUSpace",
    "ClassifierVoter",
    "EnsembleVoter",
    "FERAnnoHead",
    "FERAnnoPipeline",
    "FERAnnoPipelineOutput",
    "SynFEREditOutput",
    "SynFERPipeline",
    "SynFERPipelineOutput",
    "VotingConfig",
    "VotingResult",
    "describe_au",
    "expression_prototype",
]
