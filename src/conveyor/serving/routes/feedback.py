"""POST /v1/feedback: the label a clinician gives a request later; it may decide a rollout stage."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from conveyor.serving.deps import FeedbackIdentity, ServiceDep, ServingDep, SettingsDep
from conveyor.serving.schemas import BODY_ERRORS, ErrorResponse, FeedbackRequest, FeedbackResponse
from conveyor.serving.service import PredictionService
from conveyor.store.db import session_scope

router = APIRouter(prefix="/v1", tags=["feedback"])


def record_feedback(service: PredictionService, body: FeedbackRequest, who: str) -> tuple[str | None, bool]:
    """Store the label; returns (what was predicted, whether a rollout is in progress)."""
    from conveyor.store.models import Feedback, Prediction

    service.log.flush()  # the prediction may still be queued
    with session_scope(service.engine) as session:
        rows = session.scalars(select(Prediction).where(Prediction.request_id == body.request_id)).all()
        answered = [r for r in rows if r.arm != "shadow" and r.label is not None]
        if not answered:
            raise HTTPException(404, f"no prediction with request id {body.request_id!r}")
        classes = sorted((answered[0].probabilities or {}).keys())
        if body.label not in classes:
            raise HTTPException(
                422, f"label {body.label!r} is not a class of model version {answered[0].model_version}; "
                f"expected one of {classes}",
            )  # fmt: skip
        existing = session.scalars(select(Feedback).where(Feedback.request_id == body.request_id)).first()
        if existing is None:
            session.add(Feedback(request_id=body.request_id, label=body.label, who=who))
        else:
            existing.label, existing.who = body.label, who
        in_rollout = any(r.rollout_id is not None for r in rows)
        return answered[0].label, in_rollout


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        **BODY_ERRORS,
        401: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    },
)
async def feedback(
    body: FeedbackRequest, service: ServiceDep, settings: SettingsDep, serving: ServingDep, who: FeedbackIdentity
) -> FeedbackResponse:
    """Label a prediction, as the identity of the bearer's feedback token (stored with the label and named in any
    rollout decision it leads to)."""
    from conveyor.serving import rollout

    predicted, in_rollout = await run_in_threadpool(record_feedback, service, body, who)
    decision = None
    if in_rollout and serving.rollout.auto and service.rollout is not None:

        def decide() -> dict[str, object] | None:
            try:
                made, state = rollout.advance(settings, service.engine, "rollout-policy")
            except Exception:  # the rollout ended meanwhile (another feedback decided it): nothing to do
                return None
            if made.action == "wait":
                return None
            service.refresh()
            return {"decision": made.to_dict(), "rollout": state.to_dict()}

        decision = await run_in_threadpool(decide)
    return FeedbackResponse(
        request_id=body.request_id,
        label=body.label,
        predicted=predicted,
        correct=None if predicted is None else predicted == body.label,
        rollout=decision,
    )
