"""Monitoring a time window of the prediction log, with the feedback labels that have arrived by then.

Serving writes the log (the ``predictions`` and ``feedback`` tables of :mod:`conveyor.store.models`); monitoring
reads it through :class:`PredictionLog`, a small protocol: :class:`ServedPredictionLog` reads those tables,
:class:`ListPredictionLog` holds records in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from conveyor.config import Settings
from conveyor.errors import ConveyorError, InvalidImageError

__all__ = [
    "ListPredictionLog",
    "PredictionLog",
    "PredictionRecord",
    "ServedPredictionLog",
    "default_prediction_log",
    "monitor_log",
]


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction.

    Attributes:
        id: the log's id of the prediction.
        at: when it was served (timezone-aware).
        proba: probability per class name.
        model_version: the version that answered (a canary's may differ from the champion's).
        feedback: the true label, once a clinician has given it; None before.
        path: the input file, if the server kept it (absolute, or relative to the workspace): enables data drift.
    """

    id: str
    at: datetime
    proba: dict[str, float]
    model_version: int | None = None
    feedback: str | None = None
    path: str | None = None


class PredictionLog(Protocol):
    """What monitoring needs of the prediction log."""

    def records(self, since: datetime, until: datetime) -> Sequence[PredictionRecord]:
        """Predictions served in ``[since, until)``, oldest first, with the feedback known now."""
        ...


@dataclass
class ListPredictionLog:
    """An in-memory log (tests, scripts)."""

    items: list[PredictionRecord] = field(default_factory=list)

    def records(self, since: datetime, until: datetime) -> Sequence[PredictionRecord]:
        return sorted((r for r in self.items if since <= r.at < until), key=lambda r: r.at)


@dataclass
class ServedPredictionLog:
    """The answers served (champion or canary arm, not the silent shadow), each with the clinician's label once
    feedback has arrived (joined on the request id)."""

    settings: Settings

    def records(self, since: datetime, until: datetime) -> Sequence[PredictionRecord]:
        from sqlalchemy import select

        from conveyor.store.db import session_scope
        from conveyor.store.models import Feedback, Prediction
        from conveyor.workspace import open_workspace

        query = (
            select(Prediction, Feedback.label)
            .outerjoin(Feedback, Feedback.request_id == Prediction.request_id)
            .where(Prediction.at >= since, Prediction.at < until)
            .where(Prediction.arm != "shadow", Prediction.label.is_not(None))
            .order_by(Prediction.at, Prediction.id)
        )
        with session_scope(open_workspace(self.settings)) as session:
            return [
                PredictionRecord(
                    id=p.request_id,
                    at=p.at if p.at.tzinfo is not None else p.at.replace(tzinfo=UTC),
                    proba={str(k): float(v) for k, v in (p.probabilities or {}).items()},
                    model_version=p.model_version,
                    feedback=label,
                )
                for p, label in session.execute(query).all()
            ]


def default_prediction_log(settings: Settings) -> PredictionLog:
    """The log the server writes in this workspace."""
    return ServedPredictionLog(settings)


def monitor_log(
    settings: Settings, log: PredictionLog, since: datetime, until: datetime | None = None
) -> dict[str, Any]:
    """Monitor the predictions served in ``[since, until)``.

    Prediction drift (classes, confidence) always; performance against the dummies on the predictions whose feedback
    has arrived (late labels joined to their predictions by id); data drift and OOD when the server kept every
    input's file (read and scored with the champion's pipeline, not ingested).

    Raises:
        ConveyorError: no prediction in the window.
    """
    from conveyor.data.decode import DecodeLimits
    from conveyor.monitoring.inputs import (
        Current,
        compute_features_of,
        image_stats_of,
        load_champion,
        monitored_extractors,
        read_image_file,
    )
    from conveyor.monitoring.monitor import analyse

    until = until or datetime.now(UTC)
    records = list(log.records(since, until))
    if not records:
        raise ConveyorError(f"no prediction was served between {since.isoformat()} and {until.isoformat()}")
    champion = load_champion(settings)
    classes = champion.classes
    proba = np.array([[r.proba.get(c, 0.0) for c in classes] for r in records], dtype=np.float64)
    names = [r.id for r in records]
    labels = [r.feedback for r in records]
    features = stats = None
    limits = DecodeLimits.of(settings)
    inspections, blobs, kept = [], [], []
    for index, r in enumerate(records):
        if r.path is None:
            continue
        path = Path(r.path) if Path(r.path).is_absolute() else settings.home / r.path
        try:
            inspection, data = read_image_file(path, limits)
        except InvalidImageError:
            continue
        inspections.append(inspection)
        blobs.append(data)
        kept.append(index)
    extractors = monitored_extractors(settings, champion)
    if kept and len(kept) == len(records):
        stats = image_stats_of(inspections)
        features = compute_features_of(champion, extractors, blobs) if extractors else None
    extra = {
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "inputs_with_files": len(kept),
        "with_feedback": sum(label is not None for label in labels),
        "served_model_versions": sorted({r.model_version for r in records if r.model_version is not None}),
    }
    current = Current(
        "log",
        f"prediction log {since.isoformat()} .. {until.isoformat()}",
        names,
        proba,
        labels,
        features,
        stats,
        None,
        records[-1].model_version,
        extra,
    )
    return analyse(settings, current, champion=champion)
