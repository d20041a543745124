"""GET /: the upload page for clinicians (Jinja2, a little vanilla JavaScript, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from conveyor.serving.deps import ServiceDep, ServingDep

router = APIRouter(tags=["page"])
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))


def _segmentation_version(service: ServiceDep) -> int | None:
    """The segmentation champion's version, if one is registered (the page then draws its mask)."""
    from conveyor.tracking.registry import CHAMPION, current_version
    from conveyor.training.segmentation import segmentation_settings

    try:
        return current_version(segmentation_settings(service.settings), CHAMPION)
    except Exception:  # the registry unreachable: the page still classifies
        return None


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request, service: ServiceDep, serving: ServingDep) -> HTMLResponse:
    champion = service.champion
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "model_name": service.settings.model_name,
            "version": None if champion is None else champion.version,
            "classes": [] if champion is None else champion.classes,
            "unsure_below": serving.unsure_below,
            "max_mb": serving.max_upload_bytes / (1 << 20),
            "segmentation": _segmentation_version(service),
        },
    )
