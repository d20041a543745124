"""POST /v1/feedback: the label a clinician gives a request later; it may decide a rollout stage."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from conveyor.errors import ConveyorError
from conveyor.serving.deps import FeedbackIdentity, ServiceDep, ServingDep, SettingsDep
from conveyor.serving.schemas import BODY_ERRORS, ErrorResponse, FeedbackRequest, FeedbackResponse
from conveyor.serving.service import PredictionService
from conveyor.store.db import session_scope
from conveyor.store.models import utcnow

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["feedback"])


#: How long feedback waits for a prediction this process has not seen: with replicas behind a load balancer the
#: answer may come from another process, whose log writes it within ~0.1 s.
PREDICTION_WAIT_S = 2.0


def _answered(service: PredictionService, request_id: str) -> list[Any]:
    """The prediction rows of ``request_id`` (waiting up to :data:`PREDICTION_WAIT_S` for another replica's, if it
    is a request id a server could have issued: a UUID)."""
    from conveyor.store.models import Prediction

    service.log.flush()  # the prediction may still be queued here
    try:
        uuid.UUID(request_id)
        wait = PREDICTION_WAIT_S
    except ValueError:
        wait = 0.0
    deadline, pause = time.monotonic() + wait, 0.05
    while True:
        with session_scope(service.engine) as session:
            rows = list(session.scalars(select(Prediction).where(Prediction.request_id == request_id)).all())
        if rows or time.monotonic() + pause > deadline:
            return rows
        time.sleep(pause)
        pause = min(pause * 2, 0.4)


def _store_label(session: Session, request_id: str, label: str, who: str) -> None:
    """Insert the label, or replace the one stored: one statement (``ON CONFLICT``), so the same request labelled
    on two replicas at once leaves one row, the later label, and neither request fails on the unique request_id."""
    from conveyor.store.models import Feedback

    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = make(Feedback).values(request_id=request_id, label=label, who=who, at=utcnow())
        session.execute(
            statement.on_conflict_do_update(index_elements=[Feedback.request_id], set_={"label": label, "who": who})
        )
        return
    existing = session.scalars(select(Feedback).where(Feedback.request_id == request_id)).first()
    if existing is None:
        session.add(Feedback(request_id=request_id, label=label, who=who))
    else:
        existing.label, existing.who = label, who


def record_feedback(service: PredictionService, body: FeedbackRequest, who: str) -> tuple[str | None, bool]:
    """Store the label; returns (what was predicted, whether a rollout is in progress)."""
    rows = _answered(service, body.request_id)
    answered = [r for r in rows if r.arm != "shadow" and r.label is not None]
    if not answered:
        raise HTTPException(404, f"no prediction with request id {body.request_id!r}")
    classes = sorted((answered[0].probabilities or {}).keys())
    if body.label not in classes:
        raise HTTPException(
            422, f"label {body.label!r} is not a class of model version {answered[0].model_version}; "
            f"expected one of {classes}",
        )  # fmt: skip
    with session_scope(service.engine) as session:
        _store_label(session, body.request_id, body.label, who)
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
    # The database, not this process's view, says whether a rollout is in progress: another replica may have started
    # or decided it since this one last looked.
    if in_rollout and serving.rollout.auto:

        def decide() -> dict[str, object] | None:
            try:
                made, state = rollout.advance(settings, service.engine, "rollout-policy")
            except ConveyorError:  # no rollout now, or another feedback (here or on a replica) decided the stage
                return None
            except Exception:  # the label is stored whatever happened; the next feedback asks the policy again
                log.exception("the rollout policy failed after feedback on %s", body.request_id)
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
