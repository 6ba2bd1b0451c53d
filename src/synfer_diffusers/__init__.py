"""synfer_diffusers: SynFER (ICCV 2025) as a Hugging Face-style package.

The public names are imported lazily ([`~synfer_diffusers.lazy_imports.lazy_namespace`]): `import synfer_diffusers`
loads no torch, diffusers or transformers until a name that needs them is used.
"""

from .lazy_imports import lazy_namespace

__version__ = "0.1.0"

_import_structure = {
    "facs": ["AU_DESCRIPTIONS", "EMFACS_PROTOTYPES", "EXPRESSIONS", "AUSpace", "describe_au", "expression_prototype"],
    "labels": ["ClassifierVoter", "EnsembleVoter", "VotingConfig", "VotingResult"],
    "models.feranno": ["FERAnnoHead"],
    "models.unet_au": ["AUAttnProcessor2_0", "AUConditionedUNet2DConditionModel"],
    "pipelines.synfer.pipeline_feranno": ["FERAnnoPipeline", "FERAnnoPipelineOutput"],
    "pipelines.synfer.pipeline_output": ["SynFEREditOutput", "SynFERPipelineOutput"],
    "pipelines.synfer.pipeline_synfer": ["SynFERPipeline"],
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)
