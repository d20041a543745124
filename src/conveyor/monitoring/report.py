"""The monitoring report's contract: the JSON summary of a run (``conveyor monitor --json``, ``summary.json``, the
database row), typed. The run checks what it produces against it, and its readers (the CLI here, the pipelines'
``MonitorOutcome``) read through it, so a renamed field fails where it is read instead of reading as ``None``.

Fields beyond these are kept (``extra="allow"``): the source's own facts (ingest counts, a log's window) and the
detail tables (drift per column, OOD inputs, plots) are documented by their producers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["FiredAlert", "MonitorReport", "Performance", "Retrain", "Score"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Score(_Open):
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    roc_auc: float | None = None


class Performance(_Open):
    """The champion and both dummy baselines on the labelled inputs."""

    model: Score
    dummy_by_reference: Score
    dummy_by_current: Score


class FiredAlert(_Open):
    rule: str
    message: str = ""


class Retrain(_Open):
    retrain: bool
    reason: str = ""
    reasons: list[str] = []


class MonitorReport(_Open):
    """One monitoring run: what was compared with what, what it found, what it decided, where the report is."""

    at: str
    kind: Literal["batch", "log"]
    source: str
    model_version: int
    served_model_version: int | None = None
    reference_version: str
    dataset_version: str | None = None
    n_reference: int
    n_current: int
    n_labelled: int
    drift_share: float | None
    drifted_columns: list[str]
    performance: Performance | None
    metric: str = "balanced_accuracy"  # training.metric, what the metric_drop alert compares
    score: float | None = None  # the champion's value of it on the labelled inputs
    champion_test_score: float | None = None  # ... and on its test split
    champion_test_f1: float | None = None
    ood_share: float | None
    conformal: dict[str, Any] | None = None  # the prediction sets' coverage on the labelled inputs
    subgroups: dict[str, Any] | None = None  # the champion per subgroup of the labelled inputs (SubgroupReport)
    alerts: list[FiredAlert]
    retrain: Retrain
    report: str
    mlflow_run_id: str | None = None
    id: int | None = None
