"""What the server does per request, apart from HTTP: load models by alias, route, predict, log.

:class:`PredictionService` holds the champion (and, during a rollout, the challenger) loaded once from the registry,
each as the registered pyfunc's own :class:`~conveyor.tracking.pyfunc.ConveyorModel`. It calls the model's
preprocessing settings and classifier directly, so serving runs the training code path without paying for a pandas
DataFrame and a schema check per request. :meth:`PredictionService.refresh` picks up a moved alias or a changed
rollout without a restart, and :meth:`PredictionService.check_rollout` notices within a second a rollout that
another server process moved (replicas share the metadata DB, which is the only record of the rollout).

Uploads are decoded and scored by a scorer (:mod:`conveyor.serving.scoring`): in a thread of this process, or in
scoring processes, one per core; either scores the requests that wait at the same time in one call of the model.

The prediction log is written by one background thread in batches (:class:`PredictionLog`), so a request never waits
on the database; :meth:`PredictionLog.flush` waits for what was queued (feedback flushes before it looks a request up).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
from sqlalchemy import Engine, insert

from conveyor.config import Settings
from conveyor.data.decode import DecodeLimits
from conveyor.errors import InvalidImageError
from conveyor.serving.models import ServedModel, load_version
from conveyor.serving.rollout import RolloutStatus, active_rollout, choose_arm, rollout_mark
from conveyor.serving.scoring import Inspected, ModelFailed, ProcessScorer, ThreadScorer

__all__ = ["ModelUnavailable", "Outcome", "PredictionLog", "PredictionService"]

log = logging.getLogger(__name__)


class PredictionLog:
    """Writes prediction rows in batches from one thread; :meth:`flush` waits until everything queued is stored."""

    def __init__(self, engine: Engine, batch: int = 256, gather_s: float = 0.05) -> None:
        self._engine = engine
        self._batch = batch
        self._gather_s = gather_s  # after a small write, let rows gather: one commit per request cost 1 ms of each
        self.retry_pauses: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)  # ~8 s of a database away, then give up
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

    def _store(self, rows: list[dict[str, Any]]) -> None:
        """Store a batch: retried while the database is unreachable (a replica's PostgreSQL restarting, a dropped
        connection), then row by row, so one bad row never takes the batch with it. Retrying is safe: a row stored by
        an attempt whose answer was lost is refused the second time by the unique (request_id, arm)."""
        from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

        from conveyor.store.db import session_scope
        from conveyor.store.models import Prediction

        for pause in (*self.retry_pauses, None):
            try:
                with session_scope(self._engine) as session:  # one executemany, not an ORM object per row
                    session.execute(insert(Prediction), rows)
                return
            except IntegrityError:
                break
            except Exception as exc:
                transient = isinstance(exc, OperationalError | InterfaceError) or (
                    isinstance(exc, DBAPIError) and exc.connection_invalidated
                )
                if pause is None or not transient:
                    break
                log.warning("could not store %d prediction rows (%s); retrying in %.1f s", len(rows), exc, pause)
                time.sleep(pause)
        lost = 0
        for row in rows:
            try:
                with session_scope(self._engine) as session:
                    session.execute(insert(Prediction), [row])
            except IntegrityError:  # stored already by an attempt whose answer was lost
                continue
            except Exception:  # the log must never stop the server; say so loudly
                lost += 1
                log.exception("could not store the prediction row of request %s", row.get("request_id"))
        if lost:
            log.error("%d of %d prediction rows were not stored", lost, len(rows))

    def _run(self) -> None:

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
                self._store(rows)
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
    """The models being served, the rollout in force, the scorer and the prediction log.

    Args:
        scoring_processes: 1 scores in a thread of this process; more starts that many scoring processes (each
            loads the models; see :class:`~conveyor.serving.scoring.ProcessScorer`) once a champion is loaded.
    """

    def __init__(
        self, settings: Settings, engine: Engine, on_prediction: Any = None, scoring_processes: int = 1
    ) -> None:
        self.settings = settings
        self.engine = engine
        cfg = settings.serving
        self.limits = DecodeLimits(min_side=settings.ingest.min_side, max_pixels=cfg.max_pixels)
        self.champion: ServedModel | None = None
        self.challenger: ServedModel | None = None
        self.rollout: RolloutStatus | None = None
        self.log = PredictionLog(engine)
        self.scoring_processes = scoring_processes
        self.scorer: ThreadScorer | ProcessScorer | None = ThreadScorer(self.limits) if scoring_processes == 1 else None
        self._lock = threading.Lock()  # one refresh at a time; readers take a consistent snapshot of attributes
        self._rollout_mark: tuple[Any, ...] | None = None
        self._on_prediction = on_prediction or (lambda outcome: None)

    # ---------------------------------------------------------------------------------------------- loading

    def refresh(self) -> dict[str, Any]:
        """Load the versions the aliases (and the rollout) name now, if they changed. Returns what is served."""
        from conveyor.tracking.registry import CHAMPION, current_version

        with self._lock:
            # The mark first: a move after it changes it again, so check_rollout never misses one.
            self._rollout_mark = rollout_mark(self.engine)
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
            if self.scorer is None and self.champion is not None:
                preload = [m.version for m in (self.champion, self.challenger) if m is not None]
                scorer = ProcessScorer(self.settings, self.limits, self.scoring_processes, preload)
                scorer.warm_up()
                self.scorer = scorer
            return self.describe()

    def check_rollout(self) -> bool:
        """Refresh if any rollout moved since the last refresh (another server process may have decided it): one
        small query. Returns whether it refreshed."""
        if rollout_mark(self.engine) == self._rollout_mark:
            return False
        self.refresh()
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.settings.model_name,
            "champion": None if self.champion is None else self.champion.version,
            "challenger": None if self.challenger is None else self.challenger.version,
            "rollout": None if self.rollout is None else self.rollout.to_dict(),
        }

    @property
    def ready(self) -> bool:
        return self.champion is not None and self.scorer is not None

    def classes(self) -> list[str]:
        if self.champion is None:
            raise ModelUnavailable("no champion model is loaded")
        return self.champion.classes

    # ------------------------------------------------------------------------------------------- predicting

    async def predict(self, data: bytes) -> tuple[Outcome, Any]:
        """Answer one upload. Returns the outcome and a coroutine function that scores the shadow (await it after
        responding), or None.

        Raises:
            InvalidImageError: the upload is not a usable image (or the champion cannot process it).
            ModelUnavailable: no champion loaded.
            ScorerUnavailable: the scoring process died meanwhile.
        """
        started = time.perf_counter()
        champion, challenger, rollout = self.champion, self.challenger, self.rollout  # one consistent snapshot
        scorer = self.scorer
        if champion is None or scorer is None:
            raise ModelUnavailable("no champion model is loaded")
        sha256 = hashlib.sha256(data).hexdigest()
        arm = choose_arm(rollout, sha256) if challenger is not None else "champion"
        model = challenger if arm == "challenger" and challenger is not None else champion
        request_id = str(uuid.uuid4())
        try:
            scored = await asyncio.wrap_future(scorer.submit(model, data, sha256))
        except ModelFailed as exc:
            if model is champion:
                _champion_failed(model, exc)
            # The challenger failed: log its failure (it counts against it) and let the champion answer.
            self._log_row(request_id, challenger, "challenger", rollout, exc.inspected, None, started, exc)
            request_id = str(uuid.uuid4())
            arm, model = "champion", champion
            try:
                scored = await asyncio.wrap_future(scorer.submit(model, data, sha256))
            except ModelFailed as exc2:
                _champion_failed(model, exc2)
        outcome = self._outcome(request_id, arm, model, scored.proba, scored.inspected, started, rollout)
        self._log_row(request_id, model, arm, rollout, scored.inspected, scored.proba, started, None)
        self._on_prediction(outcome)
        shadow = None
        if rollout is not None and rollout.mode == "shadow" and challenger is not None:

            async def shadow() -> None:
                await self._score_shadow(scorer, challenger, request_id, rollout, data, sha256)

        return outcome, shadow

    async def _score_shadow(
        self, scorer: ThreadScorer | ProcessScorer, model: ServedModel, request_id: str, rollout: RolloutStatus,
        data: bytes, sha256: str,
    ) -> None:  # fmt: skip
        started = time.perf_counter()
        try:
            scored = await asyncio.wrap_future(scorer.submit(model, data, sha256))
        except ModelFailed as exc:
            self._log_row(request_id, model, "shadow", rollout, exc.inspected, None, started, exc)
            return
        except Exception:  # the shadow never troubles the answer already given
            log.exception("shadow scoring failed")
            return
        self._log_row(request_id, model, "shadow", rollout, scored.inspected, scored.proba, started, None)

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
        if self.scorer is not None:
            self.scorer.close()
        self.log.close()


def _champion_failed(model: ServedModel, exc: ModelFailed) -> NoReturn:
    """The champion failed on an upload: a 422 for the kind of error a degenerate image causes, else the failure
    itself (a 500)."""
    if exc.input_like:
        detail = f"model version {model.version} cannot process this image: {exc}"
        raise InvalidImageError("unprocessable", detail) from exc
    raise exc
