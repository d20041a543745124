"""Vectorisers: hand-computed values, empty diagrams, grids learned once and reused, names, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from conveyor.features.vectorizers import (
    STATS_NAMES,
    BettiCurve,
    FunctionalDataAnalysis,
    PersistenceBlock,
    PersistenceEntropy,
    PersistenceImage,
    PersistenceLandscape,
    SummaryStatistics,
    _DiagramVectorizer,
    check_diagrams,
)

ALL_VECTORIZERS: list[_DiagramVectorizer] = [
    PersistenceLandscape(),
    PersistenceBlock(),
    PersistenceBlock(univariate=True),
    FunctionalDataAnalysis(),
    SummaryStatistics(),
    PersistenceImage(),
    PersistenceImage(univariate=True),
    BettiCurve(),
    PersistenceEntropy(),
]
EMPTY = np.empty((0, 2))


def phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def vectorize(transformer: _DiagramVectorizer, diagram: list[list[float]] | np.ndarray) -> np.ndarray:
    row: np.ndarray = transformer.fit([diagram]).transform([diagram])[0]
    return row


# ---------------------------------------------------------------------------------------------- landscape


def test_landscape_of_one_bar_is_a_tent() -> None:
    landscape = PersistenceLandscape(k=2, grid=[0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(vectorize(landscape, [[0.0, 1.0]]), [0, 0.25, 0.5, 0.25, 0, 0, 0, 0, 0, 0])


def test_landscape_second_level_is_the_second_highest_tent() -> None:
    # (0, 1) peaks at 0.5 with 0.5; (0.25, 0.75) gives 0.25 there; at t=0.25 and 0.75 the inner bar is 0.
    landscape = PersistenceLandscape(k=2, grid=[0.25, 0.5, 0.75])
    np.testing.assert_allclose(vectorize(landscape, [[0.0, 1.0], [0.25, 0.75]]), [0.25, 0.5, 0.25, 0.0, 0.25, 0.0])


def test_landscape_ignores_bars_between_grid_points_exactly(data) -> None:
    # Pruning bars with no grid point inside must not change any value: compare with the plain definition.
    rng = np.random.default_rng(11)
    diagram = data.random_diagram(rng, 300)
    grid = np.linspace(0.0, 1.0, 15)
    heights = np.maximum(np.minimum(grid[:, None] - diagram[:, 0], diagram[:, 1] - grid[:, None]), 0.0)
    expected = -np.sort(-heights, axis=1)[:, :4].T.ravel()
    np.testing.assert_array_equal(vectorize(PersistenceLandscape(k=4, grid=grid), diagram), expected)


def test_landscape_names_are_level_major() -> None:
    names = PersistenceLandscape(k=2, grid=[0.0, 0.5, 1.0]).fit([]).get_feature_names_out()
    assert names.tolist() == [
        "landscape_k1_t000", "landscape_k1_t001", "landscape_k1_t002",
        "landscape_k2_t000", "landscape_k2_t001", "landscape_k2_t002",
    ]  # fmt: skip


# -------------------------------------------------------------------------------------------------- block


def test_block_of_one_bar_inside_one_cell() -> None:
    # Bar (0.2, 0.6): b = 0.2, p = 0.4, half-side 0.3 * 0.4 = 0.12 -> square [0.08, 0.32] x [0.28, 0.52], inside
    # the one cell [0, 1] x [0, 1]; integral of (x + y) = area * (centre x + centre y) = 0.0576 * 0.6.
    block = PersistenceBlock(tau=0.3, birth_grid=[0.0, 1.0], persistence_grid=[0.0, 1.0])
    np.testing.assert_allclose(vectorize(block, [[0.2, 0.6]]), [0.0576 * 0.6], rtol=1e-12)


def test_univariate_block_of_one_bar() -> None:
    # p = 0.4, half-width 0.12 -> [0.28, 0.52] in cell [0, 0.5] gives (0.5^2 - 0.28^2) / 2 / 0.5, and in
    # [0.5, 1] gives (0.52^2 - 0.5^2) / 2 / 0.5.
    block = PersistenceBlock(tau=0.3, univariate=True, persistence_grid=[0.0, 0.5, 1.0])
    expected = [(0.25 - 0.0784) / 2 / 0.5, (0.2704 - 0.25) / 2 / 0.5]
    np.testing.assert_allclose(vectorize(block, [[0.2, 0.6]]), expected, rtol=1e-12)


def test_block_names_are_birth_major() -> None:
    block = PersistenceBlock(birth_grid=[0, 1, 2], persistence_grid=[0, 1, 2]).fit([])
    assert block.get_feature_names_out().tolist() == [
        "block_b00_p00",
        "block_b00_p01",
        "block_b01_p00",
        "block_b01_p01",
    ]


def test_block_learned_edges_drop_duplicate_quantiles() -> None:
    # 10 bars: quantile levels 0, .2, .4, .6, .8, 1 sit at sorted positions 0, 1.8, 3.6, 5.4, 7.2, 9; the first four
    # fall among the eight equal bars and collapse to one edge.
    diagrams = [np.array([[0.1, 0.2]] * 8 + [[0.3, 0.5], [0.5, 0.9]])]
    block = PersistenceBlock(n_grid=6).fit(diagrams)
    np.testing.assert_allclose(block.birth_grid_, [0.1, 0.14, 0.5], rtol=1e-12)
    np.testing.assert_allclose(block.persistence_grid_, [0.1, 0.12, 0.4], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- FDA


def test_fda_of_a_quarter_bar() -> None:
    # b = 0, d = 0.25, m = 1: -sqrt2/2pi (cos(pi/2) - 1) = sqrt2/2pi and sqrt2/2pi (sin(pi/2) - 0) = sqrt2/2pi.
    fda = FunctionalDataAnalysis(K=1, max_death=1.0)
    c = math.sqrt(2.0) / (2.0 * math.pi)
    np.testing.assert_allclose(vectorize(fda, [[0.0, 0.25]]), [0.25, c, c], rtol=1e-12, atol=1e-15)


def test_fda_scales_by_max_death() -> None:
    scaled = vectorize(FunctionalDataAnalysis(K=3, max_death=2.0), [[0.0, 0.5]])
    plain = vectorize(FunctionalDataAnalysis(K=3, max_death=1.0), [[0.0, 0.25]])
    np.testing.assert_allclose(scaled, plain, rtol=1e-12, atol=1e-15)


def test_fda_on_many_bars_matches_the_direct_formula(data) -> None:
    # Above 64 bars the coefficients come from running complex powers; check them against sin/cos directly.
    diagram = data.random_diagram(np.random.default_rng(12), 500)
    b, d = diagram[:, 0] / 0.9, diagram[:, 1] / 0.9
    c = 2.0 * np.pi * np.arange(1, 11)[:, None]
    expected = np.empty(21)
    expected[0] = np.sum(d - b)
    expected[1::2] = -np.sqrt(2.0) / c[:, 0] * np.sum(np.cos(c * d) - np.cos(c * b), axis=1)
    expected[2::2] = np.sqrt(2.0) / c[:, 0] * np.sum(np.sin(c * d) - np.sin(c * b), axis=1)
    np.testing.assert_allclose(vectorize(FunctionalDataAnalysis(K=10, max_death=0.9), diagram), expected, atol=1e-12)


def test_fda_names() -> None:
    names = FunctionalDataAnalysis(K=2).fit([]).get_feature_names_out().tolist()
    assert names == ["fda_const", "fda_sin01", "fda_cos01", "fda_sin02", "fda_cos02"]


# ------------------------------------------------------------------------------------------------ stats


def test_stats_of_two_bars() -> None:
    row = vectorize(SummaryStatistics(), [[0.0, 1.0], [0.5, 0.75]])
    stats = dict(zip(STATS_NAMES, row, strict=True))
    assert stats["mean_births"] == 0.25
    assert stats["stddev_births"] == pytest.approx(math.sqrt(0.125))
    assert stats["median_deaths"] == 0.875
    assert stats["range_lifespans"] == 0.75
    assert stats["p10_midpoints"] == pytest.approx(0.5 + 0.1 * 0.125)
    assert stats["total_bars"] == 2
    assert stats["entropy"] == pytest.approx(-(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2)))


def test_stats_order_is_tdavecs() -> None:
    assert len(STATS_NAMES) == 38
    assert STATS_NAMES[:3] == ("mean_births", "stddev_births", "median_births")
    assert STATS_NAMES[9] == "mean_deaths"
    assert STATS_NAMES[-2:] == ("total_bars", "entropy")


def test_stats_zero_length_bar_adds_no_entropy_instead_of_nan() -> None:
    row = vectorize(SummaryStatistics(), [[0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    assert row[37] == 1.0
    assert np.isfinite(row).all()


# ------------------------------------------------------------------------------------------ persistence image


def test_image_with_tiny_sigma_puts_each_bar_in_its_pixel() -> None:
    # (0.25, 0.6): b 0.25, p 0.35 -> pixel (p0, b0), weight 0.35; (0.75, 1.0): b 0.75, p 0.25 -> (p0, b1), 0.25.
    image = PersistenceImage(sigma=1e-9, birth_grid=[0.0, 0.5, 1.0], persistence_grid=[0.0, 0.5, 1.0])
    np.testing.assert_allclose(vectorize(image, [[0.25, 0.6], [0.75, 1.0]]), [0.35, 0.25, 0.0, 0.0], atol=1e-15)


def test_image_pixel_is_the_gaussian_mass_times_weight() -> None:
    image = PersistenceImage(sigma=0.2, birth_grid=[0.0, 0.5], persistence_grid=[0.0, 0.4, 0.8])
    b, p = 0.3, 0.5  # weight p / 0.8
    mass_b = phi((0.5 - b) / 0.2) - phi((0.0 - b) / 0.2)
    expected = [
        (phi((0.4 - p) / 0.2) - phi((0.0 - p) / 0.2)) * mass_b * p / 0.8,
        (phi((0.8 - p) / 0.2) - phi((0.4 - p) / 0.2)) * mass_b * p / 0.8,
    ]
    np.testing.assert_allclose(vectorize(image, [[b, b + p]]), expected, rtol=1e-12)


def test_image_weight_is_capped_at_one() -> None:
    image = PersistenceImage(sigma=1e-9, univariate=True, persistence_grid=[0.0, 0.5])
    np.testing.assert_allclose(vectorize(image, [[0.0, 0.49], [0.0, 0.9]]), [0.98 + 0.0], atol=1e-15)


def test_image_names_are_persistence_major() -> None:
    names = PersistenceImage(birth_grid=[0, 1, 2], persistence_grid=[0, 1, 2]).fit([]).get_feature_names_out()
    assert names.tolist() == ["image_p00_b00", "image_p00_b01", "image_p01_b00", "image_p01_b01"]


# ------------------------------------------------------------------------------------------------ Betti curve


def test_betti_curve_is_the_mean_count_per_interval() -> None:
    # (0.1, 0.3) spans intervals 0-1; (0.2, 0.8) spans 0-3; (0.55, 0.6) lies inside interval 2.
    betti = BettiCurve(grid=[0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(
        vectorize(betti, [[0.1, 0.3], [0.2, 0.8], [0.55, 0.6]]), [0.8, 1.2, 1.2, 0.2], rtol=1e-12
    )


def test_betti_curve_bars_outside_the_grid_count_nothing() -> None:
    betti = BettiCurve(grid=[0.25, 0.5, 0.75])
    assert vectorize(betti, [[0.0, 0.2], [0.8, 0.9], [0.75, 0.75]]).tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------------------------------- entropy


@pytest.mark.parametrize(
    ("diagram", "bits"),
    [
        ([[0.0, 1.0], [0.0, 1.0]], 1.0),
        ([[0.0, 0.25], [0.5, 0.75], [0.0, 0.5]], 1.5),
        ([[0.3, 0.3]], 0.0),
        ([[0.0, 1.0], [0.5, 0.5]], 0.0),
        (EMPTY, 0.0),
    ],
)
def test_entropy_in_bits(diagram: list[list[float]], bits: float) -> None:
    assert vectorize(PersistenceEntropy(), diagram).tolist() == [bits]


# ------------------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("transformer", ALL_VECTORIZERS, ids=repr)
def test_empty_diagram_gives_zeros(transformer: _DiagramVectorizer) -> None:
    row = transformer.fit([np.array([[0.1, 0.5]]), EMPTY]).transform([EMPTY])
    assert row.shape == (1, transformer.get_feature_names_out().shape[0])
    assert not row.any()


@pytest.mark.parametrize("transformer", ALL_VECTORIZERS, ids=repr)
def test_fitting_on_only_empty_diagrams_still_gives_finite_features(transformer: _DiagramVectorizer) -> None:
    out = transformer.fit([EMPTY, EMPTY]).transform([EMPTY, np.array([[0.2, 0.4]])])
    assert np.isfinite(out).all()


def test_landscape_grid_learned_in_fit_is_reused_for_new_diagrams() -> None:
    landscape = PersistenceLandscape(k=1, n_grid=5).fit([np.array([[0.0, 0.5]]), np.array([[0.1, 0.3]])])
    grid = landscape.grid_.copy()
    np.testing.assert_array_equal(grid, [0.0, 0.125, 0.25, 0.375, 0.5])
    # A bar beyond the training range is sampled on the old grid (so it is 0 everywhere) and the grid stays.
    assert landscape.transform([np.array([[0.6, 0.9]])]).tolist() == [[0.0] * 5]
    assert landscape.transform([np.array([[0.0, 1.0]])]).tolist() == [[0.0, 0.125, 0.25, 0.375, 0.5]]
    np.testing.assert_array_equal(landscape.grid_, grid)


@pytest.mark.parametrize(
    ("transformer", "attributes"),
    [
        (PersistenceBlock(), ["birth_grid_", "persistence_grid_"]),
        (PersistenceImage(), ["birth_grid_", "persistence_grid_"]),
        (BettiCurve(), ["grid_"]),
        (FunctionalDataAnalysis(), ["max_death_"]),
    ],
    ids=repr,
)
def test_learned_state_does_not_change_at_transform(transformer: _DiagramVectorizer, attributes: list[str]) -> None:
    transformer.fit([np.array([[0.1, 0.2], [0.15, 0.4], [0.3, 0.35]])])
    before = {name: np.copy(getattr(transformer, name)) for name in attributes}
    transformer.transform([np.array([[0.0, 1.0], [0.9, 0.95]])])
    for name in attributes:
        np.testing.assert_array_equal(getattr(transformer, name), before[name])


def test_explicit_grid_parameter_is_not_modified_by_fit() -> None:
    grid = [0.0, 0.5, 1.0]
    landscape = PersistenceLandscape(grid=grid).fit([np.array([[0.0, 2.0]])])
    assert landscape.get_params()["grid"] is grid
    assert grid == [0.0, 0.5, 1.0]


def test_accepts_an_n_by_bars_by_2_array() -> None:
    diagrams = np.array([[[0.0, 1.0], [0.25, 0.5]], [[0.1, 0.2], [0.3, 0.9]]])
    stats = SummaryStatistics().fit(diagrams)
    np.testing.assert_array_equal(stats.transform(diagrams), stats.transform(list(diagrams)))


def test_transform_before_fit_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        PersistenceLandscape().transform([EMPTY])


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("X", "message"),
    [
        ([np.zeros((3, 3))], r"diagram 0: expected an \(n, 2\) array of \(birth, death\) pairs, got shape \(3, 3\)"),
        (np.array([[0.0, 1.0], [0.2, 0.3]]), r"got an array of shape \(2, 2\)"),
        ([np.array([[0.0, 1.0]]), np.array([[0.0, np.inf]])], r"diagram 1: has NaN or infinite values"),
        ([np.array([[np.nan, 1.0]])], r"diagram 0: has NaN or infinite values"),
        ([np.array([[0.5, 0.2]])], r"diagram 0: has a death below its birth"),
        ([np.array([["a", "b"]])], r"diagram 0: expected real \(birth, death\) values"),
        (5, r"X: expected a sequence of \(n, 2\) diagrams, got int"),
        ("diagram", r"X: expected a sequence of \(n, 2\) diagrams, got str"),
    ],
)
def test_bad_diagrams_raise_value_error(X: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_diagrams(X)


def test_transform_validates_like_fit() -> None:
    landscape = PersistenceLandscape().fit([EMPTY])
    with pytest.raises(ValueError, match=r"diagram 0: has a death below its birth"):
        landscape.transform([np.array([[0.5, 0.2]])])


@pytest.mark.parametrize(
    ("transformer", "message"),
    [
        (PersistenceLandscape(k=0), r"k: expected an integer >= 1, got 0"),
        (PersistenceLandscape(n_grid=0), r"n_grid: expected an integer >= 1, got 0"),
        (PersistenceLandscape(grid=[0.0, 0.5, 0.5]), r"grid: expected finite, strictly increasing values"),
        (PersistenceBlock(tau=0.0), r"tau: expected a value in \(0, 1.0\], got 0.0"),
        (PersistenceBlock(tau=1.5), r"tau: expected a value in \(0, 1.0\], got 1.5"),
        (PersistenceBlock(n_grid=1), r"n_grid: expected an integer >= 2, got 1"),
        (PersistenceBlock(birth_grid=[0.5]), r"birth_grid: expected a 1-D sequence of at least 2 values"),
        (FunctionalDataAnalysis(K=0), r"K: expected an integer >= 1, got 0"),
        (FunctionalDataAnalysis(max_death=-1.0), r"max_death: expected a value in \(0, inf\], got -1.0"),
        (PersistenceImage(sigma=0), r"sigma: expected a value in \(0, inf\], got 0"),
        (PersistenceImage(persistence_grid=[-1.0, 0.0]), r"persistence_grid: the last edge must be > 0"),
        (BettiCurve(n_grid=True), r"n_grid: expected an integer >= 2, got True"),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_bad_parameters_raise_value_error_in_fit(transformer: _DiagramVectorizer, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        transformer.fit([np.array([[0.1, 0.4]])])
