"""POST /v1/explain: an image in, why the champion answers what it does (see :mod:`conveyor.serving.explain`)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from conveyor.data.decode import DecodeLimits
from conveyor.serving.deps import ServiceDep, ServingDep
from conveyor.serving.routes.predict import _BODY, ERRORS, uploads
from conveyor.serving.schemas import ErrorResponse, ExplainResponse, GroupEffect, ModelRef, PersistentRegion
from conveyor.serving.service import ModelUnavailable

router = APIRouter(prefix="/v1", tags=["explain"])

MAX_WAITING = 8  # explanations queued behind the one being computed; more are refused with 429


class ExplainSlots:
    """An explanation scores dozens of occluded copies: one at a time per server, the next few waiting in the event
    loop (no thread held while they wait, so feedback and the review queue keep their threads), the rest refused."""

    def __init__(self) -> None:
        self.running = asyncio.Semaphore(1)
        self.waiting = 0


def _explain(model: Any, data: bytes, limits: DecodeLimits) -> dict[str, Any]:
    from conveyor.serving.explain import diagrams_png, explain, overlay_png

    found = explain(model, data, limits)
    return {
        "label": found.label,
        "probabilities": found.probabilities,
        "heatmap_png": base64.b64encode(overlay_png(found)).decode(),
        "heatmap": found.heatmap.round(6).tolist(),
        "patch": found.patch,
        "diagrams_png": None if found.bundle is None else base64.b64encode(diagrams_png(found.bundle)).decode(),
        "regions": [PersistentRegion(**r) for r in found.regions],
        "groups": None if found.groups is None else [GroupEffect(**g) for g in found.groups],
    }


_ERRORS = {**ERRORS, 429: {"model": ErrorResponse, "description": "Too many explanations waiting; see Retry-After."}}


@router.post(
    "/explain", response_model=ExplainResponse, responses=_ERRORS, openapi_extra=_BODY,
    summary="Explain the champion's answer to one image (multipart field 'file', or the raw body)",
)  # fmt: skip
async def explain(request: Request, service: ServiceDep, serving: ServingDep) -> ExplainResponse:
    [(_, data)] = await uploads(request, serving, max_files=1)
    champion = service.champion
    if champion is None:
        raise ModelUnavailable("no champion model is loaded")
    slots: ExplainSlots = request.app.state.explain_slots
    if slots.waiting >= MAX_WAITING:
        raise HTTPException(
            429, f"{MAX_WAITING} explanations are already waiting; try again shortly", headers={"Retry-After": "2"}
        )
    slots.waiting += 1
    entered = False
    try:
        async with slots.running:
            slots.waiting -= 1
            entered = True
            found = await run_in_threadpool(_explain, champion.model, data, DecodeLimits.of(service.settings))
    finally:
        if not entered:  # cancelled while waiting (the client went away): it no longer waits
            slots.waiting -= 1
    return ExplainResponse(
        model=ModelRef(name=champion.name, version=champion.version),
        method=f"occlusion (Captum): squares of {found['patch']} px replaced by the image's local median",
        **found,
    )
