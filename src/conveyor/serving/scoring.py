"""Decoding and scoring uploads, in batches, in a thread of the server or in a pool of scoring processes.

Both scorers take one upload at a time (:meth:`score`, blocking) and score together every upload that is waiting
when they are free, in one call of the model per version: scikit-learn's per-call checks cost 1.3 ms for one image
and 0.2 ms per image in a batch of 8, and a lone request waits for nothing.

* :class:`ThreadScorer` runs in the server process (``conveyor serve --workers 1`` and the tests).
* :class:`ProcessScorer` keeps one scoring process per core, each with the model loaded, and hands each batch to
  the next free process. The server process itself only speaks HTTP, routes, logs and counts. Every request goes to
  whichever process is free: with uvicorn's own worker processes, each kept connection stayed with the process
  that accepted it, and eight connections split 6/2 or 7/1 ran at the speed of one core.

:func:`score_blobs` is the work itself, the same in both: decode each upload (its statistics are what monitoring
compares), predict the batch, and if the batch fails, predict one image at a time so a bad image fails alone.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conveyor.config import Settings
from conveyor.data.decode import DecodeLimits, decode_image
from conveyor.errors import InvalidImageError

__all__ = [
    "Inspected",
    "ModelFailed",
    "ProcessScorer",
    "Scored",
    "ScorerUnavailable",
    "ThreadScorer",
    "freeze_heap",
    "inspect",
    "score_blobs",
]

log = logging.getLogger(__name__)

#: What a model raises on an input it cannot handle (a degenerate image after preprocessing), as opposed to a bug.
INPUT_ERRORS = (ValueError, ArithmeticError, IndexError, InvalidImageError)
MAX_BATCH = 32


@dataclass(frozen=True)
class Inspected:
    """An upload's identity and the statistics monitoring compares (as ingest computes them)."""

    sha256: str
    format: str
    width: int
    height: int
    brightness: float
    contrast: float


def inspect(data: bytes, sha256: str, limits: DecodeLimits) -> tuple[Inspected, np.ndarray]:
    """Decode one upload (format sniffed from the content, geometry checked before decoding): its facts and pixels.
    ``sha256`` is the caller's hash of ``data`` (the server needs it first, to route the request).

    Raises:
        InvalidImageError: the bytes are not a usable image.
    """
    from conveyor.data.facts import brightness_contrast  # the same statistics as the images table

    decoded = decode_image(data, limits)
    brightness, contrast = brightness_contrast(decoded.pixels)
    inspected = Inspected(sha256, decoded.format, decoded.width, decoded.height, brightness, contrast)
    return inspected, decoded.pixels


@dataclass(frozen=True)
class Scored:
    """One upload decoded and scored."""

    inspected: Inspected
    proba: np.ndarray


class ModelFailed(Exception):
    """The model raised on an upload that decoded fine (``inspected``). ``input_like``: the kind of error a
    degenerate image causes (the client's problem: 422), not a bug (500)."""

    def __init__(self, message: str, input_like: bool, inspected: Inspected) -> None:
        super().__init__(message)
        self.input_like = input_like
        self.inspected = inspected

    def __reduce__(self) -> tuple[type[ModelFailed], tuple[str, bool, Inspected]]:
        return (type(self), (str(self), self.input_like, self.inspected))


class ScorerUnavailable(Exception):
    """A scoring process died while it held this upload (it is being replaced): try again."""


def score_blobs(model: Any, blobs: list[tuple[bytes, str]], limits: DecodeLimits) -> list[Scored | Exception]:
    """Decode and score uploads, given as (bytes, sha256), with one model (a ``ServedModel``): per upload, its result
    or its error (``InvalidImageError`` for a bad file, ``ModelFailed`` when the model raised)."""
    out: dict[int, Scored | Exception] = {}
    decoded: list[tuple[int, Inspected, np.ndarray]] = []
    for index, (blob, sha256) in enumerate(blobs):
        try:
            facts, pixels = inspect(blob, sha256, limits)
        except InvalidImageError as exc:
            out[index] = exc
            continue
        except Exception as exc:  # a decoder's failure on hostile input is that input's error, never its batch's
            log.warning("decoding an upload failed: %r", exc)
            out[index] = InvalidImageError("corrupt", f"the file cannot be decoded ({type(exc).__name__}: {exc})")
            continue
        decoded.append((index, facts, pixels))
    pending = [decoded] if decoded else []
    while pending:
        group = pending.pop()
        try:
            proba = model.predict([pixels for _, _, pixels in group])
        except Exception as exc:
            if len(group) > 1:  # find the image that failed: score each alone
                pending.extend([item] for item in group)
                continue
            index, facts, _ = group[0]
            out[index] = ModelFailed(f"{type(exc).__name__}: {exc}", isinstance(exc, INPUT_ERRORS), facts)
            log.warning("model version %s failed on an upload: %r", getattr(model, "version", "?"), exc)
            continue
        for (index, facts, _), row in zip(group, proba, strict=True):
            out[index] = Scored(facts, np.asarray(row, dtype=np.float64))
    return [out[index] for index in range(len(blobs))]


@dataclass
class _Job:
    model: Any  # ServedModel
    data: bytes
    sha256: str
    future: Future[Scored] = field(default_factory=Future)

    def finish(self, result: Scored | Exception) -> None:
        try:
            if isinstance(result, Exception):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
        except InvalidStateError:  # cancelled: the client went away while it waited
            pass


class _Scorer:
    """The queue and the wait shared by both scorers; ``_dispatch`` scores one drained batch."""

    def __init__(self, limits: DecodeLimits, max_batch: int = MAX_BATCH) -> None:
        self.limits = limits
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    def submit(self, model: Any, data: bytes, sha256: str) -> Future[Scored]:
        """Queue one upload (and its sha256) to be decoded and scored with ``model``; the future holds its
        :class:`Scored`, or raises ``InvalidImageError`` (not a usable image), ``ModelFailed`` (the model raised on
        it) or ``ScorerUnavailable`` (the process scoring it died). ``await asyncio.wrap_future(...)`` from a
        coroutine."""
        if self._closed:
            raise RuntimeError("the scorer is closed")
        job = _Job(model, data, sha256)
        self._queue.put(job)
        return job.future

    def score(self, model: Any, data: bytes) -> Scored:
        """:meth:`submit` and wait (the hash computed here)."""
        return self.submit(model, data, hashlib.sha256(data).hexdigest()).result()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            self._wait_for_capacity()
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(item)
            models = {id(job.model): job.model for job in jobs}  # champion and challenger, in arrival order
            for number, model in enumerate(models.values()):
                if number:
                    self._wait_for_capacity()
                self._dispatch(model, [job for job in jobs if job.model is model])

    def _wait_for_capacity(self) -> None:
        """Block until a batch can be handed on (the thread scorer always can: it scores in this thread)."""

    def _dispatch(self, model: Any, jobs: list[_Job]) -> None:
        raise NotImplementedError


class ThreadScorer(_Scorer):
    """Scores each batch in its own thread, in the server process."""

    def _dispatch(self, model: Any, jobs: list[_Job]) -> None:
        try:
            results: list[Scored | Exception] = score_blobs(model, _blobs(jobs), self.limits)
        except Exception as exc:  # score_blobs catches the model's errors; anything else is a bug: fail the batch
            log.exception("scoring a batch failed")
            results = [exc] * len(jobs)
        for job, result in zip(jobs, results, strict=True):
            job.finish(result)


def _blobs(jobs: list[_Job]) -> list[tuple[bytes, str]]:
    return [(job.data, job.sha256) for job in jobs]


def freeze_heap() -> None:
    """Move everything loaded so far (MLflow, scikit-learn, the models: millions of objects) out of the garbage
    collector's sight. A full collection scanning them all paused the server ~0.2 s every few seconds under load.
    For a server process (``conveyor serve``, a scoring process), once it has loaded what it serves."""
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------------------------- scoring processes

_WORKER_MODELS: OrderedDict[int, Any] = OrderedDict()  # in a scoring process: the versions it has loaded, by use
_WORKER_SETTINGS: Settings | None = None
_KEEP_VERSIONS = 3


def _worker_start(settings: Settings, preload: list[int]) -> None:
    global _WORKER_SETTINGS
    from conveyor.workspace import die_with_parent

    die_with_parent()
    _WORKER_SETTINGS = settings
    for version in preload:
        _worker_model(version)
    freeze_heap()


def _worker_model(version: int) -> Any:
    from conveyor.serving.models import load_version

    if version not in _WORKER_MODELS:
        assert _WORKER_SETTINGS is not None
        _WORKER_MODELS[version] = load_version(_WORKER_SETTINGS, version)
        while len(_WORKER_MODELS) > _KEEP_VERSIONS:  # a long-running server sees many versions: drop the least used
            _WORKER_MODELS.popitem(last=False)
    _WORKER_MODELS.move_to_end(version)
    return _WORKER_MODELS[version]


def _worker_score(version: int, blobs: list[tuple[bytes, str]], limits: DecodeLimits) -> list[Scored | Exception]:
    return score_blobs(_worker_model(version), blobs, limits)


class ProcessScorer(_Scorer):
    """Scores each batch in one of ``processes`` scoring processes (spawned; each loads the versions it is asked
    for, the champion at start). At most two batches per process are out at a time, so a batch takes everything
    that waited while the processes were busy.

    Each process is a slot of its own (a one-process executor): a batch goes to the slot with the fewest batches
    out, and a process that dies is replaced alone, while the others keep answering. Only the requests it held
    are told to retry (503).
    """

    def __init__(
        self, settings: Settings, limits: DecodeLimits, processes: int, preload: list[int], max_batch: int = MAX_BATCH
    ) -> None:
        import multiprocessing

        self._settings, self._preload, self._processes = settings, preload, processes
        # One batch scoring and one waiting per process: a process never waits for this one between batches.
        self._free = threading.Semaphore(2 * processes)
        self._context = multiprocessing.get_context("spawn")  # never fork a process with threads and a DB pool
        self._slots = [self._new_process() for _ in range(processes)]
        self._out = [0] * processes  # batches out per slot
        self._slots_lock = threading.Lock()
        super().__init__(limits, max_batch)

    def _new_process(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            1, mp_context=self._context, initializer=_worker_start, initargs=(self._settings, self._preload),
        )  # fmt: skip

    def pids(self) -> list[int]:
        """The scoring processes' ids (those started so far), one list per slot, flattened."""
        with self._slots_lock:
            return [pid for slot in self._slots for pid in list(slot._processes or {})]

    def warm_up(self, timeout: float = 300.0) -> None:
        """Wait until every scoring process has started and loaded its models (the first batches would wait)."""
        with self._slots_lock:
            slots = list(self._slots)
        for future in [slot.submit(_worker_model, v) for slot in slots for v in self._preload]:
            future.result(timeout)

    def close(self) -> None:
        super().close()
        with self._slots_lock:
            slots = list(self._slots)
        for slot in slots:
            slot.shutdown(wait=True, cancel_futures=True)

    def _wait_for_capacity(self) -> None:
        self._free.acquire()

    def _take_slot(self) -> tuple[int, ProcessPoolExecutor]:
        with self._slots_lock:
            index = min(range(len(self._slots)), key=lambda i: (self._out[i], i))
            self._out[index] += 1
            return index, self._slots[index]

    def _give_back(self, index: int) -> None:
        with self._slots_lock:
            self._out[index] -= 1
        self._free.release()

    def _dispatch(self, model: Any, jobs: list[_Job]) -> None:
        index, slot = self._take_slot()
        try:
            try:
                future = slot.submit(_worker_score, model.version, _blobs(jobs), self.limits)
            except BrokenProcessPool:  # it died between batches: this batch goes to its replacement
                slot = self._replace(index, slot)
                future = slot.submit(_worker_score, model.version, _blobs(jobs), self.limits)
        except Exception as exc:  # shut down, or broken again at once: these requests fail, the capacity returns
            self._give_back(index)
            for job in jobs:
                job.finish(ScorerUnavailable(f"the scoring processes are unavailable: {exc}"))
            return
        future.add_done_callback(self._done_callback(index, slot, jobs))

    def _done_callback(
        self, index: int, slot: ProcessPoolExecutor, jobs: list[_Job]
    ) -> Callable[[Future[list[Scored | Exception]]], None]:
        def done(future: Future[list[Scored | Exception]]) -> None:
            self._give_back(index)
            try:
                results = future.result()
            except BrokenProcessPool:
                log.error("scoring process %d died; replacing it (the others keep answering)", index)
                self._replace(index, slot)
                results = [ScorerUnavailable("the scoring process died; try again")] * len(jobs)
            except Exception as exc:
                log.exception("scoring a batch failed")
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                job.finish(result)

        return done

    def _replace(self, index: int, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A new process in slot ``index`` in place of ``broken`` (once, however many batches saw it die)."""
        with self._slots_lock:
            if self._slots[index] is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._slots[index] = self._new_process()
            return self._slots[index]
