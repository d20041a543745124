"""The FastAPI app factory: ``create_app(settings)``.

The champion is loaded once when the app is made; a background task checks the registry aliases and the rollout
state every ``serving.reload_interval_s`` seconds (and ``POST /v1/admin/reload`` does it at once), so a new champion
is served without a restart; in between it checks every second whether a rollout moved (another replica may have
decided it), and reloads if so. Errors are part of the API: :class:`~conveyor.errors.InvalidImageError` maps to 413, 415
or 422 by its reason, other deliberate errors to 404 or 409; anything unexpected is logged and answered 500 with no
internals in the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.config import Settings
from conveyor.errors import ConfigError, ConveyorError, InvalidImageError, NotFoundError
from conveyor.serving.errors import HTTP_REASONS, status_for
from conveyor.serving.metrics import Metrics, MetricsMiddleware
from conveyor.serving.ratelimit import RateLimiter
from conveyor.serving.scoring import ScorerUnavailable
from conveyor.serving.service import ModelUnavailable, PredictionService

__all__ = ["check_startable", "create_app"]

log = logging.getLogger(__name__)


def _error(
    request: Request, status: int, detail: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    request.state.error_reason = reason
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status, headers=headers)


MIN_TOKEN_LENGTH = 32
MIN_TOKEN_DISTINCT = 10


def weak_token_reason(token: str) -> str | None:
    """Why ``token`` is too weak for production, or None: at least 32 characters, no spaces, 10 distinct ones
    (``secrets.token_urlsafe(32)`` makes one)."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"it has {len(token)} characters; production needs at least {MIN_TOKEN_LENGTH}"
    if any(ch.isspace() for ch in token):
        return "it contains white space"
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        return f"it uses only {len(set(token))} distinct characters; production needs {MIN_TOKEN_DISTINCT} or more"
    return None


def check_startable(settings: Settings) -> None:
    """Raises ConfigError when the server must not start: production mode without a strong admin token, or with a
    weak feedback token."""
    cfg = settings.serving
    if not cfg.production:
        return
    if not cfg.admin_token:
        raise ConfigError("serving.production is set but serving.admin_token is empty: refusing to start")
    hint = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    weak = weak_token_reason(cfg.admin_token)
    if weak is not None:
        raise ConfigError(f"serving.admin_token is too weak for production ({weak}): refusing to start; {hint}")
    for who, token in cfg.feedback_tokens.items():
        weak = weak_token_reason(token)
        if weak is not None:
            raise ConfigError(
                f"serving.feedback_tokens[{who!r}] is too weak for production ({weak}): refusing to start; {hint}"
            )


def create_app(settings: Settings, scoring_processes: int = 1) -> FastAPI:
    """The serving app for the workspace of ``settings``.

    ``scoring_processes``: 1 decodes and scores in a thread of this process; more starts that many scoring
    processes (``conveyor serve`` starts one per core).

    Raises:
        ConfigError: production mode with no admin token.
    """
    from conveyor.serving.routes import admin, explain, feedback, health, ops, page, predict, review, segment
    from conveyor.workspace import open_workspace

    check_startable(settings)
    cfg = settings.serving
    engine = open_workspace(settings)
    metrics = Metrics()
    service = PredictionService(
        settings, engine, on_prediction=metrics.record_prediction, scoring_processes=scoring_processes
    )
    try:
        service.refresh()
    except Exception:  # no model registered yet, or the registry is down: not ready, keep polling
        log.exception("no model could be loaded at start; /readyz answers 503 until one is")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        poller = asyncio.create_task(_poll(service, cfg.reload_interval_s)) if cfg.reload_interval_s > 0 else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="conveyor",
        summary="Biomedical image classification: predictions, feedback, safe rollout.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.feedback_limiter = RateLimiter()
    app.state.explain_slots = explain.ExplainSlots()
    for module in (predict, explain, segment, feedback, review, ops, health, admin, page):
        app.include_router(module.router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(part) for part in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]  # never the input: it may be a whole upload
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:3]) or "the request is invalid"
        request.state.error_reason = "invalid_request"
        return JSONResponse({"detail": detail, "reason": "invalid_request", "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = HTTP_REASONS.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, str(exc.detail), reason, dict(exc.headers or {}))

    @app.exception_handler(InvalidImageError)
    async def invalid_image(request: Request, exc: InvalidImageError) -> JSONResponse:
        return _error(request, status_for(exc), exc.detail, exc.reason)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(request, 404, str(exc), "not_found")

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return _error(request, 503, str(exc), "not_ready", {"Retry-After": "5"})

    @app.exception_handler(ScorerUnavailable)
    async def scorer_unavailable(request: Request, exc: ScorerUnavailable) -> JSONResponse:
        return _error(request, 503, str(exc), "scorer_restarting", {"Retry-After": "1"})

    @app.exception_handler(ConveyorError)
    async def conflict(request: Request, exc: ConveyorError) -> JSONResponse:
        return _error(request, 409, str(exc), type(exc).__name__)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(request, 500, "internal error; it has been logged", "internal")

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


#: How often a server process checks whether a rollout moved (one small query of the metadata DB): with several
#: replicas, a stage another process decided is routed here within about this long.
ROLLOUT_CHECK_S = 1.0


async def _poll(service: PredictionService, interval: float) -> None:
    """Every ``interval`` seconds a full refresh (registry aliases and rollout); in between, every
    :data:`ROLLOUT_CHECK_S`, a refresh only if a rollout moved."""
    tick = min(interval, ROLLOUT_CHECK_S)
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        try:
            if time.monotonic() - last_full >= interval - 1e-3:
                last_full = time.monotonic()
                await run_in_threadpool(service.refresh)
            else:
                await run_in_threadpool(service.check_rollout)
        except Exception:  # the registry may be briefly unreachable: keep serving what is loaded
            log.exception("could not refresh the served models")
