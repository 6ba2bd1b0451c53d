from .pipeline_output import SynFERPipelineOutput
from .pipeline_synfer import SynFERPipeline

__all__ = ["SynFERPipeline", "SynFERPipelineOutput"]
