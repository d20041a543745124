"""The operations page ``/ops`` (signed in as on ``/review``: the admin token), its JSON ``/v1/ops`` (the admin bearer
token), and each monitoring run's Evidently report."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from conveyor.errors import NotFoundError
from conveyor.serving.deps import AdminDep, ServiceDep, ServingDep
from conveyor.serving.ops import history_png, ops_view
from conveyor.serving.routes.page import templates
from conveyor.serving.routes.review import login_page, signed_in
from conveyor.serving.schemas import ErrorResponse
from conveyor.serving.service import PredictionService

router = APIRouter(tags=["ops"])


def _run_links(service: PredictionService, runs: list[dict[str, Any]]) -> dict[str, str]:
    """Each MLflow run id of the history -> its page in the MLflow UI (``serving.mlflow_ui_url``); none without it."""
    base = service.settings.serving.mlflow_ui_url
    if not base:
        return {}
    from conveyor.tracking.setup import configure_mlflow

    experiment = configure_mlflow(service.settings)
    return {
        r["mlflow_run_id"]: f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{r['mlflow_run_id']}"
        for r in runs
        if r.get("mlflow_run_id")
    }


def _page_context(service: PredictionService) -> dict[str, Any]:
    view = ops_view(service.settings, service.engine)
    plot = history_png(view)
    return {
        "view": view,
        "plot": None if plot is None else base64.b64encode(plot).decode(),
        "links": _run_links(service, view.history),
        "served": {
            "champion": getattr(service.champion, "version", None),
            "challenger": getattr(service.challenger, "version", None),
        },
    }


@router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
async def ops_page(request: Request, service: ServiceDep, serving: ServingDep) -> HTMLResponse:
    reviewer = signed_in(request, serving)
    if reviewer is None:
        return login_page(request, serving, None, 200, then="/ops")
    context = await run_in_threadpool(_page_context, service)
    return templates.TemplateResponse(request, "ops.html", {**context, "reviewer": reviewer})


@router.get("/ops/reports/{run_id}", include_in_schema=False)
def report(request: Request, run_id: int, service: ServiceDep, serving: ServingDep) -> FileResponse:
    """A monitoring run's Evidently report (HTML), from the workspace's reports folder only."""
    if signed_in(request, serving) is None:
        raise HTTPException(401, "sign in at /review with the admin token first")
    from conveyor.store.db import session_scope
    from conveyor.store.models import MonitoringRun

    with session_scope(service.engine) as session:
        row = session.get(MonitoringRun, run_id)
        path = None if row is None or not row.report_path else Path(row.report_path)
    reports = (service.settings.reports_dir).resolve()
    if path is None or not path.resolve().is_relative_to(reports) or not path.is_file():
        raise NotFoundError(f"monitoring run {run_id} has no report on this server")
    return FileResponse(path, media_type="text/html")


@router.get("/v1/ops", responses={401: {"model": ErrorResponse}})
async def ops_json(service: ServiceDep, _admin: AdminDep) -> dict[str, Any]:
    """The operations page's data (admin token): models, rollout, monitoring history, review queue size, audit log."""
    view = await run_in_threadpool(ops_view, service.settings, service.engine)
    return view.to_dict()
