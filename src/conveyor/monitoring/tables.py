"""The monitoring stage's tables in the metadata DB (portable between SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.store.models import Base, utcnow

__all__ = ["MonitoringRun"]


class MonitoringRun(Base):
    """One monitoring run: what was compared with what, what it found, and what it decided."""

    __tablename__ = "monitoring_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # batch | log
    source: Mapped[str] = mapped_column(Text)
    reference_version: Mapped[str | None] = mapped_column(String(32))  # the champion's training data
    dataset_version: Mapped[str | None] = mapped_column(String(32))  # the data after this batch was ingested
    model_version: Mapped[int | None] = mapped_column(Integer)
    n_current: Mapped[int] = mapped_column(Integer, default=0)
    n_labelled: Mapped[int] = mapped_column(Integer, default=0)
    drift_share: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    ood_share: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    report_path: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    alerts: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the fired rules
    retrain: Mapped[bool] = mapped_column(Boolean, default=False)
    retrain_reason: Mapped[str] = mapped_column(Text, default="")
