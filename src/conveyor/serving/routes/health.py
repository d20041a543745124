"""GET /healthz (alive), /readyz (a model is loaded), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from conveyor.serving.deps import MetricsDep, ServiceDep
from conveyor.serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(service: ServiceDep) -> Response:
    body = Readiness(
        ready=service.ready,
        model=service.settings.model_name,
        champion=None if service.champion is None else service.champion.version,
        challenger=None if service.challenger is None else service.challenger.version,
    )
    return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
