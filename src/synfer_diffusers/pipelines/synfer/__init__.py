from .pipeline_feranno import FERAnnoPipeline, FERAnnoPipelineOutput
from .pipeline_output import SynFEREditOutput, SynFERPipelineOutput
from .pipeline_synfer import SynFERPipeline

__all__ = ["FERAnnoPipeline", "FERAnnoPipelineOutput", "SynFEREditOutput", "SynFERPipeline", "SynFERPipelineOutput"]
