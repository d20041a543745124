"""POST /v1/predict and /v1/predict/batch: an image (multipart or raw body) in, a prediction out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from conveyor.errors import InvalidImageError
from conveyor.serving.deps import ServiceDep, ServingDep, read_limited
from conveyor.serving.schemas import (
    BatchItem,
    BatchResponse,
    ErrorResponse,
    InputInfo,
    ModelRef,
    PredictionResponse,
)
from conveyor.serving.service import Outcome, PredictionService
from conveyor.serving.settings import ServingSettings

router = APIRouter(prefix="/v1", tags=["predict"])

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Upload over the size limit, or an image over the pixel limit."},
    415: {"model": ErrorResponse, "description": "Not an image (content sniffed, never the name or content type)."},
    422: {"model": ErrorResponse, "description": "Corrupt, truncated, blank or too small image."},
    503: {"model": ErrorResponse, "description": "No model loaded yet."},
}

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


def to_response(outcome: Outcome, serving: ServingSettings) -> PredictionResponse:
    i = outcome.inspected
    return PredictionResponse(
        request_id=outcome.request_id,
        label=outcome.label,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        unsure=outcome.confidence < serving.unsure_below,
        model=ModelRef(name=outcome.model.name, version=outcome.model.version),
        arm="challenger" if outcome.arm == "challenger" else "champion",
        latency_ms=outcome.latency_ms,
        input=InputInfo(sha256=i.sha256, format=i.format, width=i.width, height=i.height),
    )


async def uploads(request: Request, serving: ServingSettings, max_files: int) -> list[tuple[str | None, bytes]]:
    """The uploaded files: every file part of a multipart body, or the raw body as one file."""
    body = await read_limited(request, serving.max_upload_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return [(None, body)]
    replayed = False

    async def receive() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=max_files + 1, max_fields=100)
    except Exception as exc:  # malformed multipart: a client error with the parser's words
        raise InvalidImageError("bad_multipart", f"the multipart body cannot be parsed: {exc}") from exc
    files: list[tuple[str | None, bytes]] = []
    for _name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename, await value.read()))
    await form.close()
    if not files:
        raise InvalidImageError("no_file", "the multipart body has no file part; send the image as field 'file'")
    if len(files) > max_files:
        raise InvalidImageError("too_many_files", f"{len(files)} files sent; at most {max_files} per request")
    return files


async def predict_one(
    service: PredictionService, serving: ServingSettings, data: bytes, background: BackgroundTasks
) -> PredictionResponse:
    outcome, shadow = await run_in_threadpool(service.predict, data)
    if shadow is not None:
        background.add_task(run_in_threadpool, shadow)
    return to_response(outcome, serving)


@router.post(
    "/predict", response_model=PredictionResponse, responses=ERRORS, openapi_extra=_BODY,
    summary="Classify one image (multipart field 'file', or the raw body)",
)  # fmt: skip
async def predict(
    request: Request, service: ServiceDep, serving: ServingDep, background: BackgroundTasks
) -> PredictionResponse:
    [(_, data)] = await uploads(request, serving, max_files=1)
    return await predict_one(service, serving, data, background)


@router.post(
    "/predict/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=_BATCH_BODY,
    summary="Classify several images (multipart, one file part each); each item has its own status",
)  # fmt: skip
async def predict_batch(
    request: Request, service: ServiceDep, serving: ServingDep, background: BackgroundTasks
) -> BatchResponse:
    from conveyor.serving.app import status_for

    items: list[BatchItem] = []
    for filename, data in await uploads(request, serving, max_files=serving.max_batch):
        try:
            prediction = await predict_one(service, serving, data, background)
        except InvalidImageError as exc:
            error = ErrorResponse(detail=exc.detail, reason=exc.reason)
            items.append(BatchItem(filename=filename, status=status_for(exc), error=error))
            continue
        items.append(BatchItem(filename=filename, status=200, prediction=prediction))
    return BatchResponse(items=items)
