"""What the operations page shows: the models being served with their scores, the rollout and its evidence, the
monitoring history (as numbers and as one plot), its alerts, the review queue's size and the audit log."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings

__all__ = ["OpsView", "history_png", "ops_view"]


@dataclass
class OpsView:
    models: list[dict[str, Any]]  # champion and challenger: version, alias, when, test metrics
    rollout: dict[str, Any] | None  # the newest rollout with its decisions (the evidence of each)
    history: list[dict[str, Any]]  # the monitoring runs, oldest first
    review_open: int
    audit: list[dict[str, Any]]  # newest first
    metric: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _alias_details(settings: Settings, version: int, alias: str) -> dict[str, Any]:
    """The audit entry that gave ``version`` its ``alias`` (its candidate and test metrics), newest first."""
    from conveyor.tracking.registry import history

    for record in reversed(history(settings, settings.model_name)):
        if record.action == f"set_{alias}" and record.details.get("version") == version:
            return {"at": record.at.isoformat(), "by": record.actor, "reason": record.reason, **record.details}
    return {}


def ops_view(settings: Settings, engine: Any, *, audit_rows: int = 50, history_rows: int = 100) -> OpsView:
    """Everything the page shows, read from the registry, the metadata DB and the monitoring history."""
    from conveyor.serving.review import open_items
    from conveyor.serving.rollout import latest_rollout
    from conveyor.store.history import runs_history
    from conveyor.tracking.registry import CHALLENGER, CHAMPION, current_version, history

    models = []
    for alias in (CHAMPION, CHALLENGER):
        version = current_version(settings, alias)
        if version is not None:
            details = _alias_details(settings, version, alias)
            models.append({"alias": alias, "version": version, "candidate": details.get("candidate"),
                           "at": details.get("at"), "metrics": details.get("metrics") or {},
                           "dataset_version": details.get("dataset_version")})  # fmt: skip
    rollout = latest_rollout(engine)
    _, review_open = open_items(engine, limit=1)
    audit = [
        {"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "subject": r.subject, "reason": r.reason}
        for r in history(settings)[-audit_rows:][::-1]
    ]
    runs = [row.to_dict() for row in runs_history(engine, limit=history_rows)]
    return OpsView(models, None if rollout is None else rollout.to_dict(), runs, review_open, audit,
                   settings.training.metric)  # fmt: skip


def history_png(view: OpsView) -> bytes | None:
    """The monitoring history as one figure: drift share; the champion's metric against the two dummy baselines;
    the prediction sets' coverage against its target. None before the first run."""
    from datetime import datetime

    import numpy as np
    from matplotlib.figure import Figure

    runs = view.history
    if not runs:
        return None
    at = np.array([datetime.fromisoformat(r["at"]) for r in runs], dtype="datetime64[s]")
    figure = Figure(figsize=(9.0, 6.6), dpi=100)
    drift, score, coverage = (figure.add_subplot(3, 1, i) for i in (1, 2, 3))
    drift.plot(at, [r["drift_share"] for r in runs], marker="o", color="#b45309", label="share of drifted columns")
    drift.set(ylabel="drift", ylim=(-0.02, 1.02))
    score.plot(at, [r["score"] for r in runs], marker="o", color="#2563eb", label=f"champion {view.metric}")
    for name, colour in (("dummy_by_reference", "#9ca3af"), ("dummy_by_current", "#6b7280")):
        score.plot(at, [r["dummies"].get(name) for r in runs], linestyle="--", color=colour, label=name)
    score.set(ylabel=view.metric, ylim=(-0.02, 1.02))
    coverage.plot(at, [r["coverage"] for r in runs], marker="o", color="#059669", label="prediction sets' coverage")
    targets = [r["coverage_target"] for r in runs if r["coverage_target"] is not None]
    if targets:
        coverage.axhline(targets[-1], color="#059669", linestyle=":", label=f"target {targets[-1]:.0%}")
    coverage.set(ylabel="coverage", ylim=(-0.02, 1.02))
    for axes in (drift, score, coverage):
        axes.legend(loc="lower left", fontsize=8)
        axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
