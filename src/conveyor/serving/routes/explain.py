"""POST /v1/explain: an image in, why the champion answers what it does (see :mod:`conveyor.serving.explain`)."""

from __future__ import annotations

import base64
import threading
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from conveyor.data.decode import DecodeLimits
from conveyor.serving.deps import ServiceDep, ServingDep
from conveyor.serving.routes.predict import _BODY, ERRORS, uploads
from conveyor.serving.schemas import ExplainResponse, GroupEffect, ModelRef, PersistentRegion
from conveyor.serving.service import ModelUnavailable

router = APIRouter(prefix="/v1", tags=["explain"])

# An explanation scores dozens of occluded copies: one at a time in this process, so they never starve predictions.
_ONE_AT_A_TIME = threading.Lock()


def _explain(model: Any, data: bytes, limits: DecodeLimits) -> dict[str, Any]:
    from conveyor.serving.explain import diagrams_png, explain, overlay_png

    with _ONE_AT_A_TIME:
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


@router.post(
    "/explain", response_model=ExplainResponse, responses=ERRORS, openapi_extra=_BODY,
    summary="Explain the champion's answer to one image (multipart field 'file', or the raw body)",
)  # fmt: skip
async def explain(request: Request, service: ServiceDep, serving: ServingDep) -> ExplainResponse:
    [(_, data)] = await uploads(request, serving, max_files=1)
    champion = service.champion
    if champion is None:
        raise ModelUnavailable("no champion model is loaded")
    found = await run_in_threadpool(_explain, champion.model, data, DecodeLimits.of(service.settings))
    return ExplainResponse(
        model=ModelRef(name=champion.name, version=champion.version),
        method=f"occlusion (Captum): squares of {found['patch']} px replaced by the image's local median",
        **found,
    )
