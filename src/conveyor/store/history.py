"""The monitoring runs as their history: one row each, with what the trend and the operations page plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from conveyor.store.db import session_scope
from conveyor.store.models import MonitoringRun

__all__ = ["HistoryRow", "runs_history"]


@dataclass(frozen=True)
class HistoryRow:
    id: int
    at: datetime
    kind: str
    source: str
    model_version: int | None
    n_current: int
    n_labelled: int
    drift_share: float | None
    f1: float | None
    ood_share: float | None
    alerts: list[str]
    retrain: bool
    retrain_reason: str
    report_path: str | None
    mlflow_run_id: str | None = None
    metric: str | None = None  # training.metric, what score and the dummies' scores are
    score: float | None = None  # the champion's on the labelled inputs
    dummies: dict[str, float | None] = field(default_factory=dict)  # each dummy baseline's score
    coverage: float | None = None  # the prediction sets' on the labelled inputs
    coverage_target: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["at"] = self.at.isoformat()
        return out


def runs_history(engine: Engine, limit: int | None = 50) -> list[HistoryRow]:
    """The monitoring runs, oldest first (the last ``limit`` of them)."""
    with session_scope(engine) as session:
        query = select(MonitoringRun).order_by(MonitoringRun.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = list(session.scalars(query))[::-1]
        return [
            HistoryRow(
                r.id,
                r.at,
                r.kind,
                r.source,
                r.model_version,
                r.n_current,
                r.n_labelled,
                r.drift_share,
                r.f1,
                r.ood_share,
                [a["rule"] for a in r.alerts or []],
                r.retrain,
                r.retrain_reason,
                r.report_path,
                *_history_scores(r.mlflow_run_id, r.summary or {}),
            )
            for r in rows
        ]


def _history_scores(
    run_id: str | None, summary: dict[str, Any]
) -> tuple[str | None, str | None, float | None, dict[str, float | None], float | None, float | None]:
    """What a run's summary holds for the history's plots: the metric, the champion's and the dummies' scores, and
    the prediction sets' coverage with its target."""
    metric = summary.get("metric")
    performance = summary.get("performance") or {}
    dummies = {name: (performance.get(name) or {}).get(metric) for name in ("dummy_by_reference", "dummy_by_current")}
    conformal = summary.get("conformal") or {}
    return run_id, metric, summary.get("score"), dummies, conformal.get("coverage"), conformal.get("target")
