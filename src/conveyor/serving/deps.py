"""Dependencies the routes declare with ``Annotated``: the service, the settings, the admin check, upload bodies.

They are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its thread pool, and three
thread hops per request cost more than the rest of the routing.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from conveyor.config import Settings
from conveyor.errors import InvalidImageError
from conveyor.serving.metrics import Metrics
from conveyor.serving.service import PredictionService
from conveyor.serving.settings import ServingSettings

__all__ = [
    "AdminDep",
    "EngineDep",
    "FeedbackIdentity",
    "MetricsDep",
    "ServiceDep",
    "ServingDep",
    "SettingsDep",
    "read_limited",
    "require_admin",
    "require_feedback_identity",
]


async def get_service(request: Request) -> PredictionService:
    return request.app.state.service


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_serving(request: Request) -> ServingSettings:
    return request.app.state.settings.serving


async def get_engine_dep(request: Request) -> Engine:
    return request.app.state.service.engine


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ServiceDep = Annotated[PredictionService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ServingDep = Annotated[ServingSettings, Depends(get_serving)]
EngineDep = Annotated[Engine, Depends(get_engine_dep)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

_bearer = HTTPBearer(auto_error=False, description="The serving admin_token.")
_feedback_bearer = HTTPBearer(
    auto_error=False, scheme_name="FeedbackToken", description="A token of serving.feedback_tokens."
)


async def require_admin(
    serving: ServingDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The admin's name for the audit log, if the bearer token matches; 401 otherwise (also when none is set)."""
    token = serving.admin_token
    if not token:
        raise HTTPException(401, "admin endpoints are disabled: no serving.admin_token is set",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if credentials is None:
        raise HTTPException(
            401, "missing 'Authorization: Bearer <token>' header", headers={"WWW-Authenticate": "Bearer"}
        )
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "invalid admin token", headers={"WWW-Authenticate": "Bearer"})
    return "admin-api"


async def require_feedback_identity(
    request: Request,
    serving: ServingDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_feedback_bearer)],
) -> str:
    """The identity whose feedback token the request carries (401 without one), within its rate (429 above)."""
    if not serving.feedback_tokens:
        raise HTTPException(401, "feedback is disabled: no serving.feedback_tokens are set",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if credentials is None:
        raise HTTPException(
            401, "missing 'Authorization: Bearer <feedback token>' header", headers={"WWW-Authenticate": "Bearer"}
        )
    given = credentials.credentials.encode()
    found = [who for who, token in serving.feedback_tokens.items() if secrets.compare_digest(given, token.encode())]
    if not found:
        raise HTTPException(401, "invalid feedback token", headers={"WWW-Authenticate": "Bearer"})
    who = found[0]
    wait = request.app.state.feedback_limiter.hit(who, serving.feedback_per_minute)
    if wait > 0:
        raise HTTPException(
            429, f"{who} sent more than {serving.feedback_per_minute} feedback requests in a minute",
            headers={"Retry-After": str(max(1, round(wait)))},
        )  # fmt: skip
    return who


FeedbackIdentity = Annotated[str, Depends(require_feedback_identity)]


AdminDep = Annotated[str, Depends(require_admin)]


def too_large(size: int | str, limit: int) -> InvalidImageError:
    return InvalidImageError("too_large", f"the upload has {size} bytes, over the limit of {limit:,} bytes")


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw request body, refusing (413) as soon as it passes ``limit`` bytes, before reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"{int(declared):,}", limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit:,}", limit)
        chunks.append(chunk)
    return b"".join(chunks)
