"""Our vectorisers against tdavec 0.1.5's own outputs (tests/fixtures/tdavec_reference.json).

The fixture is written by tests/fixtures/make_tdavec_reference.py in a separate environment that has tdavec; these
tests only read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

RTOL = ATOL = 1e-12

# output key in the fixture -> our transformer, built from the fixture's parameters
FACTORIES: dict[str, Callable[[dict[str, Any]], _DiagramVectorizer]] = {
    "landscape": lambda p: PersistenceLandscape(k=p["landscape"]["k"], grid=p["landscape"]["grid"]),
    "block": lambda p: PersistenceBlock(tau=p["block"]["tau"], n_grid=p["block"]["n_grid"]),
    "block_univariate": lambda p: PersistenceBlock(tau=p["block"]["tau"], n_grid=p["block"]["n_grid"], univariate=True),
    "fda": lambda p: FunctionalDataAnalysis(K=p["fda"]["K"]),
    "stats": lambda p: SummaryStatistics(),
    "image": lambda p: PersistenceImage(
        sigma=p["image"]["sigma"], birth_grid=p["image"]["birth_grid"], persistence_grid=p["image"]["persistence_grid"]
    ),
    "image_univariate": lambda p: PersistenceImage(
        sigma=p["image"]["sigma"], univariate=True, persistence_grid=p["image"]["persistence_grid"]
    ),
    "betti": lambda p: BettiCurve(grid=p["betti"]["grid"]),
}


def diagrams_of(reference: dict[str, Any]) -> tuple[list[str], list[np.ndarray]]:
    names = list(reference["diagrams"])
    return names, [np.asarray(reference["diagrams"][name], dtype=np.float64).reshape(-1, 2) for name in names]


@pytest.mark.parametrize("key", list(FACTORIES))
def test_matches_tdavec_on_every_reference_diagram(tdavec_reference: dict[str, Any], key: str) -> None:
    # Fitted on all reference diagrams, as the fixture's learned-convention grids (block edges, FDA maxD) were.
    names, diagrams = diagrams_of(tdavec_reference)
    transformer = FACTORIES[key](tdavec_reference["params"]).fit(diagrams)
    ours = transformer.transform(diagrams)
    for row, name in enumerate(names):
        expected = np.asarray(tdavec_reference["outputs"][name][key])
        np.testing.assert_allclose(ours[row], expected, rtol=RTOL, atol=ATOL, err_msg=f"{key} of diagram {name!r}")


def test_entropy_matches_tdavec_stats_entropy(tdavec_reference: dict[str, Any]) -> None:
    names, diagrams = diagrams_of(tdavec_reference)
    ours = PersistenceEntropy().fit(diagrams).transform(diagrams)[:, 0]
    expected = [tdavec_reference["outputs"][name]["stats"][37] for name in names]
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL)


def test_learned_block_edges_are_tdavecs_quantile_edges(tdavec_reference: dict[str, Any]) -> None:
    _, diagrams = diagrams_of(tdavec_reference)
    params = tdavec_reference["params"]["block"]
    block = PersistenceBlock(tau=params["tau"], n_grid=params["n_grid"]).fit(diagrams)
    assert block.birth_grid_ is not None
    np.testing.assert_array_equal(block.birth_grid_, params["birth_grid"])
    np.testing.assert_array_equal(block.persistence_grid_, params["persistence_grid"])


def test_learned_fda_scale_is_the_largest_death(tdavec_reference: dict[str, Any]) -> None:
    _, diagrams = diagrams_of(tdavec_reference)
    fda = FunctionalDataAnalysis(K=10).fit(diagrams)
    assert fda.max_death_ == tdavec_reference["params"]["fda"]["max_death"]


def test_reference_covers_empty_single_and_tied_diagrams(tdavec_reference: dict[str, Any]) -> None:
    diagrams = tdavec_reference["diagrams"]
    assert diagrams["empty"] == []
    assert len(diagrams["single"]) == 1
    assert diagrams["ties"][0] == diagrams["ties"][1]
