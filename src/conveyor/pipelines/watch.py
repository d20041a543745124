"""The drop-folder watcher: clinicians file newly labelled cases into ``incoming/<label>/``; conveyor takes them in.

A file is taken once it has been quiet (unchanged size and time) for ``quiet_seconds``, so a copy in progress is never
read half-written. Ready files are moved (a rename, on one filesystem) into a batch folder
``incoming/.batches/<id>/<label>/``, and the batch runs the ``monitor`` pipeline (ingest, features, monitor,
retrain when the policy says so). When it succeeds, the batch folder moves to ``incoming/.processed/``.

Nothing is lost when the watcher is killed: a file is always either in ``incoming/<label>/`` or in a batch folder;
batches left pending are run first at the next start (ingest knows what it already took, and the runner resumes the
batch's pipeline from its unfinished task), and files that arrived while it was stopped are picked up at start.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.pipelines.definitions import pipeline
from conveyor.pipelines.runner import run_pipeline

__all__ = ["BatchResult", "collect_batch", "pending_batches", "process_batch", "ready_count", "watch"]

BATCHES = ".batches"
PROCESSED = ".processed"


@dataclass(frozen=True)
class BatchResult:
    batch: str
    files: int
    status: str  # success | failed
    outputs: dict[str, Any]
    error: str | None = None


def _batches_dir(settings: Settings) -> Path:
    return settings.incoming_dir / BATCHES


def pending_batches(settings: Settings) -> list[Path]:
    """Batch folders collected but not yet processed (a previous watcher was stopped mid-batch), oldest first."""
    folder = _batches_dir(settings)
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _ready_files(settings: Settings, quiet_seconds: float) -> list[Path]:
    now = time.time()
    ready = []
    incoming = settings.incoming_dir
    if not incoming.is_dir():
        return []
    # Every file outside the watcher's own folders, also one dropped at the top (no label): ingest quarantines it
    # with that reason instead of it waiting unseen forever.
    for path in sorted(incoming.rglob("*")):
        if path.relative_to(incoming).parts[0] in (BATCHES, PROCESSED) or not path.is_file():
            continue
        if now - path.stat().st_mtime >= quiet_seconds:
            ready.append(path)
    return ready


def ready_count(settings: Settings, quiet_seconds: float = 5.0) -> int:
    """Files a ``watch --once`` would process now: quiet files in ``incoming/``, and those of pending batches (what a
    scheduler's sensor asks before it starts a run)."""
    pending = sum(1 for batch in pending_batches(settings) for p in batch.rglob("*") if p.is_file())
    return len(_ready_files(settings, quiet_seconds)) + pending


def collect_batch(settings: Settings, quiet_seconds: float = 5.0) -> Path | None:
    """Move every quiet file of ``incoming/<label>/`` into a new batch folder; None when no file is ready."""
    ready = _ready_files(settings, quiet_seconds)
    if not ready:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    batch = _batches_dir(settings) / f"{stamp}-{uuid.uuid4().hex[:6]}"
    for path in ready:
        target = batch / path.relative_to(settings.incoming_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)  # atomic: the file is in exactly one of the two places
    return batch


def process_batch(settings: Settings, batch: Path) -> BatchResult:
    """Run the monitor pipeline on one batch; on success move it to ``incoming/.processed/``."""
    files = sum(1 for p in batch.rglob("*") if p.is_file())
    from conveyor.pipelines.runner import PipelineFailed

    try:
        state = run_pipeline(pipeline("monitor"), settings, {"path": str(batch)})
    except PipelineFailed as exc:
        return BatchResult(batch.name, files, "failed", {}, str(exc))
    done = settings.incoming_dir / PROCESSED / batch.name
    done.parent.mkdir(parents=True, exist_ok=True)
    os.replace(batch, done)
    outputs = {name: task.get("output", {"status": task["status"]}) for name, task in state.tasks.items()}
    return BatchResult(batch.name, files, "success", outputs)


def watch(
    settings: Settings,
    *,
    quiet_seconds: float = 5.0,
    once: bool = False,
    stop: threading.Event | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    retry_seconds: float = 60.0,
) -> list[BatchResult]:
    """Watch ``incoming/`` and process one batch at a time until ``stop`` is set (or once, with ``once``).

    With ``once`` it processes pending batches and the files already quiet, then returns: what a scheduler (cron,
    Airflow) calls. Otherwise a watchdog observer wakes it on every change and it polls at least every
    ``quiet_seconds``.
    """
    settings.incoming_dir.mkdir(parents=True, exist_ok=True)
    results: list[BatchResult] = []
    stop = stop or threading.Event()
    wake = threading.Event()
    observer = None
    if not once:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if f"/{BATCHES}" not in str(event.src_path) and f"/{PROCESSED}" not in str(event.src_path):
                    wake.set()

        observer = Observer()
        observer.schedule(_Wake(), str(settings.incoming_dir), recursive=True)
        observer.start()
    try:
        while True:
            failed = False
            for batch in pending_batches(settings):
                result = process_batch(settings, batch)
                results.append(result)
                if on_batch is not None:
                    on_batch(result)
                if result.status == "failed":  # left pending: retried later, after the batches behind it wait
                    failed = True
                    break
            if failed:
                if once or stop.wait(timeout=retry_seconds):
                    return results
                continue
            if collect_batch(settings, quiet_seconds) is not None:
                continue  # process it (pending now) before looking again
            if once or stop.is_set():
                return results
            wake.wait(timeout=quiet_seconds)
            wake.clear()
            if stop.is_set():
                return results
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
