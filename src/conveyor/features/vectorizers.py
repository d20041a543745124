"""Vectorisations of persistence diagrams as scikit-learn transformers.

Every transformer here takes ``X``: a sequence (list, tuple, or (N, n, 2) array) of diagrams of ONE homology
dimension, each a float (n, 2) array of finite (birth, death) pairs with birth <= death (n = 0 allowed), and returns a
float64 array (N, n_features). Grids and scales are learned in ``fit`` from the training diagrams unless given
explicitly, and ``transform`` reuses them unchanged.

The definitions follow TDAvec (``tdavec`` 0.1.5, Chan, Islambekov, Luchinsky & Sanders, JMLR 23, 2022), value for value:
``computePersistenceLandscape``, ``computePersistenceBlock``, ``computeFDA``, ``computeStats``,
``computePersistenceImage``, ``computeBettiCurve``; the tests compare against values tdavec computed. Where they
differ, on purpose:

* tdavec gives NaN for the entropy when a bar has zero length (0 * log 0); these give 0 for that bar.
* tdavec's Python ``computePersistenceBlock`` / ``computePersistenceImage`` always use the 1-D (persistence only)
  form for homDim 0, because Rips H0 births are all 0 (TDAvec's R docs use it only when every birth is equal).
  Cubical H0 births vary, so the 2-D form is the default here for every dimension; ``univariate=True`` gives tdavec's
  1-D form.
* Learned grids: tdavec's ``TDAvectorizer`` spans its default scale over H1 births only; here a landscape or Betti
  grid spans min birth .. max death of the training diagrams. Block edges are the quantiles of TDAvec's vignette.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

# Transforms are batched: the bars of many diagrams in one array with offsets, numpy over all of them at once. On noisy
# images (thousands of bars a diagram) the per-bar arithmetic dominates, so the batched paths also cut it where it can
# be cut exactly: landscape heights only where a grid point lies inside a bar, and functions of a bar's birth, death or
# persistence alone once per distinct value (an image's diagram has ~7x fewer distinct values than bars).
# Products over bars use einsum, not `@`: BLAS may go multi-threaded, and its spinning threads make small products
# ~100x slower when the CPU is shared; results also stop depending on which BLAS build is installed.

__all__ = [
    "STATS_NAMES",
    "BettiCurve",
    "FunctionalDataAnalysis",
    "PersistenceBlock",
    "PersistenceEntropy",
    "PersistenceImage",
    "PersistenceLandscape",
    "SummaryStatistics",
    "check_diagram",
    "check_diagrams",
]

_SQRT2 = float(np.sqrt(2.0))
_STAT_KEYS = ("births", "deaths", "midpoints", "lifespans")
_STAT_FUNCS = ("mean", "stddev", "median", "iqr", "range", "p10", "p25", "p75", "p90")
STATS_NAMES: tuple[str, ...] = (
    *(f"{func}_{key}" for key in _STAT_KEYS for func in _STAT_FUNCS),
    "total_bars",
    "entropy",
)
"""The 38 summary statistics, in tdavec ``computeStats`` order."""
_FDA_DIRECT_MAX_BARS = 64  # above this, FDA uses running complex powers instead of sin/cos per frequency
_FDA_SAMPLE = 512  # bar ends sampled to decide whether the batched FDA sums over distinct values
_FDA_DISTINCT_SHARE = 0.5  # ... which it does when fewer than this share of the sampled ends are distinct
_QUANTILE_PROBS = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])


# ---------------------------------------------------------------------------------------------------------- input


def check_diagram(diagram: object, index: int | None = None) -> np.ndarray:
    """One diagram as a float64 (n, 2) array, or ValueError saying what is wrong.

    Args:
        diagram: array-like of (birth, death) pairs; an empty array of any shape means no bars.
        index: position in the batch, for the message.

    Returns:
        The diagram as float64 (n, 2); not copied when it already is one.
    """
    # Called for every diagram of every transform, so the happy path is kept to a few numpy calls.
    array = diagram if isinstance(diagram, np.ndarray) else np.asarray(diagram, dtype=np.float64)
    if array.dtype != np.float64:
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{_where(index)}: expected real (birth, death) values, got dtype {array.dtype}")
        array = array.astype(np.float64)
    if array.size == 0:
        return np.empty((0, 2), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(
            f"{_where(index)}: expected an (n, 2) array of (birth, death) pairs, got shape {array.shape}; "
            "X must be a sequence of diagrams, one per sample"
        )
    # A NaN or inf anywhere makes the sum non-finite; only then look closer (huge finite values may overflow it).
    if not np.isfinite(array.sum()) and not np.isfinite(array).all():
        raise ValueError(f"{_where(index)}: has NaN or infinite values; cap infinite deaths before vectorising")
    if not (array[:, 0] <= array[:, 1]).all():
        raise ValueError(f"{_where(index)}: has a death below its birth; expected birth <= death in every row")
    return array


def _where(index: int | None) -> str:
    return "diagram" if index is None else f"diagram {index}"


def check_diagrams(X: object) -> list[np.ndarray]:
    """A batch of diagrams as a list of float64 (n, 2) arrays, or ValueError.

    Args:
        X: a list or tuple of diagrams, or an (N, n, 2) array.
    """
    if isinstance(X, np.ndarray):
        if X.ndim != 3:
            raise ValueError(
                f"X: expected a sequence of (n, 2) diagrams or an (N, n, 2) array, got an array of shape {X.shape}"
            )
    elif not isinstance(X, Sequence) or isinstance(X, (str, bytes)):
        raise ValueError(f"X: expected a sequence of (n, 2) diagrams, got {type(X).__name__}")
    return [check_diagram(diagram, index) for index, diagram in enumerate(X)]


def _check_grid(grid: object, name: str, min_points: int) -> np.ndarray:
    array = np.array(grid, dtype=np.float64)
    if array.ndim != 1 or array.shape[0] < min_points:
        raise ValueError(f"{name}: expected a 1-D sequence of at least {min_points} values, got shape {array.shape}")
    if not np.isfinite(array).all() or not (np.diff(array) > 0).all():
        raise ValueError(f"{name}: expected finite, strictly increasing values, got {array.tolist()}")
    return array


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value: object, name: str, upper: float = np.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not 0.0 < float(value) <= upper:
        raise ValueError(f"{name}: expected a value in (0, {upper}], got {value!r}")
    return float(value)


def _pooled(diagrams: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(diagrams) if diagrams else np.empty((0, 2))


def _span_grid(low: float, high: float, n_points: int) -> np.ndarray:
    """``n_points`` evenly spaced values on [low, high]; a degenerate span is widened to [low, low + 1]."""
    if not high > low:
        high = low + 1.0
    return np.linspace(low, high, n_points)


def _quantile_edges(values: np.ndarray, n_points: int) -> np.ndarray:
    """TDAvec's block grid: ``unique(quantile(values, seq(0, 1, length = n_points)))`` (R type 7 = numpy linear).

    Fewer than two distinct edges (no bars, or one value) give [v, v + 1] so every grid has a cell.
    """
    if values.size == 0:
        return np.array([0.0, 1.0])
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_points)))
    if edges.shape[0] < 2:
        return np.array([edges[0], edges[0] + 1.0])
    return edges


def _overlaps(
    lower: np.ndarray, upper: np.ndarray, centres: np.ndarray, half_widths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Length and (low + high) of [c - h, c + h] intersected with each cell [lower, upper]; shapes (cells, points).

    The length is clipped at 0 where the two do not meet, which zeroes every product it enters.
    """
    low = np.maximum(lower[:, None], centres - half_widths)
    high = np.minimum(upper[:, None], centres + half_widths)
    return np.maximum(high - low, 0.0), high + low


class _Packed:
    """A batch of validated diagrams laid end to end: the shape every batched transform works on.

    ``births``, ``deaths`` (N,) contiguous float64; ``counts`` (D,) bars per diagram; ``offsets`` (D + 1,) int,
    diagram i is rows ``offsets[i]:offsets[i + 1]``; ``segment`` (N,) the diagram of each row.
    """

    __slots__ = ("births", "counts", "deaths", "n_diagrams", "offsets", "segment")

    def __init__(self, diagrams: list[np.ndarray]) -> None:
        self.n_diagrams = len(diagrams)
        self.counts = np.fromiter((d.shape[0] for d in diagrams), dtype=np.intp, count=self.n_diagrams)
        self.offsets = np.zeros(self.n_diagrams + 1, dtype=np.intp)
        np.cumsum(self.counts, out=self.offsets[1:])
        pooled = _pooled(diagrams)
        self.births = np.ascontiguousarray(pooled[:, 0])
        self.deaths = np.ascontiguousarray(pooled[:, 1])
        self.segment = np.repeat(np.arange(self.n_diagrams, dtype=np.intp), self.counts)


def _batches(diagrams: list[np.ndarray], batch_bars: int) -> list[tuple[int, int]]:
    """Consecutive runs of diagrams with about ``batch_bars`` bars in all (at least one diagram each).

    Batching removes the Python steps per diagram (the cost when diagrams are small), but one batch of a whole chunk
    of noisy images (~10^5 bars) makes every (grid x bars) temporary large: it leaves the CPU caches, and glibc hands
    such blocks back to the kernel when freed, so each batch page-faults them in again (measured: more system time
    than the work). Runs of a few thousand bars keep both costs small.
    """
    bounds = [0]
    total = 0
    for index, diagram in enumerate(diagrams):
        total += diagram.shape[0]
        if total >= batch_bars:
            bounds.append(index + 1)
            total = 0
    if bounds[-1] != len(diagrams):
        bounds.append(len(diagrams))
    return list(itertools.pairwise(bounds))


def _segment_sums(values: np.ndarray, offsets: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sums of ``values`` over the row groups ``offsets`` along ``axis`` (0 for an empty group).

    ``np.add.reduceat`` on the non-empty groups only: it returns an element, not 0, for an empty one.
    """
    n_groups = offsets.shape[0] - 1
    shape = list(values.shape)
    shape[axis] = n_groups
    out = np.zeros(shape, dtype=values.dtype)
    nonempty = offsets[1:] > offsets[:-1]
    if nonempty.any():
        index = [slice(None)] * values.ndim
        index[axis] = nonempty  # type: ignore[call-overload]
        out[tuple(index)] = np.add.reduceat(values, offsets[:-1][nonempty], axis=axis)
    return out


# ------------------------------------------------------------------------------------------------------- base class


class _DiagramVectorizer(TransformerMixin, BaseEstimator):
    """Shared fit/transform plumbing: validation, batching, feature names, tags.

    ``transform`` lays runs of diagrams end to end (:class:`_Packed`) and each vectoriser computes all of a run at
    once (``_transform_batch``); ``_vectorize``, one diagram at a time, is the reference it is tested against.
    """

    prefix: ClassVar[str] = ""
    batched: ClassVar[bool] = True
    """False: transform diagram by diagram (the reference path), to time or check the batched one against it."""
    batch_bars: ClassVar[int] = 8192
    """Bars per batch (see :func:`_batches`); a diagram with more is a batch of its own."""

    def fit(self, X: Sequence[np.ndarray] | np.ndarray, y: object = None) -> _DiagramVectorizer:
        """Learn grids and scales from the training diagrams.

        Parameters
        ----------
        X : sequence of array-like of shape (n_bars, 2)
            Training diagrams of one homology dimension.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        self._fit(check_diagrams(X))
        self.feature_names_out_ = np.asarray([f"{self.prefix}_{name}" for name in self._names()], dtype=object)
        return self

    def transform(self, X: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Vectorise each diagram with the grids learned in ``fit``.

        Parameters
        ----------
        X : sequence of array-like of shape (n_bars, 2)
            Diagrams of the homology dimension the transformer was fitted on.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out)
            One float64 row per diagram.
        """
        check_is_fitted(self)
        return self._transform_valid(check_diagrams(X))

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """Column names, e.g. ``landscape_k1_t000``; stable for a given fitted grid size.

        Parameters
        ----------
        input_features : None
            Ignored; inputs are diagrams, not named columns.

        Returns
        -------
        names : ndarray of str objects, shape (n_features_out,)
        """
        check_is_fitted(self)
        return self.feature_names_out_.copy()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # X is a list of variable-length diagrams, not a 2-D array: scikit-learn's data-driven common checks do not
        # apply (they skip such estimators); tests/features/test_sklearn_contract.py checks the same contract on
        # diagrams.
        tags.input_tags.two_d_array = False
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags

    # --- implemented by each vectoriser; ``diagrams`` are already validated

    def _fit(self, diagrams: list[np.ndarray]) -> None:
        """Set the learned attributes (grids, scales)."""

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        """Every diagram of the batch at once, (D, n_features): the values of ``_vectorize`` row by row, up to the
        order of floating-point sums."""
        raise NotImplementedError

    def _transform_valid(self, diagrams: list[np.ndarray]) -> np.ndarray:
        if not _DiagramVectorizer.batched:
            return self._transform_per_diagram(diagrams)
        out = np.empty((len(diagrams), self.feature_names_out_.shape[0]), dtype=np.float64)
        for start, stop in _batches(diagrams, self.batch_bars):
            out[start:stop] = self._transform_batch(_Packed(diagrams[start:stop])).reshape(stop - start, -1)
        return out

    def _transform_per_diagram(self, diagrams: list[np.ndarray]) -> np.ndarray:
        """The reference path: one ``_vectorize`` call per diagram (tests and benchmarks/features.py compare)."""
        out = np.empty((len(diagrams), self.feature_names_out_.shape[0]), dtype=np.float64)
        for row, diagram in enumerate(diagrams):
            out[row] = self._vectorize(diagram)
        return out


# ---------------------------------------------------------------------------------------------------- vectorisers


class PersistenceLandscape(_DiagramVectorizer):
    """Persistence landscapes lambda_1..lambda_k sampled on a grid (tdavec ``computePersistenceLandscape``).

    lambda_j(t) is the j-th largest of ``max(0, min(t - b_i, d_i - t))`` over the bars, 0 when there are fewer than j
    bars.

    Parameters
    ----------
    k : int, default=3
        Number of landscape levels (1..k).
    n_grid : int, default=20
        Number of grid points when the grid is learned.
    grid : array-like of shape (n_points,), default=None
        Explicit increasing grid of scale values; None learns ``linspace(min birth, max death, n_grid)`` over the
        training diagrams ([0, 1] when they have no bars).

    Attributes
    ----------
    grid_ : ndarray of shape (n_points,)
        Scale values the landscapes are sampled at.
    feature_names_out_ : ndarray of str
        ``landscape_k{level}_t{index:03d}``, level-major.
    """

    prefix = "landscape"

    def __init__(self, k: int = 3, n_grid: int = 20, grid: ArrayLike | None = None) -> None:
        self.k = k
        self.n_grid = n_grid
        self.grid = grid

    def _fit(self, diagrams: list[np.ndarray]) -> None:
        _check_int(self.k, "k", 1)
        if self.grid is not None:
            self.grid_ = _check_grid(self.grid, "grid", 1)
            return
        n_grid = _check_int(self.n_grid, "n_grid", 1)
        pooled = _pooled(diagrams)
        if pooled.shape[0] == 0:
            self.grid_ = np.linspace(0.0, 1.0, n_grid)
        else:
            self.grid_ = _span_grid(float(pooled[:, 0].min()), float(pooled[:, 1].max()), n_grid)

    def _names(self) -> list[str]:
        return [f"k{level}_t{i:03d}" for level in range(1, self.k + 1) for i in range(self.grid_.shape[0])]

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        k, grid = self.k, self.grid_
        out = np.zeros((k, grid.shape[0]))
        # Only bars with a grid point strictly inside (b, d) are nonzero anywhere on the grid; on noisy images that
        # is a small share of the bars, and dropping the rest changes no value.
        inside = np.searchsorted(grid, diagram[:, 0], side="right") < np.searchsorted(grid, diagram[:, 1], side="left")
        bars = diagram[inside]
        n = bars.shape[0]
        if n == 0:
            return out.ravel()
        t = grid[:, None]
        heights = np.minimum(t - bars[:, 0], bars[:, 1] - t)
        np.maximum(heights, 0.0, out=heights)
        levels = min(k, n)
        if levels == 1:
            out[0] = heights.max(axis=1)
        else:
            # Partitioning the negated heights puts the `levels` largest, in decreasing order, first.
            top = np.partition(-heights, np.arange(levels), axis=1)[:, :levels]
            out[:levels] = -top.T
        return out.ravel()

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        k, grid = self.k, self.grid_
        births, deaths = packed.births, packed.deaths
        out = np.zeros((packed.n_diagrams, k, grid.shape[0]))
        n_grid = grid.shape[0]
        # A bar is nonzero exactly at the grid points strictly inside (b, d): lo .. hi - 1. Noise bars have one or
        # none, so the (bar, grid point) pairs are about as many as the bars, against bars x grid when dense.
        lo = np.searchsorted(grid, births, side="right")
        hi = np.searchsorted(grid, deaths, side="left")
        inside = lo < hi
        if not inside.any():
            return out
        lo, hi = lo[inside], hi[inside]
        counts = hi - lo
        bar = np.repeat(np.flatnonzero(inside), counts)
        first_pair = np.cumsum(counts) - counts
        point = np.arange(bar.shape[0]) - np.repeat(first_pair - lo, counts)
        t = grid[point]
        heights = np.minimum(t - births[bar], deaths[bar] - t)  # > 0: the values _vectorize takes, bit for bit
        key = packed.segment[bar] * n_grid + point
        # by (diagram, grid point), then decreasing height: a float argsort, then a stable sort of the small integer
        # keys (a radix sort for 16-bit ones), ~4x faster than np.lexsort
        order = np.argsort(-heights)
        small = packed.n_diagrams * n_grid <= np.iinfo(np.int16).max
        order = order[np.argsort(key[order].astype(np.int16 if small else np.intp), kind="stable")]
        key, heights = key[order], heights[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        rank = np.arange(key.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, key.shape[0]]))
        top = rank < k  # the k largest of each (diagram, grid point); fewer bars leave zeros, as defined
        flat = out.transpose(0, 2, 1).reshape(-1, k)  # (D * grid, k), a copy
        flat[key[top], rank[top]] = heights[top]
        return flat.reshape(packed.n_diagrams, n_grid, k).transpose(0, 2, 1)


class PersistenceBlock(_DiagramVectorizer):
    """Vector of persistence blocks (tdavec ``computePersistenceBlock``, Chan et al. 2022).

    In birth-persistence coordinates (b, p), each bar spreads a square of half-side ``tau * p`` centred at (b, p); the
    value of a cell [x_i, x_{i+1}] x [y_j, y_{j+1}] is the integral of the block count weighted by (x + y) over the
    cell, divided by its area. ``univariate=True`` integrates over persistence only (weight y), which tdavec uses for
    homDim 0 of Rips diagrams where every birth is 0; cubical births vary, so the 2-D block is the default.

    Parameters
    ----------
    tau : float, default=0.3
        Block size factor in (0, 1].
    n_grid : int, default=6
        Number of quantile levels per axis when grids are learned: ``quantile(values, linspace(0, 1, n_grid))`` of the
        pooled training births and persistences, duplicates removed, as in TDAvec's vignette (6 levels = quintiles).
    univariate : bool, default=False
        Use the 1-D (persistence only) block.
    birth_grid, persistence_grid : array-like, default=None
        Explicit increasing cell edges; None learns them.

    Attributes
    ----------
    birth_grid_ : ndarray or None
        Birth cell edges (None when ``univariate``).
    persistence_grid_ : ndarray
        Persistence cell edges.
    feature_names_out_ : ndarray of str
        ``block_b{i:02d}_p{j:02d}`` (birth-major), or ``block_p{j:02d}`` when univariate.
    """

    prefix = "block"
    batch_bars = 2048  # (cells x bars) temporaries: keep them under ~200 KB

    def __init__(
        self,
        tau: float = 0.3,
        n_grid: int = 6,
        univariate: bool = False,
        birth_grid: ArrayLike | None = None,
        persistence_grid: ArrayLike | None = None,
    ) -> None:
        self.tau = tau
        self.n_grid = n_grid
        self.univariate = univariate
        self.birth_grid = birth_grid
        self.persistence_grid = persistence_grid

    def _fit(self, diagrams: list[np.ndarray]) -> None:
        _check_positive(self.tau, "tau", 1.0)
        pooled = _pooled(diagrams)
        needs_learning = self.persistence_grid is None or (not self.univariate and self.birth_grid is None)
        n_grid = _check_int(self.n_grid, "n_grid", 2) if needs_learning else 0
        if self.persistence_grid is not None:
            self.persistence_grid_ = _check_grid(self.persistence_grid, "persistence_grid", 2)
        else:
            self.persistence_grid_ = _quantile_edges(pooled[:, 1] - pooled[:, 0], n_grid)
        self.birth_grid_: np.ndarray | None = None
        if not self.univariate:
            if self.birth_grid is not None:
                self.birth_grid_ = _check_grid(self.birth_grid, "birth_grid", 2)
            else:
                self.birth_grid_ = _quantile_edges(pooled[:, 0], n_grid)
        # Cell areas (or widths), computed once: transform divides by them for every diagram.
        dy = np.diff(self.persistence_grid_)
        self._cell_sizes = dy if self.birth_grid_ is None else np.diff(self.birth_grid_)[:, None] * dy[None, :]

    def _names(self) -> list[str]:
        n_p = self.persistence_grid_.shape[0] - 1
        if self.birth_grid_ is None:
            return [f"p{j:02d}" for j in range(n_p)]
        return [f"b{i:02d}_p{j:02d}" for i in range(self.birth_grid_.shape[0] - 1) for j in range(n_p)]

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        births = diagram[:, 0]
        persistence = diagram[:, 1] - births
        half = self.tau * persistence
        y = self.persistence_grid_
        wy, sy = _overlaps(y[:-1], y[1:], persistence, half)
        if self.birth_grid_ is None:
            # integral of y dy over the overlap = (high^2 - low^2) / 2 = width * (high + low) / 2
            return 0.5 * (wy * sy).sum(axis=1) / self._cell_sizes
        x = self.birth_grid_
        wx, sx = _overlaps(x[:-1], x[1:], births, half)
        # integral of (x + y) over the overlap rectangle = wx * wy * (sx + sy) / 2, summed over bars
        cells = 0.5 * (np.einsum("in,jn->ij", wx * sx, wy) + np.einsum("in,jn->ij", wx, wy * sy))
        cells /= self._cell_sizes
        return cells.ravel()

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        births = packed.births
        persistence = packed.deaths - births
        half = self.tau * persistence
        y = self.persistence_grid_
        wy, sy = _overlaps(y[:-1], y[1:], persistence, half)  # (cells, N)
        if self.birth_grid_ is None:
            return 0.5 * _segment_sums(wy * sy, packed.offsets, axis=1).T / self._cell_sizes
        x = self.birth_grid_
        wx, sx = _overlaps(x[:-1], x[1:], births, half)
        cells = _segment_outer_sums(wx * sx, wy, packed.offsets)
        cells += _segment_outer_sums(wx, wy * sy, packed.offsets)
        cells *= 0.5
        cells /= self._cell_sizes
        return cells.reshape(packed.n_diagrams, -1)


class FunctionalDataAnalysis(_DiagramVectorizer):
    """Fourier coefficients of the bars' indicator functions (tdavec ``computeFDA``), 2K + 1 values.

    With b, d scaled by ``max_death_``: ``[sum(d - b), a_1, c_1, ..., a_K, c_K]`` where
    ``a_m = -sqrt(2)/(2 pi m) sum(cos(2 pi m d) - cos(2 pi m b))`` (the sine-basis coefficient) and
    ``c_m = sqrt(2)/(2 pi m) sum(sin(2 pi m d) - sin(2 pi m b))`` (the cosine-basis coefficient).

    Parameters
    ----------
    K : int, default=10
        Number of Fourier frequencies.
    max_death : float, default=None
        Scale; None learns the largest death of the training diagrams (tdavec's ``findLimits(...)["maxD"]``), 1.0
        when they have no bar with a positive death.

    Attributes
    ----------
    max_death_ : float
        Scale the births and deaths are divided by.
    feature_names_out_ : ndarray of str
        ``fda_const``, then ``fda_sin{m:02d}``, ``fda_cos{m:02d}`` for m = 1..K.
    """

    prefix = "fda"

    def __init__(self, K: int = 10, max_death: float | None = None) -> None:
        self.K = K
        self.max_death = max_death

    def _fit(self, diagrams: list[np.ndarray]) -> None:
        _check_int(self.K, "K", 1)
        if self.max_death is not None:
            self.max_death_ = _check_positive(self.max_death, "max_death")
            return
        pooled = _pooled(diagrams)
        top = float(pooled[:, 1].max()) if pooled.shape[0] else 0.0
        self.max_death_ = top if top > 0.0 else 1.0

    def _names(self) -> list[str]:
        return ["const", *(f"{basis}{m:02d}" for m in range(1, self.K + 1) for basis in ("sin", "cos"))]

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        K = self.K
        out = np.empty(2 * K + 1)
        b = diagram[:, 0] / self.max_death_
        d = diagram[:, 1] / self.max_death_
        out[0] = np.sum(d - b)
        frequencies = (2.0 * np.pi) * np.arange(1, K + 1, dtype=np.float64)
        if d.shape[0] <= _FDA_DIRECT_MAX_BARS:
            cd, cb = frequencies[:, None] * d, frequencies[:, None] * b
            cos_sums = np.sum(np.cos(cd) - np.cos(cb), axis=1)
            sin_sums = np.sum(np.sin(cd) - np.sin(cb), axis=1)
        else:
            # exp(2 pi i m x) for m = 1..K as running powers of exp(2 pi i x): one complex product per bar and
            # frequency instead of four sin/cos calls (~15x faster on thousands of bars); agrees with the direct
            # formula to ~1e-16 per term.
            step_d, step_b = np.exp((2j * np.pi) * d), np.exp((2j * np.pi) * b)
            power_d, power_b = step_d.copy(), step_b.copy()
            sums = np.empty(K, dtype=np.complex128)
            for m in range(K):
                sums[m] = (power_d - power_b).sum()
                if m + 1 < K:
                    power_d *= step_d
                    power_b *= step_b
            cos_sums, sin_sums = sums.real, sums.imag
        scale = _SQRT2 / frequencies
        out[1::2] = -scale * cos_sums
        out[2::2] = scale * sin_sums
        return out

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        K, offsets = self.K, packed.offsets
        out = np.empty((packed.n_diagrams, 2 * K + 1))
        b = packed.births / self.max_death_
        d = packed.deaths / self.max_death_
        out[:, 0] = _segment_sums(d - b, offsets)
        frequencies = (2.0 * np.pi) * np.arange(1, K + 1, dtype=np.float64)
        # sum over bars of exp(2 pi i m d) - exp(2 pi i m b) = sum over a diagram's distinct values x of
        # (deaths at x - births at x) * exp(2 pi i m x): an image's diagram has ~7x fewer distinct values than bar
        # ends. Running powers of exp(2 pi i x), as _vectorize does for large diagrams (~1e-16 from the direct formula).
        # Small diagrams (smooth images), or ends with few repeats (large real scans), are not worth a np.unique each:
        # every bar end counts once there. A sample of the deaths tells (0.2-0.3 of the sampled ends distinct on the
        # generated JPEGs; 0.35-0.75 on the brain MRI set, where the np.unique calls cost more than they save).
        sample = d[:_FDA_SAMPLE]
        if (
            d.shape[0] < _FDA_DIRECT_MAX_BARS * packed.n_diagrams
            or np.unique(sample).shape[0] > _FDA_DISTINCT_SHARE * sample.shape[0]
        ):
            step = _unit_circle(np.stack([d, b], axis=1).ravel())  # per diagram: d0, b0, d1, b1, ...
            weight = np.tile([1.0, -1.0], d.shape[0])
            grouped = 2 * offsets
        else:
            values, weights, value_offsets = [], [], [0]
            for start, stop in itertools.pairwise(offsets.tolist()):
                for ends, sign in ((d[start:stop], 1.0), (b[start:stop], -1.0)):
                    distinct, counts = np.unique(ends, return_counts=True)
                    values.append(distinct)
                    weights.append(sign * counts)
                value_offsets.append(value_offsets[-1] + values[-1].shape[0] + values[-2].shape[0])
            step = _unit_circle(np.concatenate(values) if values else np.empty(0))
            weight = np.concatenate(weights) if weights else np.empty(0)
            grouped = np.asarray(value_offsets, dtype=np.intp)
        power = step.copy()
        sums = np.empty((packed.n_diagrams, K), dtype=np.complex128)
        for m in range(K):
            sums[:, m] = _segment_sums(power * weight, grouped)
            if m + 1 < K:
                power *= step
        scale = _SQRT2 / frequencies
        out[:, 1::2] = -scale * sums.real
        out[:, 2::2] = scale * sums.imag
        return out


class SummaryStatistics(_DiagramVectorizer):
    """The 38 summary statistics of tdavec ``computeStats``, in its order.

    For births, deaths, midpoints and lifespans: mean, standard deviation (ddof=1), median, IQR, range and the 10th,
    25th, 75th, 90th percentiles (numpy's linear quantiles), each 0 when the diagram has fewer than 2 bars; then the
    number of bars and the persistent entropy ``-sum(l/L log2(l/L))`` (0 when L = 0; zero-length bars add 0, where
    tdavec gives NaN). An empty diagram gives 38 zeros.

    Attributes
    ----------
    feature_names_out_ : ndarray of str
        ``stats_`` + :data:`STATS_NAMES`.
    """

    prefix = "stats"

    def __init__(self) -> None:
        pass

    def _names(self) -> list[str]:
        return list(STATS_NAMES)

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        out = np.zeros(len(STATS_NAMES))
        n = diagram.shape[0]
        if n == 0:
            return out
        births, deaths = diagram[:, 0], diagram[:, 1]
        lifespans = deaths - births
        if n >= 2:
            values = np.stack([births, deaths, (births + deaths) / 2, lifespans])
            q = _sorted_quantiles(np.sort(values, axis=1), _QUANTILE_PROBS).T  # (7, 4): p0, p10, ..., p90, p100
            table = np.stack(
                [
                    values.mean(axis=1),
                    values.std(axis=1, ddof=1),
                    q[3],
                    q[4] - q[2],
                    q[6] - q[0],
                    q[1],
                    q[2],
                    q[4],
                    q[5],
                ],
                axis=1,
            )  # (4 keys, 9 stats)
            out[:36] = table.ravel()
        out[36] = n
        out[37] = _entropy(lifespans)
        return out

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        counts, offsets, segment = packed.counts, packed.offsets, packed.segment
        out = np.zeros((packed.n_diagrams, len(STATS_NAMES)))
        births, deaths = packed.births, packed.deaths
        lifespans = deaths - births
        out[:, 36] = counts
        out[:, 37] = _segment_entropy(lifespans, packed)
        many = counts >= 2
        if not many.any():
            return out
        n = np.maximum(counts, 1).astype(np.float64)[:, None]
        values = np.stack([births, deaths, (births + deaths) / 2, lifespans])  # (4 keys, N)
        # np.mean and np.std(ddof=1), step for step, over each diagram's columns
        mean = _segment_sums(values, offsets, axis=1).T / n  # (D, 4)
        deviation = values - mean[segment].T
        deviation *= deviation
        std = np.sqrt(_segment_sums(deviation, offsets, axis=1).T / np.maximum(n - 1.0, 1.0))
        # Each diagram's (4, n) block sorted in place, then every quantile of the batch read at once: padding the
        # diagrams to one (D * 4, longest) array for a single sort sorted ~25% more values.
        for start, stop in itertools.pairwise(offsets.tolist()):
            values[:, start:stop].sort(axis=1)
        lower, upper, gamma = _quantile_ranks(counts, _QUANTILE_PROBS)  # (D, 7)
        last = offsets[-1] - 1  # an empty diagram's ranks may point past the end: its garbage is masked below
        lower = np.minimum(offsets[:-1, None] + lower, last)
        upper = np.minimum(offsets[:-1, None] + upper, last)
        q = _interpolate(values[:, lower], values[:, upper], gamma)  # (4 keys, D, 7)
        p0, p10, p25, p50, p75, p90, p100 = q.transpose(2, 1, 0)  # each (D, 4 keys)
        table = np.stack([mean, std, p50, p75 - p25, p100 - p0, p10, p25, p75, p90], axis=2)  # (D, 4 keys, 9 stats)
        out[many, :36] = table[many].reshape(-1, 36)
        return out


class PersistenceImage(_DiagramVectorizer):
    """Persistence image (tdavec ``computePersistenceImage``) in birth-persistence coordinates.

    Each bar (b, p) is a Gaussian of standard deviation ``sigma`` weighted by ``min(p / p_max, 1)`` (p_max the last
    persistence edge); a pixel's value is that mass integrated over the pixel (normal CDF differences), summed over
    bars. ``univariate=True`` integrates over persistence only (tdavec's homDim 0 case).

    Parameters
    ----------
    n_grid : int, default=11
        Number of edges per axis when grids are learned (n_grid - 1 pixels per axis).
    sigma : float, default=0.05
        Gaussian standard deviation, in filtration units (preprocessed intensities span [0, 1]).
    univariate : bool, default=False
        Persistence axis only.
    birth_grid, persistence_grid : array-like, default=None
        Explicit increasing pixel edges; None learns ``linspace(min birth, max birth, n_grid)`` and
        ``linspace(0, max persistence, n_grid)`` from the training diagrams.

    Attributes
    ----------
    birth_grid_ : ndarray or None
        Birth pixel edges (None when ``univariate``).
    persistence_grid_ : ndarray
        Persistence pixel edges.
    feature_names_out_ : ndarray of str
        ``image_p{i:02d}_b{j:02d}`` persistence-major as tdavec flattens it, or ``image_p{i:02d}`` when univariate.
    """

    prefix = "image"
    batch_bars = 4096  # (edges x bars) temporaries: keep them under ~400 KB

    def __init__(
        self,
        n_grid: int = 11,
        sigma: float = 0.05,
        univariate: bool = False,
        birth_grid: ArrayLike | None = None,
        persistence_grid: ArrayLike | None = None,
    ) -> None:
        self.n_grid = n_grid
        self.sigma = sigma
        self.univariate = univariate
        self.birth_grid = birth_grid
        self.persistence_grid = persistence_grid

    def _fit(self, diagrams: list[np.ndarray]) -> None:
        _check_positive(self.sigma, "sigma")
        pooled = _pooled(diagrams)
        has_bars = pooled.shape[0] > 0
        needs_learning = self.persistence_grid is None or (not self.univariate and self.birth_grid is None)
        n_grid = _check_int(self.n_grid, "n_grid", 2) if needs_learning else 0
        if self.persistence_grid is not None:
            self.persistence_grid_ = _check_grid(self.persistence_grid, "persistence_grid", 2)
        else:
            top = float((pooled[:, 1] - pooled[:, 0]).max()) if has_bars else 1.0
            self.persistence_grid_ = _span_grid(0.0, top, n_grid)
        if self.persistence_grid_[-1] <= 0.0:
            raise ValueError(f"persistence_grid: the last edge must be > 0, got {self.persistence_grid_[-1]!r}")
        self.birth_grid_: np.ndarray | None = None
        if not self.univariate:
            if self.birth_grid is not None:
                self.birth_grid_ = _check_grid(self.birth_grid, "birth_grid", 2)
            elif has_bars:
                self.birth_grid_ = _span_grid(float(pooled[:, 0].min()), float(pooled[:, 0].max()), n_grid)
            else:
                self.birth_grid_ = np.linspace(0.0, 1.0, n_grid)

    def _names(self) -> list[str]:
        n_p = self.persistence_grid_.shape[0] - 1
        if self.birth_grid_ is None:
            return [f"p{i:02d}" for i in range(n_p)]
        return [f"p{i:02d}_b{j:02d}" for i in range(n_p) for j in range(self.birth_grid_.shape[0] - 1)]

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        births = diagram[:, 0]
        persistence = diagram[:, 1] - births
        y = self.persistence_grid_
        p_max = y[-1]
        weights = np.where(persistence < p_max, persistence / p_max, 1.0)
        mass_y = np.diff(ndtr((y[:, None] - persistence) / self.sigma), axis=0) * weights  # (n_p, n_bars)
        if self.birth_grid_ is None:
            return mass_y.sum(axis=1)
        mass_x = np.diff(ndtr((self.birth_grid_[:, None] - births) / self.sigma), axis=0)  # (n_b, n_bars)
        return np.einsum("in,jn->ij", mass_y, mass_x).ravel()

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        # A bar's mass on the persistence axis depends on its persistence only, on the birth axis on its birth only,
        # and an image has few distinct values (a 128x128 resize of 8-bit pixels: ~300 births for ~2000 bars): each
        # is computed once per distinct value and gathered, the same operations on the same numbers, bit for bit.
        births = packed.births
        persistence, p_index = _distinct(packed.deaths - births)
        y = self.persistence_grid_
        p_max = y[-1]
        weights = np.where(persistence < p_max, persistence / p_max, 1.0)
        mass_y = np.diff(ndtr((y[:, None] - persistence) / self.sigma), axis=0) * weights  # (n_p, distinct)
        mass_y = mass_y.take(p_index, axis=1)  # (n_p, N), C-ordered (x[:, index] is not, and einsum sums it otherwise)
        if self.birth_grid_ is None:
            return _segment_sums(mass_y, packed.offsets, axis=1).T
        births, b_index = _distinct(births)
        mass_x = np.diff(ndtr((self.birth_grid_[:, None] - births) / self.sigma), axis=0).take(b_index, axis=1)
        return _segment_outer_sums(mass_y, mass_x, packed.offsets).reshape(packed.n_diagrams, -1)


class BettiCurve(_DiagramVectorizer):
    """Betti curve averaged over grid intervals (tdavec ``computeBettiCurve``, "VAB").

    Interval i holds ``sum(max(0, min(t_{i+1}, d) - max(t_i, b))) / (t_{i+1} - t_i)``: the mean number of bars alive
    over [t_i, t_{i+1}].

    Parameters
    ----------
    n_grid : int, default=21
        Number of grid points when learned (n_grid - 1 intervals).
    grid : array-like, default=None
        Explicit increasing grid; None learns ``linspace(min birth, max death, n_grid)`` ([0, 1] without bars).

    Attributes
    ----------
    grid_ : ndarray of shape (n_points,)
        Interval edges.
    feature_names_out_ : ndarray of str
        ``betti_t{i:03d}`` for interval i.
    """

    prefix = "betti"

    def __init__(self, n_grid: int = 21, grid: ArrayLike | None = None) -> None:
        self.n_grid = n_grid
        self.grid = grid

    def _fit(self, diagrams: list[np.ndarray]) -> None:
        if self.grid is not None:
            self.grid_ = _check_grid(self.grid, "grid", 2)
            return
        n_grid = _check_int(self.n_grid, "n_grid", 2)
        pooled = _pooled(diagrams)
        if pooled.shape[0] == 0:
            self.grid_ = np.linspace(0.0, 1.0, n_grid)
        else:
            self.grid_ = _span_grid(float(pooled[:, 0].min()), float(pooled[:, 1].max()), n_grid)

    def _names(self) -> list[str]:
        return [f"t{i:03d}" for i in range(self.grid_.shape[0] - 1)]

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        t = self.grid_
        n_intervals = t.shape[0] - 1
        births, deaths = diagram[:, 0], diagram[:, 1]
        first = np.searchsorted(t, births, side="right") - 1  # interval holding the birth
        last = np.searchsorted(t, deaths, side="left") - 1  # interval holding the death
        # A bar inside one interval adds its length there (most bars of a noisy image); the others are clipped to
        # every interval. Both are the same sum of max(0, min(t1, d) - max(t0, b)).
        single = (first == last) & (first >= 0) & (first < n_intervals)
        totals = np.bincount(first[single], weights=(deaths - births)[single], minlength=n_intervals)
        spanning = ~single
        if spanning.any():
            alive = np.minimum(t[1:, None], deaths[spanning]) - np.maximum(t[:-1, None], births[spanning])
            np.maximum(alive, 0.0, out=alive)
            totals = totals + alive.sum(axis=1)
        return totals / np.diff(t)

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        t = self.grid_
        n_intervals = t.shape[0] - 1
        births, deaths = packed.births, packed.deaths
        # A bar adds to the intervals from the one holding its birth to the one holding its death (clipped to the
        # grid): one (bar, interval) pair each, ~1.5 a bar on noisy images, against every interval when dense.
        first = np.maximum(np.searchsorted(t, births, side="right") - 1, 0)
        last = np.minimum(np.searchsorted(t, deaths, side="left") - 1, n_intervals - 1)
        counts = np.maximum(last - first + 1, 0)
        bar = np.repeat(np.arange(births.shape[0]), counts)
        interval = np.arange(bar.shape[0]) - np.repeat(np.cumsum(counts) - counts - first, counts)
        alive = np.minimum(t[interval + 1], deaths[bar]) - np.maximum(t[interval], births[bar])
        np.maximum(alive, 0.0, out=alive)
        totals = np.bincount(
            packed.segment[bar] * n_intervals + interval, weights=alive, minlength=packed.n_diagrams * n_intervals
        )
        return totals.reshape(packed.n_diagrams, n_intervals) / np.diff(t)


class PersistenceEntropy(_DiagramVectorizer):
    """Persistent entropy ``-sum(l_i/L log2(l_i/L))`` of the bar lengths l_i, L = sum l_i (tdavec's stats entropy).

    0 for an empty diagram or when every bar has zero length; zero-length bars add 0.

    Attributes
    ----------
    feature_names_out_ : ndarray of str
        ``["entropy_value"]``.
    """

    prefix = "entropy"

    def __init__(self) -> None:
        pass

    def _names(self) -> list[str]:
        return ["value"]

    def _vectorize(self, diagram: np.ndarray) -> np.ndarray:
        return np.array([_entropy(diagram[:, 1] - diagram[:, 0])])

    def _transform_batch(self, packed: _Packed) -> np.ndarray:
        return _segment_entropy(packed.deaths - packed.births, packed)[:, None]


def _quantile_ranks(counts: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where numpy's default ("linear") quantiles of ``counts`` sorted values read them: (lower rank, upper rank,
    gamma), each shaped ``counts.shape + probs.shape``; :func:`_interpolate` of the values at those ranks is
    ``np.quantile``, bit for bit. A count of 0 is taken as 1 (its quantiles are garbage: callers mask them)."""
    n = np.maximum(counts, 1)[..., None]
    virtual = (n - 1) * probs
    previous = np.floor(virtual)
    previous = np.where(virtual >= n - 1, n - 1, previous)
    lower = previous.astype(np.intp)
    return lower, np.minimum(lower + 1, n - 1), virtual - previous


def _interpolate(lower: np.ndarray, upper: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """``np.quantile``'s linear interpolation, step for step, between the values at :func:`_quantile_ranks`."""
    diff = upper - lower
    result = lower + diff * gamma
    high = np.broadcast_to(gamma >= 0.5, result.shape)
    result[high] = (upper - diff * (1 - gamma))[high]
    return result


def _sorted_quantiles(sorted_values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """numpy's default ("linear") quantiles of values already sorted along the last axis.

    The same floating-point steps as ``np.quantile`` (so the same bits), without its partition: one sort serves
    every quantile. Shape ``sorted_values.shape[:-1] + probs.shape``; needs at least one value.
    """
    lower, upper, gamma = _quantile_ranks(np.array(sorted_values.shape[-1]), probs)
    return _interpolate(sorted_values[..., lower], sorted_values[..., upper], gamma)


def _entropy(lifespans: np.ndarray) -> float:
    total = float(lifespans.sum())
    if not total > 0.0:
        return 0.0
    p = lifespans[lifespans > 0.0] / total
    return float(-np.sum(p * np.log2(p)))


def _segment_entropy(lifespans: np.ndarray, packed: _Packed) -> np.ndarray:
    """:func:`_entropy` of each diagram of ``packed``, (D,)."""
    total = _segment_sums(lifespans, packed.offsets)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 in a diagram of zero-length bars only
        p = lifespans / total[packed.segment]
    positive = p > 0.0
    terms = np.log2(p, out=np.zeros_like(p), where=positive)
    terms *= p  # zero-length bars add 0 (tdavec: NaN)
    entropy = -_segment_sums(terms, packed.offsets)
    entropy[~(total > 0.0)] = 0.0
    return entropy


def _unit_circle(x: np.ndarray) -> np.ndarray:
    """``exp(2 pi i x)`` as cos + i sin (cheaper than a complex exp)."""
    angle = (2.0 * np.pi) * x
    out = np.empty(x.shape, dtype=np.complex128)
    out.real = np.cos(angle)
    out.imag = np.sin(angle)
    return out


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct, index)``: the sorted distinct values and where each value is among them (``distinct[index]`` is
    ``values``). A sort and a binary search: cheaper than ``np.unique(return_inverse=True)``'s argsort."""
    distinct = np.unique(values)
    return distinct, np.searchsorted(distinct, values)


def _segment_outer_sums(a: np.ndarray, b: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``sum_n a[i, n] * b[j, n]`` over each diagram's columns n: (D, i, j).

    One einsum per diagram on views (a Python step per diagram, but each does thousands of bars' work): summing
    per-bar outer products across the batch would cost ~4x more passes over memory, and BLAS is avoided on purpose
    (see the note at the top of the module).
    """
    out = np.empty((offsets.shape[0] - 1, a.shape[0], b.shape[0]))
    for row, (start, stop) in enumerate(itertools.pairwise(offsets.tolist())):
        np.einsum("in,jn->ij", a[:, start:stop], b[:, start:stop], out=out[row])
    return out
