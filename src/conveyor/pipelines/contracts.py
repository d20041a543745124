"""What the pipeline tasks hand each other and the demo story reads: typed, so a renamed field fails validation
(and type checking) where it is read, instead of reading as a silent ``None``.

A task's output is stored as JSON in the run's state (so a re-run resumes); these models are how the tasks write and
read it. Fields a task adds beyond these are kept (``extra="allow"``) but nobody downstream relies on them.

The same models are the contract of the CLI's ``--json`` output to other programs: ``conveyor schema NAME`` prints
one's JSON schema, and the Airflow DAGs, which run in their own environment and cannot import conveyor, keep in XCom
the fields it lists and fail a task whose output lacks one it requires.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from conveyor.monitoring.report import FiredAlert, Performance, Retrain

__all__ = [
    "CONTRACTS",
    "FeaturesOutcome",
    "IngestOutcome",
    "MonitorOutcome",
    "Retrain",
    "TrainOutcome",
    "dump",
    "schema",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class IngestOutcome(_Open):
    """What ``conveyor ingest`` did with a source: where every file ended, and the dataset version it made."""

    source: str
    seen: int
    stored: int
    duplicates: int
    conflicts: int
    quarantined: int
    by_reason: dict[str, int]
    dataset_version: str | None


class FeaturesOutcome(_Open):
    """What ``conveyor features`` computed, found cached, and failed on (sha256 and reason each)."""

    computed: int
    cached: int
    failed: list[dict[str, str]]


class MonitorOutcome(_Open):
    """The monitor task's output, the part of :class:`conveyor.monitoring.report.MonitorReport` the pipeline passes
    on: what it found and whether it asks for a retrain (``skipped`` when there was no champion to monitor against,
    which asks for the first model)."""

    id: int | None = None
    drift_share: float | None = None
    drifted_columns: list[str] = []
    performance: Performance | None = None
    ood_share: float | None = None
    alerts: list[FiredAlert] = []
    retrain: Retrain
    report: str | None = None
    skipped: str | None = None

    @property
    def drifted(self) -> bool:
        return any(alert.rule == "drift_share" for alert in self.alerts)


class TrainOutcome(_Open):
    """The train task's output: the data it trained on, the search, the winner, the gate and the registration."""

    dataset_version: str
    metric: str = "balanced_accuracy"  # training.metric, what the ranking and the gate were on
    classes: list[str] = []
    search: dict[str, Any]
    best: dict[str, Any]
    gate: dict[str, Any] | None = None
    registered_version: int | None = None
    alias: str | None = None
    parent_run_id: str | None = None

    @classmethod
    def of(cls, output: dict[str, Any]) -> TrainOutcome | None:
        """The outcome of a train task's output; None when the task was skipped (its output is only a status)."""
        return None if set(output) <= {"status"} else cls.model_validate(output)


def dump(model: BaseModel) -> dict[str, Any]:
    """A contract as the JSON object a task returns."""
    return model.model_dump(mode="json")


CONTRACTS: dict[str, type[BaseModel]] = {
    "ingest": IngestOutcome,
    "features": FeaturesOutcome,
    "train": TrainOutcome,
    "monitor": MonitorOutcome,
}
"""The command (and pipeline task) whose ``--json`` output each contract describes."""


def schema(name: str) -> dict[str, Any]:
    """The JSON schema of one contract (``properties``, ``required``), as ``conveyor schema NAME`` prints it.

    Raises:
        KeyError: no such contract.
    """
    return CONTRACTS[name].model_json_schema()
