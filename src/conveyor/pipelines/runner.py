"""The embedded runner: a pipeline is a graph of named tasks, run in-process in dependency order.

Each task is a function ``(settings, params, upstream) -> dict`` (its JSON-ready output). The run's state (every
task's status, output or error) is written atomically to ``logs/pipelines/<pipeline>/<run id>.json`` after each
task, so a task that fails stops its dependants and says which task failed and why, and running the same pipeline
again with the same parameters resumes from the failed task, reusing the outputs of the tasks that succeeded.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.errors import ConveyorError
from conveyor.workspace import atomic_write

__all__ = ["Pipeline", "PipelineFailed", "RunState", "Task", "run_pipeline"]

TaskFn = Callable[[Settings, Mapping[str, Any], Mapping[str, dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """A named step; ``upstream`` names the tasks whose outputs it reads. ``when`` may skip it, given the outputs so
    far (a branch: e.g. train only when the monitor says retrain)."""

    name: str
    fn: TaskFn
    upstream: tuple[str, ...] = ()
    when: Callable[[Mapping[str, dict[str, Any]]], bool] | None = None


@dataclass(frozen=True)
class Pipeline:
    """Named tasks forming a DAG; :meth:`order` is a topological order (ties in declaration order)."""

    name: str
    tasks: tuple[Task, ...]
    description: str = ""

    def order(self) -> list[Task]:
        by_name = {t.name: t for t in self.tasks}
        for t in self.tasks:
            missing = [u for u in t.upstream if u not in by_name]
            if missing:
                raise ValueError(f"pipeline {self.name!r}: task {t.name!r} depends on unknown tasks {missing}")
        done: list[Task] = []
        placed: set[str] = set()
        while len(done) < len(self.tasks):
            ready = [t for t in self.tasks if t.name not in placed and set(t.upstream) <= placed]
            if not ready:
                raise ValueError(f"pipeline {self.name!r} has a cycle among {sorted(set(by_name) - placed)}")
            done.append(ready[0])
            placed.add(ready[0].name)
        return done


@dataclass
class RunState:
    """A pipeline run as stored on disk."""

    pipeline: str
    run_id: str
    params: dict[str, Any]
    started_at: str
    status: str = "running"  # running | success | failed
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {status, output|error, seconds}
    failed_task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PipelineFailed(ConveyorError):
    """A task failed; its dependants did not run. The message names the task and the reason."""

    def __init__(self, state: RunState) -> None:
        task = state.failed_task or "?"
        error = state.tasks.get(task, {}).get("error", "")
        super().__init__(f"pipeline {state.pipeline!r} run {state.run_id}: task {task!r} failed: {error}")
        self.state = state


def _state_dir(settings: Settings, pipeline: str) -> Path:
    return settings.logs_dir / "pipelines" / pipeline


def _save(settings: Settings, state: RunState) -> None:
    path = _state_dir(settings, state.pipeline) / f"{state.run_id}.json"
    atomic_write(path, json.dumps(state.to_dict(), indent=2, default=str).encode())


def _resumable(settings: Settings, pipeline: str, params: dict[str, Any]) -> RunState | None:
    """The latest run of ``pipeline`` with these parameters that did not finish (failed, or killed while running)."""
    folder = _state_dir(settings, pipeline)
    if not folder.is_dir():
        return None
    runs = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(runs):
        data = json.loads(path.read_text())
        if data.get("params") != params:
            continue
        if data.get("status") == "success":
            return None
        return RunState(**data)
    return None


def run_pipeline(
    pipeline: Pipeline,
    settings: Settings,
    params: Mapping[str, Any] | None = None,
    *,
    resume: bool = True,
    on_task: Callable[[str, str], None] | None = None,
) -> RunState:
    """Run ``pipeline``; resume the last unfinished run with the same parameters unless ``resume`` is false.

    Raises:
        PipelineFailed: a task raised; the state on disk records which and why.
    """
    params = dict(params or {})
    state = _resumable(settings, pipeline.name, params) if resume else None
    if state is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        state = RunState(pipeline.name, f"{stamp}-{uuid.uuid4().hex[:6]}", params, datetime.now(UTC).isoformat())
    state.status, state.failed_task = "running", None
    _save(settings, state)
    outputs = {n: t["output"] for n, t in state.tasks.items() if t.get("status") == "success"}
    for task in pipeline.order():
        if state.tasks.get(task.name, {}).get("status") in ("success", "skipped"):
            continue  # done by the run this one resumes
        if task.when is not None and not task.when(outputs):
            state.tasks[task.name] = {"status": "skipped"}
            _save(settings, state)
            if on_task is not None:
                on_task(task.name, "skipped")
            continue
        if on_task is not None:
            on_task(task.name, "running")
        start = time.perf_counter()
        try:
            output = task.fn(settings, params, {u: outputs.get(u, {}) for u in task.upstream})
        except Exception as exc:  # any failure stops the dependants; the reason is kept for the user
            state.tasks[task.name] = {
                "status": "failed",
                "error": str(exc) or type(exc).__name__,
                "type": type(exc).__name__,
                "traceback": traceback.format_exc(limit=5),
                "seconds": round(time.perf_counter() - start, 3),
            }
            state.status, state.failed_task = "failed", task.name
            _save(settings, state)
            if on_task is not None:
                on_task(task.name, "failed")
            raise PipelineFailed(state) from exc
        outputs[task.name] = output
        state.tasks[task.name] = {
            "status": "success",
            "output": output,
            "seconds": round(time.perf_counter() - start, 3),
        }
        _save(settings, state)
        if on_task is not None:
            on_task(task.name, "success")
    state.status = "success"
    _save(settings, state)
    return state
