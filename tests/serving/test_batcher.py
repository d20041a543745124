"""Dynamic batching: requests waiting together are scored in one model call; a bad image fails only itself."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from conveyor.serving.service import Batcher, ServedModel


class FakeModel:
    """Probabilities [v, 1 - v] of an image whose pixels are all v; NaN images raise; the first call can be held."""

    classes = ("a", "b")

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def predict_images(self, images: list[np.ndarray]) -> np.ndarray:
        self.entered.set()
        self.hold.wait(10)
        self.batches.append(len(images))
        values = np.array([float(image.flat[0]) for image in images])
        if np.isnan(values).any():
            raise ValueError("a NaN image")
        return np.column_stack([values, 1 - values])


def served(model: FakeModel, version: int = 1) -> ServedModel:
    wrapper: Any = type("Wrapper", (), {})()
    wrapper.classes, wrapper.takes_pixels, wrapper.predict_images = model.classes, False, model.predict_images
    wrapper.pipeline = type("Identity", (), {"preprocessed": staticmethod(lambda p, colour=False: p)})()
    return ServedModel("m", version, wrapper)


@pytest.fixture
def batcher() -> Any:
    batcher = Batcher(max_batch=8)
    yield batcher
    batcher.close()


def image(value: float) -> np.ndarray:
    return np.full((4, 4), value)


def submit_while_held(batcher: Batcher, model: FakeModel, jobs: list[tuple[ServedModel, float]]) -> list[Any]:
    """Hold the model inside a first call (value 0.5), queue ``jobs``, release; the results of ``jobs`` in order."""
    first_model = jobs[0][0]
    model.hold.clear()
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        first = pool.submit(batcher.predict, first_model, image(0.5))
        assert model.entered.wait(5)
        futures = [pool.submit(batcher.predict, m, image(v)) for m, v in jobs]
        while batcher._queue.qsize() < len(jobs):  # every job is queued behind the held call
            threading.Event().wait(0.005)
        model.hold.set()
        first.result(10)
        return [f.exception(10) or f.result(10) for f in futures]


def test_requests_waiting_together_are_scored_in_one_call(batcher: Batcher) -> None:
    model = FakeModel()
    one = served(model)
    results = submit_while_held(batcher, model, [(one, v) for v in (0.1, 0.2, 0.3)])
    assert model.batches == [1, 3]
    for got, value in zip(results, (0.1, 0.2, 0.3), strict=True):
        np.testing.assert_array_equal(got, [value, 1 - value])


def test_a_bad_image_fails_its_own_request_only(batcher: Batcher) -> None:
    model = FakeModel()
    one = served(model)
    results = submit_while_held(batcher, model, [(one, v) for v in (0.1, float("nan"), 0.3)])
    assert isinstance(results[1], ValueError) and str(results[1]) == "a NaN image"
    np.testing.assert_array_equal(results[0], [0.1, 0.9])
    np.testing.assert_array_equal(results[2], [0.3, 0.7])
    assert model.batches == [1, 3, 1, 1, 1]  # the batch of 3 failed, then each image was scored alone


def test_each_model_in_a_batch_gets_its_own_call(batcher: Batcher) -> None:
    model = FakeModel()
    champion, challenger = served(model, 1), served(model, 2)
    results = submit_while_held(batcher, model, [(champion, 0.1), (challenger, 0.2), (champion, 0.3)])
    assert model.batches == [1, 2, 1]
    np.testing.assert_array_equal(results[1], [0.2, 0.8])


def test_a_lone_request_is_scored_at_once() -> None:
    model = FakeModel()
    batcher = Batcher()
    try:
        np.testing.assert_array_equal(batcher.predict(served(model), image(0.25)), [0.25, 0.75])
        assert model.batches == [1]
    finally:
        batcher.close()


def test_a_closed_batcher_refuses_work() -> None:
    batcher = Batcher()
    batcher.close()
    with pytest.raises(RuntimeError, match="the batcher is closed"):
        batcher.predict(served(FakeModel()), image(0.5))
