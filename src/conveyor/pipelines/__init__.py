"""The three pipelines (ingest, train, monitor), the embedded runner, and the drop-folder watcher."""

from conveyor.pipelines.definitions import PIPELINES, pipeline
from conveyor.pipelines.runner import Pipeline, PipelineFailed, RunState, Task, run_pipeline

__all__ = ["PIPELINES", "Pipeline", "PipelineFailed", "RunState", "Task", "pipeline", "run_pipeline"]
