"""Scorers: requests waiting together are scored in one model call, a bad image fails alone, processes recover."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conveyor.data.decode import DecodeLimits
from conveyor.errors import InvalidImageError
from conveyor.serving.scoring import ModelFailed, ProcessScorer, Scored, ScorerUnavailable, ThreadScorer
from tests.serving.conftest import png, settings_for

LIMITS = DecodeLimits(min_side=8, max_pixels=10_000_000)


class FakeModel:
    """Probabilities [h/100, 1 - h/100] of an image h pixels high; a 40-pixel image raises; calls can be held."""

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.batches: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def predict(self, pixels: list[np.ndarray]) -> np.ndarray:
        self.entered.set()
        self.hold.wait(10)
        self.batches.append(len(pixels))
        if any(p.shape[0] == 40 for p in pixels):
            raise ValueError("40 pixels high")
        return np.array([[p.shape[0] / 100, (100 - p.shape[0]) / 100] for p in pixels])


def with_hash(data: bytes) -> tuple[bytes, str]:
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def scorer() -> Any:
    scorer = ThreadScorer(LIMITS)
    yield scorer
    scorer.close()


def submit_while_held(scorer: ThreadScorer, held: FakeModel, jobs: list[tuple[FakeModel, bytes]]) -> list[Any]:
    """Hold ``held`` inside a first call, queue ``jobs`` behind it, release; each job's result or error, in order."""
    held.hold.clear()
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        first = pool.submit(scorer.score, held, png(0, size=50))
        assert held.entered.wait(5)
        futures = [pool.submit(scorer.score, model, data) for model, data in jobs]
        while scorer._queue.qsize() < len(jobs):  # every job is queued behind the held call
            time.sleep(0.005)
        held.hold.set()
        first.result(10)
        return [f.exception(10) or f.result(10) for f in futures]


def test_requests_waiting_together_are_scored_in_one_call(scorer: ThreadScorer) -> None:
    model = FakeModel()
    results = submit_while_held(scorer, model, [(model, png(i, size=size)) for i, size in enumerate((50, 60, 70))])
    assert model.batches == [1, 3]
    assert [r.proba.tolist() for r in results] == [[0.5, 0.5], [0.6, 0.4], [0.7, 0.3]]
    assert [(r.inspected.width, r.inspected.format) for r in results] == [(50, "png"), (60, "png"), (70, "png")]
    assert results[0].inspected.sha256 == hashlib.sha256(png(0, size=50)).hexdigest()


def test_an_image_the_model_fails_on_fails_alone(scorer: ThreadScorer) -> None:
    model = FakeModel()
    results = submit_while_held(scorer, model, [(model, png(1, size=50)), (model, png(2, size=40))])
    assert isinstance(results[0], Scored) and results[0].proba.tolist() == [0.5, 0.5]
    assert isinstance(results[1], ModelFailed)
    failed = results[1]
    assert (str(failed), failed.input_like, failed.inspected.height) == ("ValueError: 40 pixels high", True, 40)
    assert model.batches == [1, 2, 1, 1]  # the batch of 2 failed, then each image was scored alone


def test_a_file_that_is_not_an_image_fails_alone(scorer: ThreadScorer) -> None:
    model = FakeModel()
    results = submit_while_held(scorer, model, [(model, b"not an image at all"), (model, png(3, size=60))])
    assert isinstance(results[0], InvalidImageError) and results[0].reason == "not_an_image"
    assert results[1].proba.tolist() == [0.6, 0.4]
    assert model.batches == [1, 1]  # the bad file never reached the model


def test_each_model_in_a_batch_gets_its_own_call(scorer: ThreadScorer) -> None:
    champion, challenger = FakeModel(1), FakeModel(2)
    jobs = [(champion, png(1, size=50)), (challenger, png(2, size=60)), (champion, png(3, size=70))]
    results = submit_while_held(scorer, champion, jobs)
    assert (champion.batches, challenger.batches) == ([1, 2], [1])
    assert results[1].proba.tolist() == [0.6, 0.4]


def test_a_lone_request_is_scored_at_once(scorer: ThreadScorer) -> None:
    model = FakeModel()
    assert scorer.score(model, png(1, size=50)).proba.tolist() == [0.5, 0.5]
    assert model.batches == [1]


def test_a_closed_scorer_refuses_work() -> None:
    scorer = ThreadScorer(LIMITS)
    scorer.close()
    with pytest.raises(RuntimeError, match="the scorer is closed"):
        scorer.score(FakeModel(), png(1))


@pytest.mark.slow
def test_scoring_processes_give_the_same_answers_and_recover_from_a_killed_one(home: Path) -> None:
    from conveyor.serving.models import load_version

    settings = settings_for(home)
    champion = load_version(settings, 1)
    processes = ProcessScorer(settings, LIMITS, 2, preload=[1])
    local = ThreadScorer(LIMITS)
    try:
        processes.warm_up()
        data = [png(seed, size=64, tumour=seed % 2 == 1) for seed in range(6)]
        with ThreadPoolExecutor(6) as pool:
            remote = list(pool.map(lambda blob: processes.score(champion, blob), data))
        for blob, scored in zip(data, remote, strict=True):
            expected = local.score(champion, blob)
            np.testing.assert_allclose(scored.proba, expected.proba, rtol=0, atol=1e-12)
            assert scored.inspected == expected.inspected
        for pid in processes.pids():  # every scoring process killed at once
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        answers: list[Any] = []
        for _ in range(3):  # the request in flight when the pool broke may be told to retry; the next is answered
            try:
                answers.append(processes.score(champion, data[0]))
                break
            except ScorerUnavailable as exc:
                answers.append(exc)
        assert isinstance(answers[-1], Scored)
        np.testing.assert_allclose(answers[-1].proba, remote[0].proba, rtol=0, atol=1e-12)
    finally:
        processes.close()
        local.close()


def test_a_job_whose_caller_gave_up_does_not_stop_the_scorer(scorer: ThreadScorer) -> None:
    model = FakeModel()
    model.hold.clear()
    held = scorer.submit(model, *with_hash(png(1, size=50)))
    assert model.entered.wait(5)
    abandoned = scorer.submit(model, *with_hash(png(2, size=60)))
    assert abandoned.cancel()  # what asyncio does when the client disconnects
    model.hold.set()
    assert held.result(10).proba.tolist() == [0.5, 0.5]
    assert scorer.score(model, png(3, size=70)).proba.tolist() == [0.7, 0.3]


@pytest.mark.slow
def test_one_dead_scoring_process_is_replaced_alone_while_the_other_answers(home: Path) -> None:
    from conveyor.serving.models import load_version

    settings = settings_for(home)
    champion = load_version(settings, 1)
    processes = ProcessScorer(settings, LIMITS, 2, preload=[1])
    try:
        processes.warm_up()
        first, survivor = processes.pids()
        os.kill(first, signal.SIGKILL)
        time.sleep(0.5)
        answers: list[Any] = []
        for seed in range(12):  # one at a time: whatever the dead slot held is told to retry, nothing else
            try:
                answers.append(processes.score(champion, png(seed, size=64)))
            except ScorerUnavailable as exc:
                answers.append(exc)
        assert sum(isinstance(a, ScorerUnavailable) for a in answers) <= 1
        assert sum(isinstance(a, Scored) for a in answers) >= 11
        assert survivor in processes.pids() and first not in processes.pids()
    finally:
        processes.close()
