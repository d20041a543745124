"""Serving's tables in the metadata DB: the prediction log, clinicians' feedback, and rollouts.

Portable between SQLite and PostgreSQL (generic types only). Audit entries go to the shared ``audit_log``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.store.models import Base, utcnow

__all__ = ["Feedback", "Prediction", "Rollout"]


class Prediction(Base):
    """One model's answer to one request. A shadowed request has two rows: arm ``champion`` and arm ``shadow``."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("request_id", "arm", name="uq_prediction_request_arm"),
        Index("ix_predictions_rollout_stage", "rollout_id", "stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(16))  # champion | challenger | shadow
    rollout_id: Mapped[int | None] = mapped_column(Integer)
    stage: Mapped[int | None] = mapped_column(Integer)
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    brightness: Mapped[float] = mapped_column(Float)  # mean intensity in [0, 1], as ingest computes it
    contrast: Mapped[float] = mapped_column(Float)  # std of intensity in [0, 1]
    label: Mapped[str | None] = mapped_column(String(255))  # None when the model failed (see error)
    confidence: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column()
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class Feedback(Base):
    """The label a clinician gave a request later; a second label for the same request replaces the first."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), unique=True)
    label: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    who: Mapped[str] = mapped_column(String(255))


class Rollout(Base):
    """One rollout of a challenger: its mode, its current stage, and every decision taken on it."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mode: Mapped[str] = mapped_column(String(16))  # shadow | canary | ab
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | promoted | rolled_back
    stage: Mapped[int] = mapped_column(Integer, default=0)
    share: Mapped[float] = mapped_column(Float)  # of traffic answered by the challenger now (0 in shadow mode)
    champion_version: Mapped[int] = mapped_column(Integer)
    challenger_version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    decisions: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"items": [{at, action, reason, stats}, ...]}
