"""POST /v1/predict and /v1/predict/batch: an image (multipart or raw body) in, a prediction out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request

from conveyor.errors import InvalidImageError
from conveyor.serving.deps import ServiceDep, ServingDep, read_limited
from conveyor.serving.errors import status_for
from conveyor.serving.review import queue_for_review, review_reason
from conveyor.serving.schemas import (
    BODY_ERRORS,
    BatchItem,
    BatchResponse,
    ErrorResponse,
    FramePrediction,
    InputInfo,
    ModelRef,
    PredictionResponse,
)
from conveyor.serving.service import Outcome, PredictionService
from conveyor.serving.settings import ServingSettings

router = APIRouter(prefix="/v1", tags=["predict"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: BODY_ERRORS[400],
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


def prediction_set(model: Any, probabilities: dict[str, float], serving: ServingSettings) -> dict[str, Any]:
    """The answer's prediction set at ``serving.coverage`` and whether the model abstains (see PredictionResponse)."""
    import numpy as np

    found = None
    if model is not None:  # None: the model that answered is no longer loaded (it was replaced meanwhile)
        found = model.prediction_sets(np.array([[probabilities[c] for c in model.classes]]), serving.coverage)
    if found is None:
        return {"prediction_set": None, "coverage": None, "abstain": False}
    return {"prediction_set": found[0], "coverage": serving.coverage, "abstain": len(found[0]) != 1}


def to_response(outcome: Outcome, serving: ServingSettings) -> PredictionResponse:
    i = outcome.inspected
    return PredictionResponse(
        request_id=outcome.request_id,
        label=outcome.label,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        unsure=outcome.confidence < serving.unsure_below,
        **prediction_set(outcome.model.model, outcome.probabilities, serving),
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
    files = file_parts(body, content_type, max_files)
    if not files:
        raise InvalidImageError("no_file", "the multipart body has no file part; send the image as field 'file'")
    return files


def file_parts(body: bytes, content_type: str, max_files: int) -> list[tuple[str | None, bytes]]:
    """The (filename, bytes) of each file part (a part with a filename) of a multipart/form-data body in memory.

    python-multipart's parser, fed the whole body with callbacks into lists: Starlette's form parser spools every
    file to a temporary file object and costed 0.36 ms per request, 25 times this.

    Raises:
        InvalidImageError: no boundary, a malformed body, or more than ``max_files`` files.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidImageError("bad_multipart", "the multipart body cannot be parsed: no boundary in content-type")
    parts = _FileParts(max_files)
    try:
        parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidImageError("bad_multipart", f"the multipart body cannot be parsed: {exc}") from exc
    if parts.open:
        raise InvalidImageError("bad_multipart", "the multipart body ends inside a part: it was cut short")
    return parts.files


class _FileParts:
    """Collects the file parts python-multipart's parser reports, part by part."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.files: list[tuple[str | None, bytes]] = []
        self.open = False  # inside a part: a body that ends here was cut short
        self._chunks: list[bytes] = []
        self._field, self._value = b"", b""
        self._disposition: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end, "on_part_data": self._data,
            "on_part_end": self._end,
        }  # fmt: skip

    def _begin(self) -> None:
        self.open = True
        self._chunks, self._disposition = [], {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        from python_multipart.multipart import parse_options_header

        if self._field.lower() == b"content-disposition":
            self._disposition = parse_options_header(self._value)[1]
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        self.open = False
        if b"filename" not in self._disposition:  # a plain form field
            return
        if len(self.files) == self.max_files:
            detail = f"more than {self.max_files} files sent; at most {self.max_files} per request"
            raise InvalidImageError("too_many_files", detail)
        self.files.append((self._disposition[b"filename"].decode("utf-8", "replace"), b"".join(self._chunks)))


async def predict_one(
    service: PredictionService,
    serving: ServingSettings,
    data: bytes,
    background: BackgroundTasks,
    *,
    review: bool = True,
) -> PredictionResponse:
    """Score one image; an answer the model is unsure of joins the review queue after the response (``review``:
    a clip's frames do not, one by one)."""
    outcome, shadow = await service.predict(data)  # awaits the scorer: no thread of this process waits
    if shadow is not None:
        background.add_task(shadow)
    response = to_response(outcome, serving)
    reason = review_reason(response.abstain, response.confidence, serving.unsure_below)
    if review and reason is not None and serving.review_max_open > 0:
        background.add_task(
            queue_for_review, service.settings, service.engine, data=data, request_id=response.request_id,
            sha256=response.input.sha256, format=response.input.format, model_version=response.model.version,
            label=response.label, confidence=response.confidence, probabilities=response.probabilities,
            prediction_set=response.prediction_set, reason=reason,
        )  # fmt: skip
    return response


async def predict_clip(
    service: PredictionService, serving: ServingSettings, data: bytes, background: BackgroundTasks
) -> PredictionResponse:
    """A video clip: its frames sampled as ingest samples them (``ingest.video``), each scored (and logged) as an
    image, and the clip answered from their probabilities (``ingest.video.aggregation``: the mean by default).

    Raises:
        InvalidImageError: the clip cannot be decoded, has no usable frame, or samples into too many.
    """
    import hashlib

    import numpy as np
    from starlette.concurrency import run_in_threadpool

    from conveyor.data.video import clip_probabilities, encode_png, sample_frames, sniff_video

    video = service.settings.ingest.video
    frames = await run_in_threadpool(
        sample_frames, data, fps=video.fps, count=video.frames, max_frames=video.max_frames,
        max_pixels=service.settings.ingest.max_pixels,
    )  # fmt: skip
    answers = []
    for frame in frames:
        answer = await predict_one(service, serving, encode_png(frame.pixels), background, review=False)
        answers.append((frame.time, answer))
    classes = list(answers[0][1].probabilities)
    frame_proba = np.array([[a.probabilities[c] for c in classes] for _, a in answers])
    mean = clip_probabilities(frame_proba, video.aggregation)
    best = int(mean.argmax())
    first = answers[0][1]
    probabilities = {c: float(v) for c, v in zip(classes, mean, strict=True)}
    served = [m for m in (service.champion, service.challenger) if m is not None and m.version == first.model.version]
    return PredictionResponse(
        request_id=first.request_id,
        label=classes[best],
        confidence=float(mean[best]),
        probabilities=probabilities,
        unsure=float(mean[best]) < serving.unsure_below,
        **prediction_set(served[0].model if served else None, probabilities, serving),
        model=first.model,
        arm=first.arm,
        latency_ms=sum(a.latency_ms for _, a in answers),
        input=InputInfo(
            sha256=hashlib.sha256(data).hexdigest(),
            format=str(sniff_video(data)),
            width=first.input.width,
            height=first.input.height,
        ),
        frames=[
            FramePrediction(time=t, request_id=a.request_id, label=a.label, probabilities=a.probabilities)
            for t, a in answers
        ],
    )


@router.post(
    "/predict", response_model=PredictionResponse, responses=ERRORS, openapi_extra=_BODY,
    summary="Classify one image or video clip (multipart field 'file', or the raw body)",
)  # fmt: skip
async def predict(
    request: Request, service: ServiceDep, serving: ServingDep, background: BackgroundTasks
) -> PredictionResponse:
    from conveyor.data.video import sniff_video

    [(_, data)] = await uploads(request, serving, max_files=1)
    if sniff_video(data) is not None:
        return await predict_clip(service, serving, data, background)
    return await predict_one(service, serving, data, background)


@router.post(
    "/predict/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=_BATCH_BODY,
    summary="Classify several images (multipart, one file part each); each item has its own status",
)  # fmt: skip
async def predict_batch(
    request: Request, service: ServiceDep, serving: ServingDep, background: BackgroundTasks
) -> BatchResponse:

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
