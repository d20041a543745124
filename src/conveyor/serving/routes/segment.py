"""POST /v1/segment: an image in, the segmentation champion's mask (a PNG of class indices) and class areas out."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from conveyor.errors import NotFoundError
from conveyor.serving.deps import ServiceDep, ServingDep
from conveyor.serving.routes.predict import _BODY, ERRORS, uploads
from conveyor.serving.schemas import ErrorResponse, InputInfo, ModelRef
from conveyor.serving.service import PredictionService

router = APIRouter(prefix="/v1", tags=["segment"])

SEGMENT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": ErrorResponse, "description": "No segmentation model is registered yet."},
}


class SegmentResponse(BaseModel):
    mask_png: str = Field(description="Base64 PNG, the image's size, one class index per pixel (see classes).")
    classes: list[str]
    areas: dict[str, int] = Field(description="Pixels of each class.")
    model: ModelRef
    input: InputInfo


_LOADED: dict[tuple[str, str, int], Any] = {}  # (registry, model name, version) -> the model, loaded once
_CHECKED: dict[tuple[str, str], tuple[int | None, float]] = {}  # (registry, name) -> (champion version, when)
_LOCK = threading.Lock()


def _champion(service: PredictionService) -> tuple[int, Any]:
    """The segmentation champion, loaded (and verified) once per registry, name and version.

    Raises:
        NotFoundError: none is registered (404: the server is ready, this model does not exist yet).
    """
    from conveyor.tracking.integrity import load_verified
    from conveyor.tracking.registry import CHAMPION, current_version
    from conveyor.training.segmentation import segmentation_settings

    seg = segmentation_settings(service.settings)
    name = (seg.resolved_tracking_uri, seg.model_name)
    checked = _CHECKED.get(name)
    if checked is not None and time.monotonic() - checked[1] < service.settings.serving.reload_interval_s:
        version = checked[0]  # the alias is looked up as often as the classifier's: serving.reload_interval_s
    else:
        version = current_version(seg, CHAMPION)
        _CHECKED[name] = (version, time.monotonic())
    if version is None:
        raise NotFoundError(f"no segmentation model {seg.model_name!r} is registered: run `conveyor segment`")
    key = (seg.resolved_tracking_uri, seg.model_name, version)
    with _LOCK:
        if key not in _LOADED:
            _LOADED.clear()  # one model in memory: the champion moved, or another workspace is served
            _LOADED[key] = load_verified(seg, version).unwrap_python_model()
        return version, _LOADED[key]


@router.post(
    "/segment", response_model=SegmentResponse, responses=SEGMENT_ERRORS, openapi_extra=_BODY,
    summary="Segment one image (multipart field 'file', or the raw body)",
)  # fmt: skip
async def segment(request: Request, service: ServiceDep, serving: ServingDep) -> SegmentResponse:
    from PIL import Image

    from conveyor.data.decode import DecodeLimits, sniff_format

    [(_, data)] = await uploads(request, serving, max_files=1)
    version, model = await run_in_threadpool(_champion, service)
    mask, areas = await run_in_threadpool(model.segment, data, DecodeLimits.of(service.settings))
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return SegmentResponse(
        mask_png=base64.b64encode(buffer.getvalue()).decode(),
        classes=list(model.spec.classes),
        areas=areas,
        model=ModelRef(name=service.settings.model_name + "-segmentation", version=version),
        input=InputInfo(
            sha256=hashlib.sha256(data).hexdigest(),
            format=str(sniff_format(data)),
            width=mask.shape[1],
            height=mask.shape[0],
        ),
    )
