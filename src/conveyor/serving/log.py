"""The prediction log as monitoring reads it: the answers served (champion or canary arm, not the silent shadow),
each with the clinician's label once feedback has arrived (joined on the request id)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from conveyor.config import Settings
from conveyor.monitoring.predictions import PredictionRecord
from conveyor.serving.tables import Feedback, Prediction
from conveyor.store.db import session_scope
from conveyor.workspace import open_workspace

__all__ = ["ServedPredictionLog", "prediction_log"]


@dataclass
class ServedPredictionLog:
    """Reads the serving stage's ``predictions`` and ``feedback`` tables."""

    settings: Settings

    def records(self, since: datetime, until: datetime) -> Sequence[PredictionRecord]:
        engine = open_workspace(self.settings)
        query = (
            select(Prediction, Feedback.label)
            .outerjoin(Feedback, Feedback.request_id == Prediction.request_id)
            .where(Prediction.at >= since, Prediction.at < until)
            .where(Prediction.arm != "shadow", Prediction.label.is_not(None))
            .order_by(Prediction.at, Prediction.id)
        )
        with session_scope(engine) as session:
            rows = session.execute(query).all()
            return [
                PredictionRecord(
                    id=p.request_id,
                    at=p.at if p.at.tzinfo is not None else p.at.replace(tzinfo=UTC),
                    proba={str(k): float(v) for k, v in (p.probabilities or {}).items()},
                    model_version=p.model_version,
                    feedback=label,
                )
                for p, label in rows
            ]


def prediction_log(settings: Settings) -> ServedPredictionLog:
    """The log :func:`conveyor.monitoring.predictions.default_prediction_log` uses."""
    return ServedPredictionLog(settings)
