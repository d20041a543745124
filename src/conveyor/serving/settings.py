"""Serving settings: limits on uploads, the unsure threshold, the admin token, reload and rollout policy."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

__all__ = ["RolloutPolicySettings", "ServingSettings"]


class RolloutPolicySettings(BaseModel):
    """When a rollout stage may advance (see :mod:`conveyor.serving.rollout`)."""

    canary_stages: tuple[float, ...] = Field(
        (0.01, 0.5, 1.0), description="Shares of traffic the challenger gets at each canary stage, in order."
    )
    ab_share: float = Field(0.5, gt=0.0, lt=1.0, description="Share of traffic the challenger gets in an A/B test.")
    min_feedback: int = Field(30, ge=1, description="Labelled predictions each arm needs in a stage before a decision.")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Significance level of the one-sided Fisher exact tests.")
    min_feedback_sources: int = Field(
        2,
        ge=1,
        description="Distinct feedback identities a stage's labels must come from before the policy decides "
        "(one client, however many labels it sends, cannot move a rollout alone).",
    )
    auto: bool = Field(True, description="Decide (advance or roll back) as soon as feedback allows, without an admin.")
    on_new_challenger: Literal["shadow", "canary", "ab", "none"] = Field(
        "canary", description="The rollout the monitor pipeline starts when a retrain registers a challenger."
    )

    @field_validator("canary_stages")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0.0 < s <= 1.0 for s in value) or list(value) != sorted(set(value)):
            raise ValueError(f"canary_stages must be increasing shares in (0, 1], got {value}")
        return value


class ServingSettings(BaseModel):
    """What ``conveyor serve`` needs."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535)
    production: bool = Field(False, description="Refuse to start without an admin token.")
    admin_token: str | None = Field(None, description="Bearer token of the admin endpoints (none: they answer 401).")
    feedback_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Who may label predictions (POST /v1/feedback): identity -> bearer token, separate from the admin "
        "token. None set: feedback answers 401.",
    )
    feedback_per_minute: int = Field(120, ge=1, description="Feedback requests one identity may send per minute.")

    @field_validator("feedback_tokens")
    @classmethod
    def _distinct_tokens(cls, value: dict[str, str]) -> dict[str, str]:
        """Every identity has a token of its own: an empty one would let anyone in, a shared one blur who spoke."""
        empty = sorted(who for who, token in value.items() if not token.strip())
        if empty:
            raise ValueError(f"serving.feedback_tokens: {', '.join(empty)} has an empty token")
        if len(set(value.values())) < len(value):
            raise ValueError("serving.feedback_tokens: two identities share a token; give each its own")
        return value

    max_upload_bytes: int = Field(32 << 20, ge=1, description="Largest accepted upload (413 above).")
    max_pixels: int = Field(
        50_000_000, ge=1, description="Largest width x height x frames (413 above, before decoding)."
    )
    max_batch: int = Field(32, ge=1, description="Most images in one /v1/predict/batch request.")
    unsure_below: float = Field(0.7, ge=0.0, le=1.0, description="Confidence under which the page says 'unsure'.")
    coverage: float = Field(
        0.9, gt=0.0, lt=1.0, description="Of the prediction sets: the share of cases whose set holds the true class."
    )
    mlflow_ui_url: str | None = Field(
        None, description="Base URL of the MLflow UI (e.g. http://mlflow:5000): /ops links each run to it."
    )
    review_max_open: int = Field(
        1000, ge=0, description="Open items the review queue holds; unsure answers beyond are not queued (0: no queue)."
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Scoring processes of conveyor serve (each loads the model); default every core, 1: "
        "decode and score in the server process.",
    )
    reload_interval_s: float = Field(
        30.0, ge=0.0, description="Seconds between checks of the registry aliases and rollout state (0: never)."
    )
    rollout: RolloutPolicySettings = RolloutPolicySettings()
