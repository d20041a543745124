"""Monitoring a time window of the prediction log, with the feedback labels that have arrived by then.

The serving stage owns the log; monitoring reads it through :class:`PredictionLog`, a small protocol, so either side
can change its storage. :class:`TablePredictionLog` reads a table of the metadata DB by column names (reflected, so
this module does not import the serving code); :class:`ListPredictionLog` holds records in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from conveyor.config import Settings
from conveyor.errors import ConveyorError, InvalidImageError, NotFoundError

__all__ = [
    "ListPredictionLog",
    "PredictionLog",
    "PredictionRecord",
    "TablePredictionLog",
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
class TablePredictionLog:
    """A prediction table in the metadata DB, read by column name.

    Expected columns of ``table``: ``id``, ``created_at`` (or ``at``), ``probabilities`` (JSON ``{class: p}``),
    optional ``model_version``, ``path``; feedback either as a ``feedback``/``feedback_label`` column of the same
    table, or in ``feedback_table`` with ``prediction_id`` and ``label`` (the latest row of each prediction wins).
    """

    settings: Settings
    table: str = "predictions"
    feedback_table: str | None = "feedback"

    def records(self, since: datetime, until: datetime) -> Sequence[PredictionRecord]:
        import json

        from sqlalchemy import MetaData, Table, select
        from sqlalchemy.exc import NoSuchTableError

        from conveyor.workspace import open_workspace

        engine = open_workspace(self.settings)
        meta = MetaData()
        try:
            table = Table(self.table, meta, autoload_with=engine)
        except Exception as exc:  # NoSuchTableError, or a driver error
            raise NotFoundError(
                f"the prediction log table {self.table!r} does not exist (is the server set up?)"
            ) from exc
        cols = table.c
        at_col = cols["created_at"] if "created_at" in cols else cols["at"]
        with engine.connect() as conn:
            rows = conn.execute(select(table).where(at_col >= since, at_col < until).order_by(at_col)).mappings().all()
            feedback: dict[str, str] = {}
            if self.feedback_table and not any(c in cols for c in ("feedback", "feedback_label")):
                try:
                    fb = Table(self.feedback_table, meta, autoload_with=engine)
                    order = fb.c["id"] if "id" in fb.c else fb.c["prediction_id"]
                    query = select(fb.c["prediction_id"], fb.c["label"]).order_by(order)
                    for prediction_id, label in conn.execute(query):
                        feedback[str(prediction_id)] = str(label)
                except NoSuchTableError:  # no feedback table yet: no labels (anything else is a real error)
                    feedback = {}
        out: list[PredictionRecord] = []
        for row in rows:
            proba = row["probabilities"]
            proba = json.loads(proba) if isinstance(proba, str) else dict(proba)
            at = row[at_col.name]
            at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
            given = row.get("feedback") or row.get("feedback_label")
            label = str(given) if given is not None else feedback.get(str(row["id"]))
            out.append(
                PredictionRecord(
                    str(row["id"]),
                    at,
                    {str(k): float(v) for k, v in proba.items()},
                    row.get("model_version"),
                    label,
                    row.get("path"),
                )
            )
        return out


def default_prediction_log(settings: Settings) -> PredictionLog:
    """The serving stage's log: its own adapter (``conveyor.serving.log.prediction_log(settings)``) if it has one,
    else :class:`TablePredictionLog` on the ``predictions`` table."""
    try:
        from conveyor.serving import log as serving_log  # type: ignore[attr-defined,unused-ignore]

        return serving_log.prediction_log(settings)  # type: ignore[no-any-return,unused-ignore]
    except (ImportError, AttributeError):
        return TablePredictionLog(settings)


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
    limits = DecodeLimits(min_side=settings.ingest.min_side, max_pixels=settings.ingest.max_pixels)
    inspections, images, kept = [], [], []
    for index, r in enumerate(records):
        if r.path is None:
            continue
        path = Path(r.path) if Path(r.path).is_absolute() else settings.home / r.path
        try:
            inspection, image = read_image_file(champion, path, limits)
        except InvalidImageError:
            continue
        inspections.append(inspection)
        images.append(image)
        kept.append(index)
    extractors = monitored_extractors(settings, champion)
    if kept and len(kept) == len(records):
        stats = image_stats_of(inspections)
        features = compute_features_of(champion, extractors, images) if extractors else None
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
