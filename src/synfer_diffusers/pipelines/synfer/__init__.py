"""The SynFER pipelines, imported lazily so that `pipelines.synfer.options` loads no torch."""

from ...lazy_imports import lazy_namespace

_import_structure = {
    "pipeline_feranno": ["FERAnnoPipeline", "FERAnnoPipelineOutput"],
    "pipeline_output": ["SynFEREditOutput", "SynFERPipelineOutput"],
    "pipeline_synfer": ["SynFERPipeline"],
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)
