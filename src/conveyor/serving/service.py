"""What the server does per request, apart from HTTP: load models by alias, route, predict, log.

:class:`PredictionService` holds the champion (and, during a rollout, the challenger) loaded once from the registry,
each as the registered pyfunc's own :class:`~conveyor.tracking.pyfunc.ConveyorModel`. It calls the model's
preprocessing settings and classifier directly, so serving runs the training code path without paying for a pandas
DataFrame and a schema check per request. :meth:`PredictionService.refresh` picks up a moved alias or a changed
rollout without a restart.

Requests that wait at the same time are scored together (:class:`Batcher`): one call of the model for all of them
pays scikit-learn's per-call checks once (1.3 ms for one image, 0.2 ms per image in a batch of 8), and a lone request
waits for nothing.

The prediction log is written by one background thread in batches (:class:`PredictionLog`), so a request never waits
on the database; :meth:`PredictionLog.flush` waits for what was queued (feedback flushes before it looks a request up).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert

from conveyor.config import Settings
from conveyor.data.decode import DecodeLimits, decode_image
from conveyor.errors import InvalidImageError
from conveyor.serving.rollout import RolloutStatus, active_rollout, choose_arm, serving_settings

__all__ = ["Batcher", "Inspected", "PredictionLog", "PredictionService", "ServedModel", "inspect", "load_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One registered version, loaded."""

    name: str
    version: int
    model: Any  # ConveyorModel

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def predict(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Probabilities (n, classes) of decoded images (the model's preprocessing, features and classifier)."""
        pipeline, colour = self.model.pipeline, self.model.takes_pixels
        images = [pipeline.preprocessed(p, colour=colour) for p in pixels]
        return np.asarray(self.model.predict_images(images), dtype=np.float64)


def load_version(settings: Settings, version: int) -> ServedModel:
    """Load one registered version of the model (by number, so what is loaded is what is reported)."""
    import mlflow.pyfunc

    from conveyor.tracking.setup import configure_mlflow

    configure_mlflow(settings)
    saved_path = list(sys.path)
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    finally:
        sys.path[:] = saved_path  # the model's code_paths copy of conveyor must not shadow the installed package
    inner = loaded.unwrap_python_model()
    return ServedModel(settings.model_name, version, inner)


@dataclass(frozen=True)
class Inspected:
    """A decoded upload and the statistics monitoring compares (as ingest computes them)."""

    sha256: str
    format: str
    width: int
    height: int
    brightness: float
    contrast: float
    pixels: np.ndarray


def inspect(data: bytes, limits: DecodeLimits) -> Inspected:
    """Decode one upload (format sniffed from the content, geometry checked before decoding).

    Raises:
        InvalidImageError: the bytes are not a usable image.
    """
    from conveyor.data.ingest import reduced_gray  # the same statistics as the images table

    decoded = decode_image(data, limits)
    gray = reduced_gray(decoded.pixels)
    return Inspected(
        sha256=hashlib.sha256(data).hexdigest(),
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        brightness=float(gray.mean()),
        contrast=float(gray.std()),
        pixels=decoded.pixels,
    )


@dataclass
class _Job:
    model: ServedModel
    pixels: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Batcher:
    """Dynamic batching: one thread scores every request that is waiting when it is free, in one call per model.

    It never waits for more requests to come (no added latency); under load the queue fills while a batch is being
    scored. A batch that fails is scored again one image at a time, so a bad image fails its own request only.
    """

    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="model-batcher", daemon=True)
        self._thread.start()

    def predict(self, model: ServedModel, pixels: np.ndarray) -> np.ndarray:
        """The probabilities of one decoded image (blocks until its batch is scored; raises what the model raised)."""
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        job = _Job(model, pixels)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                jobs.append(item)
            models = {id(job.model): job.model for job in jobs}  # champion and challenger, in arrival order
            for model in models.values():
                self._score([job for job in jobs if job.model is model])

    @staticmethod
    def _score(jobs: list[_Job]) -> None:
        try:
            proba = jobs[0].model.predict([job.pixels for job in jobs])
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].error = exc
                jobs[0].done.set()
            else:
                for job in jobs:
                    Batcher._score([job])
            return
        for job, row in zip(jobs, proba, strict=True):
            job.result = row
            job.done.set()


class PredictionLog:
    """Writes prediction rows in batches from one thread; :meth:`flush` waits until everything queued is stored."""

    def __init__(self, engine: Engine, batch: int = 256, gather_s: float = 0.05) -> None:
        self._engine = engine
        self._batch = batch
        self._gather_s = gather_s  # after a small write, let rows gather: one commit per request cost 1 ms of each
        self._queue: queue.Queue[dict[str, Any] | threading.Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def add(self, row: dict[str, Any]) -> None:
        self._queue.put(row)

    def flush(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():  # closed: nothing more will be written
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from conveyor.serving.tables import Prediction
        from conveyor.store.db import session_scope

        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self._batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [i for i in items if isinstance(i, dict)]
            if rows:
                try:
                    with session_scope(self._engine) as session:  # one executemany, not an ORM object per row
                        session.execute(insert(Prediction), rows)
                except Exception:  # the log must never stop the server; say so loudly
                    log.exception("could not store %d prediction rows", len(rows))
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
                elif item is None:
                    stop = True
            if rows and len(items) < self._batch and not stop:
                time.sleep(self._gather_s)


@dataclass
class Outcome:
    """One answered request."""

    request_id: str
    arm: str
    model: ServedModel
    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float
    inspected: Inspected
    shadow: ServedModel | None = None
    rollout: RolloutStatus | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ModelUnavailable(Exception):
    """No champion is loaded (yet): the server is not ready."""


class PredictionService:
    """The models being served, the rollout in force, and the prediction log."""

    def __init__(self, settings: Settings, engine: Engine, on_prediction: Any = None) -> None:
        self.settings = settings
        self.engine = engine
        cfg = serving_settings(settings)
        self.limits = DecodeLimits(min_side=settings.ingest.min_side, max_pixels=cfg.max_pixels)
        self.champion: ServedModel | None = None
        self.challenger: ServedModel | None = None
        self.rollout: RolloutStatus | None = None
        self.log = PredictionLog(engine)
        self.batcher = Batcher()
        self._lock = threading.Lock()  # one refresh at a time; readers take a consistent snapshot of attributes
        self._on_prediction = on_prediction or (lambda outcome: None)

    # ---------------------------------------------------------------------------------------------- loading

    def refresh(self) -> dict[str, Any]:
        """Load the versions the aliases (and the rollout) name now, if they changed. Returns what is served."""
        from conveyor.tracking.registry import CHAMPION, current_version

        with self._lock:
            rollout = active_rollout(self.engine)
            champion_version = current_version(self.settings, CHAMPION)
            if champion_version is not None and (self.champion is None or self.champion.version != champion_version):
                self.champion = load_version(self.settings, champion_version)
                log.info("serving %s version %d as champion", self.settings.model_name, champion_version)
            wanted = rollout.challenger_version if rollout is not None else None
            if wanted is None:
                self.challenger = None
            elif self.challenger is None or self.challenger.version != wanted:
                self.challenger = load_version(self.settings, wanted)
            self.rollout = rollout
            return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.settings.model_name,
            "champion": None if self.champion is None else self.champion.version,
            "challenger": None if self.challenger is None else self.challenger.version,
            "rollout": None if self.rollout is None else self.rollout.to_dict(),
        }

    @property
    def ready(self) -> bool:
        return self.champion is not None

    def classes(self) -> list[str]:
        if self.champion is None:
            raise ModelUnavailable("no champion model is loaded")
        return self.champion.classes

    # ------------------------------------------------------------------------------------------- predicting

    def predict(self, data: bytes) -> tuple[Outcome, Any]:
        """Answer one upload. Returns the outcome and a callable that scores the shadow (run it after responding).

        Raises:
            InvalidImageError: the upload is not a usable image.
            ModelUnavailable: no champion loaded.
        """
        started = time.perf_counter()
        champion, challenger, rollout = self.champion, self.challenger, self.rollout  # one consistent snapshot
        if champion is None:
            raise ModelUnavailable("no champion model is loaded")
        inspected = inspect(data, self.limits)
        arm = choose_arm(rollout, inspected.sha256) if challenger is not None else "champion"
        model = challenger if arm == "challenger" and challenger is not None else champion
        request_id = str(uuid.uuid4())
        try:
            proba = self.batcher.predict(model, inspected.pixels)
        except Exception as exc:
            if model is champion:
                if isinstance(exc, _INPUT_ERRORS):
                    raise _unprocessable(model, exc) from exc
                raise
            # The challenger failed: log its failure (it counts against it) and let the champion answer.
            self._log_row(request_id, challenger, "challenger", rollout, inspected, None, started, exc)
            request_id = str(uuid.uuid4())
            arm, model = "champion", champion
            try:
                proba = self.batcher.predict(model, inspected.pixels)
            except _INPUT_ERRORS as exc2:
                raise _unprocessable(model, exc2) from exc2
        outcome = self._outcome(request_id, arm, model, proba, inspected, started, rollout)
        self._log_row(request_id, model, arm, rollout, inspected, proba, started, None)
        self._on_prediction(outcome)
        shadow = None
        if rollout is not None and rollout.mode == "shadow" and challenger is not None:

            def shadow() -> None:
                self._score_shadow(challenger, request_id, rollout, inspected)

        return outcome, shadow

    def _score_shadow(self, model: ServedModel, request_id: str, rollout: RolloutStatus, inspected: Inspected) -> None:
        started = time.perf_counter()
        try:
            proba = self.batcher.predict(model, inspected.pixels)
        except Exception as exc:
            self._log_row(request_id, model, "shadow", rollout, inspected, None, started, exc)
            return
        self._log_row(request_id, model, "shadow", rollout, inspected, proba, started, None)

    def _outcome(
        self,
        request_id: str,
        arm: str,
        model: ServedModel,
        proba: np.ndarray,
        inspected: Inspected,
        started: float,
        rollout: RolloutStatus | None,
    ) -> Outcome:
        best = int(proba.argmax())
        return Outcome(
            request_id=request_id,
            arm=arm,
            model=model,
            label=model.classes[best],
            confidence=float(proba[best]),
            probabilities={c: float(p) for c, p in zip(model.classes, proba, strict=True)},
            latency_ms=(time.perf_counter() - started) * 1000,
            inspected=inspected,
            rollout=rollout,
        )

    def _log_row(
        self,
        request_id: str,
        model: ServedModel | None,
        arm: str,
        rollout: RolloutStatus | None,
        inspected: Inspected,
        proba: np.ndarray | None,
        started: float,
        error: BaseException | None,
    ) -> None:
        if model is None:
            return
        best = None if proba is None else int(proba.argmax())
        self.log.add(
            {
                "request_id": request_id,
                "model_name": model.name,
                "model_version": model.version,
                "arm": arm,
                "rollout_id": None if rollout is None else rollout.id,
                "stage": None if rollout is None else rollout.stage,
                "input_sha256": inspected.sha256,
                "format": inspected.format,
                "width": inspected.width,
                "height": inspected.height,
                "brightness": inspected.brightness,
                "contrast": inspected.contrast,
                "label": None if best is None else model.classes[best],
                "confidence": None if proba is None or best is None else float(proba[best]),
                "probabilities": None
                if proba is None
                else {c: float(p) for c, p in zip(model.classes, proba, strict=True)},
                "latency_ms": (time.perf_counter() - started) * 1000,
                "error": None if error is None else f"{type(error).__name__}: {error}"[:2000],
            }
        )

    def close(self) -> None:
        self.batcher.close()
        self.log.close()


#: What a model raises on an input it cannot handle (a degenerate image after preprocessing), as opposed to a bug.
_INPUT_ERRORS = (ValueError, ArithmeticError, IndexError, InvalidImageError)


def _unprocessable(model: ServedModel, exc: Exception) -> InvalidImageError:
    log.warning("model version %d failed on an upload: %r", model.version, exc)
    return InvalidImageError(
        "unprocessable", f"model version {model.version} cannot process this image: {type(exc).__name__}: {exc}"
    )
