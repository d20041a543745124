"""Request and response bodies of the API, declared so the OpenAPI schema (and schemathesis) know them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "BatchItem",
    "BatchResponse",
    "ErrorResponse",
    "ExplainResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "Health",
    "ModelRef",
    "PredictionResponse",
    "Readiness",
    "ReloadResponse",
    "RolloutAction",
    "RolloutResponse",
    "RolloutStart",
]


class ModelRef(BaseModel):
    name: str
    version: int


class InputInfo(BaseModel):
    sha256: str
    format: str
    width: int
    height: int


class FramePrediction(BaseModel):
    """One sampled frame of a clip: its time, its own request (for feedback on it) and its answer."""

    time: float = Field(description="Seconds into the clip.")
    request_id: str
    label: str
    probabilities: dict[str, float]


class PredictionResponse(BaseModel):
    request_id: str = Field(description="Quote it in POST /v1/feedback (for a clip: its first frame's).")
    label: str
    confidence: float = Field(description="Probability of the label (the classifier is calibrated in training).")
    probabilities: dict[str, float] = Field(description="Per class, in the model's class order.")
    unsure: bool = Field(description="Confidence is under the serving threshold.")
    prediction_set: list[str] | None = Field(
        description="The classes that cannot be ruled out at `coverage` (most probable first): the set holds the true "
        "class for that share of cases of each class (split-conformal, calibrated in training on images the model "
        "never saw). null for a model registered without a calibration part."
    )
    coverage: float | None = Field(description="serving.coverage, the guarantee of prediction_set; null without one.")
    abstain: bool = Field(
        description="The prediction set is not exactly one class: the model cannot decide at this coverage."
    )
    model: ModelRef
    arm: Literal["champion", "challenger"]
    latency_ms: float
    input: InputInfo
    frames: list[FramePrediction] | None = Field(
        None, description="A video clip: its sampled frames; the answer is the mean of their probabilities."
    )


class PersistentRegion(BaseModel):
    filtration: Literal["sublevel", "superlevel"]
    dim: int = Field(description="Homology dimension: 0 a component, 1 a loop.")
    birth: float
    death: float
    persistence: float
    birth_pixel: list[int] = Field(description="(row, column) in the preprocessed image where it is born.")
    death_pixel: list[int] | None = Field(description="Where it dies; null for the component that never does.")


class GroupEffect(BaseModel):
    group: str = Field(description="An extractor (a group of features).")
    effect: float = Field(
        description="How much the answered class's probability falls when this group sees a blank image instead."
    )


class ExplainResponse(BaseModel):
    label: str
    probabilities: dict[str, float]
    model: ModelRef
    method: str = Field(description="How the heat map was made.")
    heatmap_png: str = Field(description="Base64 PNG: the preprocessed image, the evidence for the answer in red.")
    heatmap: list[list[float]] = Field(
        description="The occlusion map on the preprocessed image's pixels: probability drop when occluded."
    )
    patch: int = Field(description="Side in pixels of the occluded squares.")
    diagrams_png: str | None = Field(description="Base64 PNG of the persistence diagrams (topological models).")
    regions: list[PersistentRegion] = Field(description="The most persistent features, located (topological models).")
    groups: list[GroupEffect] | None = Field(description="Per feature group, its effect on the answer.")


class ErrorResponse(BaseModel):
    """Every error answer: a sentence for people, a code for programs."""

    detail: str = Field(description="What is wrong, in one sentence.")
    reason: str | None = Field(None, description="A code: too_small, invalid_request, rate_limited, ...")
    errors: list[dict[str, Any]] | None = Field(
        None, description="For invalid_request: each problem's location (loc), message (msg) and type."
    )


#: What an endpoint that takes a body may answer to a malformed one.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body cannot be parsed (not JSON, not UTF-8, broken multipart)."},
    422: {"model": ErrorResponse, "description": "A field of the body or a parameter is invalid; errors says which."},
}


class BatchItem(BaseModel):
    filename: str | None
    status: int = Field(description="200, or the status a single upload of this file would have had.")
    prediction: PredictionResponse | None = None
    error: ErrorResponse | None = None


class BatchResponse(BaseModel):
    items: list[BatchItem]


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=36)
    label: str = Field(min_length=1, max_length=255)


class FeedbackResponse(BaseModel):
    request_id: str
    label: str
    predicted: str | None
    correct: bool | None
    rollout: dict[str, Any] | None = Field(None, description="A decision the feedback triggered, if any.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model: str
    champion: int | None
    challenger: int | None


class ReloadResponse(BaseModel):
    model: str
    champion: int | None
    challenger: int | None
    rollout: dict[str, Any] | None


class RolloutStart(BaseModel):
    mode: Literal["shadow", "canary", "ab"]


class RolloutAction(BaseModel):
    reason: str | None = Field(None, max_length=2000)
    force: bool = Field(False, description="advance only: advance whatever the policy says.")


class RolloutResponse(BaseModel):
    rollout: dict[str, Any] | None
    decision: dict[str, Any] | None = None
    serving: dict[str, Any] | None = None
