"""The batched transform (diagrams laid end to end) against the reference path (one ``_vectorize`` per diagram).

Every vectoriser, on random diagrams with the cases the code singles out: empty diagrams, one bar, zero-length bars,
a diagram of zero-length bars only, ties, bars on grid points and outside the grid, and diagrams larger than a batch.
Selections (landscape levels) and per-diagram products (2-D blocks and images) are equal bit for bit; sums over bars
run in another order, so they agree to rounding (1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.features.vectorizers import (
    BettiCurve,
    FunctionalDataAnalysis,
    PersistenceBlock,
    PersistenceEntropy,
    PersistenceImage,
    PersistenceLandscape,
    SummaryStatistics,
    _DiagramVectorizer,
)


def random_diagram(rng: np.random.Generator, n: int) -> np.ndarray:
    """n bars in [0, 1], mostly short (as noise bars are), a few long."""
    births = rng.random(n)
    lengths = rng.random(n) * rng.choice([0.01, 0.05, 1.0], n)
    return np.stack([births, np.minimum(births + lengths, 1.0)], axis=1)


def diagrams() -> list[np.ndarray]:
    rng = np.random.default_rng(15)
    tied = np.array([[0.1, 0.6], [0.1, 0.6], [0.2, 0.5], [0.2, 0.5], [0.3, 0.4]])
    return [
        np.empty((0, 2)),
        np.array([[0.2, 0.7]]),
        np.array([[0.3, 0.3]]),  # zero length only: entropy 0, no landscape
        np.array([[0.4, 0.4], [0.5, 0.5]]),
        random_diagram(rng, 3),
        np.empty((0, 2)),
        tied,
        np.array([[0.0, 0.25], [0.25, 0.5], [0.5, 1.0], [0.05, 0.05]]),  # on grid points
        np.array([[-0.5, -0.2], [1.2, 1.5], [-0.1, 1.3]]),  # outside a [0, 1] grid
        random_diagram(rng, 64),
        random_diagram(rng, 65),  # either side of FDA's direct / running-power switch
        random_diagram(rng, 3000),  # more than a batch
        random_diagram(rng, 40),
        np.empty((0, 2)),
    ]


UNIT = np.linspace(0.0, 1.0, 11)
CASES: list[tuple[str, _DiagramVectorizer, bool]] = [
    ("landscape fixed grid", PersistenceLandscape(k=3, grid=UNIT), True),
    ("landscape learned grid", PersistenceLandscape(k=5, n_grid=17), True),
    ("landscape k=1", PersistenceLandscape(k=1, grid=UNIT), True),
    ("block", PersistenceBlock(birth_grid=UNIT[::2], persistence_grid=UNIT[::2]), True),
    ("block learned", PersistenceBlock(n_grid=6), True),
    ("block univariate", PersistenceBlock(univariate=True, persistence_grid=UNIT), False),
    ("fda", FunctionalDataAnalysis(K=10), False),
    ("fda scaled", FunctionalDataAnalysis(K=3, max_death=0.7), False),
    ("stats", SummaryStatistics(), False),
    ("image", PersistenceImage(birth_grid=UNIT, persistence_grid=UNIT), True),
    ("image learned", PersistenceImage(n_grid=7, sigma=0.1), True),
    ("image univariate", PersistenceImage(univariate=True, persistence_grid=UNIT), False),
    ("betti", BettiCurve(grid=np.linspace(0.0, 1.0, 21)), False),
    ("betti learned", BettiCurve(n_grid=9), False),
    ("entropy", PersistenceEntropy(), False),
]


@pytest.mark.parametrize("batch_bars", [1, 50, 8192])
@pytest.mark.parametrize(("name", "vectorizer", "exact"), CASES, ids=[case[0] for case in CASES])
def test_batched_equals_per_diagram(
    name: str, vectorizer: _DiagramVectorizer, exact: bool, batch_bars: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = diagrams()
    monkeypatch.setattr(type(vectorizer), "batch_bars", batch_bars)
    vectorizer.fit(batch)
    batched = vectorizer.transform(batch)
    monkeypatch.setattr(_DiagramVectorizer, "batched", False)
    reference = vectorizer.transform(batch)
    assert batched.shape == reference.shape == (len(batch), vectorizer.get_feature_names_out().shape[0])
    assert batched.dtype == np.float64
    if exact:
        np.testing.assert_array_equal(batched, reference)
    else:
        np.testing.assert_allclose(batched, reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("name", "vectorizer", "exact"), CASES, ids=[case[0] for case in CASES])
def test_empty_batch_and_empty_diagrams_only(name: str, vectorizer: _DiagramVectorizer, exact: bool) -> None:
    vectorizer.fit(diagrams())
    n_features = vectorizer.get_feature_names_out().shape[0]
    assert vectorizer.transform([]).shape == (0, n_features)
    np.testing.assert_array_equal(
        vectorizer.transform([np.empty((0, 2))] * 3), vectorizer._transform_per_diagram([np.empty((0, 2))] * 3)
    )


def test_landscape_batch_with_more_keys_than_int16(monkeypatch: pytest.MonkeyPatch) -> None:
    """diagrams x grid points beyond int16 take the wide-key sort; the values do not change."""
    rng = np.random.default_rng(3)
    batch = [random_diagram(rng, 2) for _ in range(1700)]  # 1700 x 20 grid points > 32767 keys
    landscape = PersistenceLandscape(k=2, grid=np.linspace(0.0, 1.0, 20)).fit(batch)
    monkeypatch.setattr(PersistenceLandscape, "batch_bars", 10**6)
    batched = landscape.transform(batch)
    monkeypatch.setattr(_DiagramVectorizer, "batched", False)
    np.testing.assert_array_equal(batched, landscape.transform(batch))
