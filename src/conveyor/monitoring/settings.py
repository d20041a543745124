"""What monitoring watches for, when it alerts, and when it asks for a retrain.

``conveyor.config.Settings`` carries these as ``monitoring``.
"""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, Field

__all__ = ["AlertRules", "MonitoringSettings", "RetrainPolicy"]


class AlertRules(BaseModel):
    """A rule fires when its measure reaches its threshold; ``None`` switches the rule off."""

    drift_share: float | None = Field(
        0.5, ge=0.0, le=1.0, description="Share of drifted columns (features and image statistics) that fires."
    )
    metric_drop: float | None = Field(
        0.1,
        ge=0.0,
        le=1.0,
        validation_alias=AliasChoices("metric_drop", "f1_drop"),
        description="Drop of training.metric on the new labelled batch below the champion's test value that fires "
        "(formerly f1_drop, still accepted).",
    )
    ood_share: float | None = Field(
        0.2, ge=0.0, le=1.0, description="Share of inputs out of the training distribution that fires."
    )
    coverage: bool = Field(
        True,
        description="Fire when the prediction sets' coverage on the labelled inputs lies below serving.coverage by "
        "more than its sampling interval (the 95% interval's upper end is under it): the new cases are no longer "
        "exchangeable with the calibration ones.",
    )
    subgroup: bool = Field(
        True,
        description="Fire when a subgroup of the labelled inputs with enough cases (training.subgroups.min_cases) "
        "falls behind the whole batch by more than its interval: its training.metric's 95% interval lies wholly "
        "below the batch's value.",
    )


class RetrainPolicy(BaseModel):
    """When a monitoring run asks for a retrain (the orchestration acts on it)."""

    min_new_labelled: int = Field(
        200, ge=1, description="New labelled images since the champion's dataset version that are enough on their own."
    )
    on_drift: bool = Field(True, description="Retrain when the drift rule fires.")
    on_performance_drop: bool = Field(True, description="Retrain when the metric drop rule fires.")
    min_labelled_for_drift: int = Field(
        10, ge=0, description="Retraining on drift needs at least this many new labelled images (else: alert only)."
    )


class MonitoringSettings(BaseModel):
    """Alert rules, webhook, retrain policy and how drift, OOD and reports are computed."""

    alerts: AlertRules = AlertRules()
    retrain: RetrainPolicy = RetrainPolicy()
    webhook_url: str | None = Field(None, description="POSTed one JSON object per run with fired alerts.")
    webhook_timeout_s: float = Field(5.0, gt=0.0, description="Timeout of the webhook POST.")
    column_threshold: float | None = Field(
        None, description="Drift threshold of every column's test; default Evidently's per test (p 0.05, distance 0.1)."
    )
    ood_quantile: float = Field(
        0.99,
        gt=0.5,
        lt=1.0,
        description="An input is out of distribution beyond this quantile of the training "
        "inputs' distances to the training data.",
    )
    report_max_columns: int = Field(
        24, ge=1, description="Columns drawn in the HTML report (most drifted first); the JSON summary has every one."
    )
    report_max_reference_rows: int = Field(
        5000, ge=10, description="Reference rows drawn in the HTML report (a seeded sample beyond this)."
    )
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of the 95% intervals of the batch's metrics.")
    seed: int = 0
