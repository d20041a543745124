"""CLI commands of serving: ``conveyor serve`` and ``conveyor rollout status|start|advance|promote|rollback``.

Plain functions plus ``rollout_app``; ``conveyor.cli`` registers them (``app.command()(serve)``,
``app.add_typer(rollout_app, name="rollout")``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from conveyor.config import Settings, get_settings
from conveyor.terminal import JsonOption, emit_json, errors, out

__all__ = ["rollout_app", "serve"]

ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why, for the audit log.")]

rollout_app = typer.Typer(
    name="rollout", help="Roll a challenger out safely: shadow, canary, A/B; promote or roll back.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)  # fmt: skip


def _settings() -> Settings:
    return get_settings()


def _emit(payload: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        emit_json(payload)
    else:
        out.print(text, highlight=False)


def _who() -> str:
    from conveyor.tracking.registry import actor

    return actor()


def _describe(state: Any) -> str:
    if state is None:
        return "no rollout"
    return (
        f"rollout {state.id}: {state.mode}, {state.status}, stage {state.stage} (challenger share {state.share:.0%}), "
        f"v{state.challenger_version} against v{state.champion_version}"
    )


@rollout_app.command("status")
def rollout_status(as_json: JsonOption = False) -> None:
    """Show the rollout in progress (or the last one) and what the policy would decide now."""
    from conveyor.serving import rollout
    from conveyor.workspace import open_workspace

    settings = _settings()
    with errors(as_json):
        engine = open_workspace(settings)
        rollout.recover_interrupted(settings, engine, _who())
        state = rollout.active_rollout(engine) or rollout.latest_rollout(engine)
        decision = None
        if state is not None and state.status == "active":
            decision = rollout.policy_decision(settings, engine, state)
    payload = {"rollout": None if state is None else state.to_dict(), "decision": decision and decision.to_dict()}
    text = _describe(state) + ("" if decision is None else f"\npolicy: {decision.action}: {decision.reason}")
    _emit(payload, as_json, text)


@rollout_app.command("start")
def rollout_start(
    mode: Annotated[str, typer.Argument(help="shadow, canary or ab.")],
    as_json: JsonOption = False,
) -> None:
    """Start rolling out the challenger."""
    from conveyor.serving import rollout
    from conveyor.workspace import open_workspace

    settings = _settings()
    with errors(as_json):
        state = rollout.start(settings, open_workspace(settings), mode, _who())
    _emit({"rollout": state.to_dict()}, as_json, _describe(state))


@rollout_app.command("advance")
def rollout_advance(
    force: Annotated[bool, typer.Option("--force", help="Advance whatever the policy says.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Ask the policy: advance the stage (promoting from the last), roll back, or wait."""
    from conveyor.serving import rollout
    from conveyor.workspace import open_workspace

    settings = _settings()
    with errors(as_json):
        decision, state = rollout.advance(settings, open_workspace(settings), _who(), force=force)
    _emit(
        {"decision": decision.to_dict(), "rollout": state.to_dict()},
        as_json,
        f"{decision.action}: {decision.reason}\n{_describe(state)}",
    )


@rollout_app.command("promote")
def rollout_promote(reason: ReasonOption = None, as_json: JsonOption = False) -> None:
    """Make the challenger the champion now (moves the registry alias) and end the rollout."""
    from conveyor.serving import rollout
    from conveyor.workspace import open_workspace

    settings = _settings()
    with errors(as_json):
        state = rollout.promote(settings, open_workspace(settings), _who(), reason or "promoted by hand")
    _emit({"rollout": state.to_dict()}, as_json, _describe(state))


@rollout_app.command("rollback")
def rollout_rollback(reason: ReasonOption = None, as_json: JsonOption = False) -> None:
    """End the rollout in progress; without one, give the champion alias back to the previous champion."""
    from conveyor.serving import rollout
    from conveyor.tracking.registry import CHAMPION, current_version
    from conveyor.workspace import open_workspace

    settings = _settings()
    with errors(as_json):
        state = rollout.rollback(settings, open_workspace(settings), _who(), reason or "rolled back by hand")
        champion = current_version(settings, CHAMPION)
    _emit(
        {"rollout": None if state is None else state.to_dict(), "champion": champion},
        as_json,
        f"{_describe(state)}\nchampion: v{champion}",
    )


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address (default serving.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default serving.port, 8000).")] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Scoring processes (default serving.workers: every core; 1: none)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
) -> None:
    """Serve the champion: REST API, upload page, metrics (FastAPI + uvicorn).

    One server process speaks HTTP; uploads are decoded and scored in scoring processes, one per core by default,
    each request by whichever is free.
    """
    import uvicorn

    from conveyor.serving.app import create_app
    from conveyor.serving.scoring import freeze_heap
    from conveyor.workspace import available_cores

    settings = _settings()
    cfg = settings.serving
    processes = workers or cfg.workers or available_cores()
    host, port = host or cfg.host, port if port is not None else cfg.port
    with errors(False):
        app = create_app(settings, scoring_processes=processes)
    where = f"http://{host}:{port}"
    typer.echo(f"upload page: {where}/   API docs: {where}/docs   ({processes} scoring process(es); Ctrl-C to stop)")
    freeze_heap()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
