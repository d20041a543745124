"""The review queue for clinicians: ``/review`` (a server-rendered page, no build step) and ``/v1/review`` (JSON).

The page needs the admin token: a reviewer signs in once with it and their name, and gets a session cookie that holds
the name and an HMAC of it under the token (never the token itself; HttpOnly, SameSite=Strict, so another site's form
cannot post a decision). Changing the admin token ends every session. The name is what the audit log records.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from conveyor.errors import InvalidImageError, NotFoundError
from conveyor.serving.deps import AdminDep, ServiceDep, ServingDep
from conveyor.serving.review import Decided, ReviewDecisionError, decide, item_image, open_items
from conveyor.serving.routes.page import templates
from conveyor.serving.schemas import BODY_ERRORS, ErrorResponse, FeedbackRequest
from conveyor.serving.service import PredictionService
from conveyor.serving.settings import ServingSettings

router = APIRouter(tags=["review"])
log = logging.getLogger(__name__)

COOKIE = "conveyor_review"
_NAME = re.compile(r"^[\w .'@-]{1,64}$")


def _signature(token: str, name: str) -> str:
    return hmac.new(token.encode(), b"review:" + name.encode(), hashlib.sha256).hexdigest()


def signed_in(request: Request, serving: ServingSettings) -> str | None:
    """The reviewer of the request's session cookie, if it was signed under the current admin token."""
    value = request.cookies.get(COOKIE, "")
    name, _, signature = value.rpartition("|")
    if not serving.admin_token or not name or not _NAME.match(name):
        return None
    return name if hmac.compare_digest(signature, _signature(serving.admin_token, name)) else None


def _reviewer(request: Request, serving: ServingSettings) -> str:
    name = signed_in(request, serving)
    if name is None:
        raise HTTPException(401, "sign in at /review with the admin token first")
    return name


_PAGES = ("/review", "/ops")  # where a sign-in may lead


def login_page(
    request: Request, serving: ServingSettings, error: str | None, status: int, then: str = "/review"
) -> HTMLResponse:
    """The sign-in form (admin token and the reviewer's name), leading to ``then`` (``/review`` or ``/ops``)."""
    context = {"error": error, "enabled": bool(serving.admin_token), "then": then if then in _PAGES else "/review"}
    return templates.TemplateResponse(request, "review_login.html", context, status_code=status)


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
def review_page(request: Request, service: ServiceDep, serving: ServingDep) -> HTMLResponse:
    reviewer = signed_in(request, serving)
    if reviewer is None:
        return login_page(request, serving, None, 200)
    cases, total = open_items(service.engine)
    context = {"reviewer": reviewer, "cases": cases, "total": total, "coverage": serving.coverage,
               "unsure_below": serving.unsure_below}  # fmt: skip
    return templates.TemplateResponse(request, "review.html", context)


@router.post("/review/login", response_class=HTMLResponse, include_in_schema=False)
def login(
    request: Request,
    serving: ServingDep,
    token: Annotated[str, Form(max_length=4096)],
    name: Annotated[str, Form(max_length=64)],
    then: Annotated[str, Form(max_length=16)] = "/review",
) -> Response:
    if not serving.admin_token:
        return login_page(request, serving, "the review queue is disabled: no serving.admin_token is set", 401, then)
    if not hmac.compare_digest(token.encode(), serving.admin_token.encode()):
        return login_page(request, serving, "that is not the admin token", 401, then)
    name = name.strip()
    if not _NAME.match(name):
        return login_page(request, serving, "a name of 1 to 64 letters, digits, spaces or . ' @ -", 422, then)
    response = RedirectResponse(then if then in _PAGES else "/review", status_code=303)
    response.set_cookie(
        COOKIE, f"{name}|{_signature(serving.admin_token, name)}", httponly=True, samesite="strict", path="/",
        secure=request.url.scheme == "https", max_age=12 * 3600,
    )  # fmt: skip
    return response


@router.post("/review/logout", include_in_schema=False)
def logout() -> Response:
    response = RedirectResponse("/review", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/review/items/{item_id}/image", include_in_schema=False)
def item_png(request: Request, item_id: int, service: ServiceDep, serving: ServingDep) -> Response:
    """The queued upload as a PNG the browser can show (a DICOM or 16-bit TIFF included)."""
    _reviewer(request, serving)
    data, _ = item_image(service.settings, service.engine, item_id)
    return Response(_display_png(data), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def _display_png(data: bytes) -> bytes:
    """Decoded pixels stretched to 8 bits, as a PNG."""
    import numpy as np
    from PIL import Image

    from conveyor.data.decode import DecodeLimits, decode_image

    try:
        pixels = decode_image(data, DecodeLimits()).pixels.astype(np.float64)
    except InvalidImageError as exc:  # it decoded when it was scored: the file was changed since
        raise NotFoundError(f"the queued image can no longer be decoded: {exc.detail}") from exc
    low, high = float(pixels.min()), float(pixels.max())
    scaled = np.zeros_like(pixels) if high <= low else (pixels - low) / (high - low) * 255.0
    buffer = io.BytesIO()
    Image.fromarray(scaled.round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _decide(service: PredictionService, item_id: int, who: str, label: str | None) -> Decided:
    """The decision, then the label as feedback on the request (after: a refused decision leaves no feedback)."""
    from conveyor.serving.routes.feedback import record_feedback

    try:
        decided = decide(service.settings, service.engine, item_id, who, label)
    except ReviewDecisionError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    if decided.label is not None:
        try:
            record_feedback(service, FeedbackRequest(request_id=decided.request_id, label=decided.label), who)
        except HTTPException as exc:  # the answer is missing from the prediction log: the decision still stands
            log.warning("review item %s: no feedback recorded: %s", item_id, exc.detail)
    return decided


@router.post("/review/items/{item_id}", include_in_schema=False)
async def decide_page(
    request: Request,
    item_id: int,
    service: ServiceDep,
    serving: ServingDep,
    label: Annotated[str | None, Form(max_length=255)] = None,
    dismiss: Annotated[str | None, Form(max_length=8)] = None,
) -> Response:
    """A label button (``label``) or the dismiss button (``dismiss``) of the page."""
    who = _reviewer(request, serving)
    if not label and not dismiss:
        raise HTTPException(422, "pick a label, or dismiss the case")
    await run_in_threadpool(_decide, service, item_id, who, None if dismiss else label)
    return RedirectResponse("/review", status_code=303)


class ReviewDecision(BaseModel):
    label: str | None = Field(description="One of the model's classes; null dismisses the case.", max_length=255)


class QueueItem(BaseModel):
    id: int
    request_id: str
    at: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    prediction_set: list[str] | None
    reason: str
    model_version: int


class ReviewQueue(BaseModel):
    open: int = Field(description="Open items in all; `items` lists the most uncertain first.")
    items: list[QueueItem]


class ReviewOutcome(BaseModel):
    item_id: int
    request_id: str
    status: str
    label: str | None
    filed_as: str | None = Field(description="Where the image was filed in the drop folder, in the workspace.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: BODY_ERRORS[400],
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse, "description": "No such review item."},
    409: {"model": ErrorResponse, "description": "The item was decided already."},
    422: {"model": ErrorResponse, "description": "The label is not a class of the model that answered."},
}


@router.get("/v1/review", response_model=ReviewQueue, responses={401: {"model": ErrorResponse}, 422: BODY_ERRORS[422]})
async def queue(service: ServiceDep, _admin: AdminDep, limit: int = 100) -> ReviewQueue:
    """The review queue, most uncertain first (admin token)."""
    cases, total = await run_in_threadpool(open_items, service.engine, max(1, min(limit, 1000)))
    return ReviewQueue(open=total, items=[QueueItem(**c.to_dict()) for c in cases])


@router.post("/v1/review/{item_id}", response_model=ReviewOutcome, responses=_ERRORS)
async def decide_api(item_id: int, body: ReviewDecision, service: ServiceDep, who: AdminDep) -> ReviewOutcome:
    """Label (or dismiss) a queued case (admin token): stored as feedback, filed into the drop folder, audited."""
    decided = await run_in_threadpool(_decide, service, item_id, who, body.label)
    return ReviewOutcome(item_id=decided.item_id, request_id=decided.request_id, status=decided.status,
                         label=decided.label, filed_as=decided.filed_as)  # fmt: skip
