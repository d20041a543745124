"""Admin endpoints (bearer token): reload the models, and drive a rollout."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from conveyor.serving import rollout
from conveyor.serving.deps import AdminDep, ServiceDep, SettingsDep
from conveyor.serving.schemas import (
    BODY_ERRORS,
    ErrorResponse,
    ReloadResponse,
    RolloutAction,
    RolloutResponse,
    RolloutStart,
)

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={**BODY_ERRORS, 401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)


@router.post("/reload", response_model=ReloadResponse)
async def reload(service: ServiceDep, _admin: AdminDep) -> ReloadResponse:
    return ReloadResponse(**await run_in_threadpool(service.refresh))


@router.get("/rollout", response_model=RolloutResponse)
async def rollout_status(service: ServiceDep, _admin: AdminDep) -> RolloutResponse:
    def status() -> RolloutResponse:
        state = rollout.active_rollout(service.engine) or rollout.latest_rollout(service.engine)
        decision = None
        if state is not None and state.status == "active":
            decision = rollout.policy_decision(service.settings, service.engine, state).to_dict()
        return RolloutResponse(
            rollout=None if state is None else state.to_dict(), decision=decision, serving=service.describe()
        )

    return await run_in_threadpool(status)


@router.post("/rollout/start", response_model=RolloutResponse)
async def rollout_start(
    body: RolloutStart, service: ServiceDep, settings: SettingsDep, admin: AdminDep
) -> RolloutResponse:
    def act() -> RolloutResponse:
        state = rollout.start(settings, service.engine, body.mode, admin)
        return RolloutResponse(rollout=state.to_dict(), serving=service.refresh())

    return await run_in_threadpool(act)


@router.post("/rollout/advance", response_model=RolloutResponse)
async def rollout_advance(
    body: RolloutAction, service: ServiceDep, settings: SettingsDep, admin: AdminDep
) -> RolloutResponse:
    def act() -> RolloutResponse:
        decision, state = rollout.advance(settings, service.engine, admin, force=body.force)
        return RolloutResponse(rollout=state.to_dict(), decision=decision.to_dict(), serving=service.refresh())

    return await run_in_threadpool(act)


@router.post("/rollout/promote", response_model=RolloutResponse)
async def rollout_promote(
    body: RolloutAction, service: ServiceDep, settings: SettingsDep, admin: AdminDep
) -> RolloutResponse:
    def act() -> RolloutResponse:
        state = rollout.promote(settings, service.engine, admin, body.reason or "promoted by an admin")
        return RolloutResponse(rollout=state.to_dict(), serving=service.refresh())

    return await run_in_threadpool(act)


@router.post("/rollout/rollback", response_model=RolloutResponse)
async def rollout_rollback(
    body: RolloutAction, service: ServiceDep, settings: SettingsDep, admin: AdminDep
) -> RolloutResponse:
    def act() -> RolloutResponse:
        state = rollout.rollback(settings, service.engine, admin, body.reason or "rolled back by an admin")
        return RolloutResponse(rollout=None if state is None else state.to_dict(), serving=service.refresh())

    return await run_in_threadpool(act)
