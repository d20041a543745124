"""Monitoring reads the served predictions with their feedback labels, and never the shadow arm's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor.config import Settings
from conveyor.monitoring.predictions import ServedPredictionLog, default_prediction_log
from conveyor.store.db import session_scope
from conveyor.store.models import Feedback, Prediction
from conveyor.workspace import open_workspace


def row(request: str, arm: str, label: str, at: datetime) -> Prediction:
    return Prediction(
        request_id=request, at=at, model_name="conveyor", model_version=1 if arm == "champion" else 2, arm=arm,
        input_sha256="0" * 64, format="png", width=64, height=64, brightness=0.5, contrast=0.1, label=label,
        confidence=0.9, probabilities={"a": 0.9, "b": 0.1} if label == "a" else {"a": 0.1, "b": 0.9}, latency_ms=3.0,
    )  # fmt: skip


def test_served_predictions_come_with_their_feedback(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "ws")
    now = datetime.now(UTC)
    with session_scope(open_workspace(settings)) as session:
        session.add_all(
            [
                row("r1", "champion", "a", now - timedelta(minutes=3)),
                row("r1", "shadow", "b", now - timedelta(minutes=3)),
                row("r2", "challenger", "b", now - timedelta(minutes=2)),
                row("old", "champion", "a", now - timedelta(days=2)),
                Feedback(request_id="r1", label="b", who="dr. x"),
            ]
        )
    log = default_prediction_log(settings)
    assert isinstance(log, ServedPredictionLog)
    records = log.records(now - timedelta(hours=1), now)
    assert [(r.id, r.model_version, r.feedback, r.proba["a"]) for r in records] == [
        ("r1", 1, "b", 0.9),
        ("r2", 2, None, 0.1),
    ]
