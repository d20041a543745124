"""The named feature extractors the feature store keeps master tables for.

A topological extractor is a scikit-learn transformer over *diagram bundles*: per image, a mapping
``(filtration, dim) -> diagram`` for filtrations ``sublevel``/``superlevel`` and dims 0/1, as
:func:`~conveyor.features.persistence.diagram_bundle` computes it. It applies one vectoriser to each of the four parts
and concatenates the columns in :data:`~conveyor.features.persistence.BUNDLE_KEYS` order, prefixed
``sub_h0_``, ``sub_h1_``, ``sup_h0_``, ``sup_h1_`` (e.g. ``sub_h0_landscape_k1_t000``). ``intensity`` works on the
preprocessed images themselves.

Grids. By default (``fit_grids=False``) every grid is fixed from the parameters and the [0, 1] range of preprocessed
intensities (which bounds every diagram value), so an image's features depend only on the image and the extractor's
:meth:`config`: they can be computed at ingest and appended to a master table keyed by :meth:`config_hash`.
``fit_grids=True`` learns the grids from the training bundles in ``fit`` (TDAvec's quantile block edges, etc.); those
features depend on the training set, so they belong inside a fitted model, not in a shared table. Explicit grids
(``grid``, ``birth_grid``...) are parameters, hence part of the config and its hash: a way to pin edges learned once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from conveyor.features.intensity import IntensityFeatures
from conveyor.features.persistence import (  # diagram_bundle: re-exported
    BUNDLE_KEYS,
    DIAGRAM_VERSION,
    DiagramBundle,
    diagram_bundle,
)
from conveyor.features.vectorizers import (
    BettiCurve,
    FunctionalDataAnalysis,
    PersistenceBlock,
    PersistenceEntropy,
    PersistenceImage,
    PersistenceLandscape,
    SummaryStatistics,
    _DiagramVectorizer,
    check_diagram,
)

__all__ = [
    "EXTRACTORS",
    "PART_PREFIXES",
    "BettiExtractor",
    "BlockExtractor",
    "EntropyExtractor",
    "FDAExtractor",
    "ImageExtractor",
    "IntensityExtractor",
    "LandscapeExtractor",
    "StatsExtractor",
    "check_bundles",
    "diagram_bundle",
    "make_extractor",
]

PART_PREFIXES: dict[tuple[str, int], str] = {
    (filtration, dim): f"{'sub' if filtration == 'sublevel' else 'sup'}_h{dim}" for filtration, dim in BUNDLE_KEYS
}
"""Column prefix of each bundle part."""

_UNIT = (0.0, 1.0)  # range of every diagram value of a preprocessed image


def check_bundles(X: object) -> list[DiagramBundle]:
    """A batch of diagram bundles with every part validated, or ValueError naming the bundle and part.

    Args:
        X: a sequence of mappings ``(filtration, dim) -> (n, 2) diagram`` with every key of ``BUNDLE_KEYS``.
    """
    if isinstance(X, (str, bytes, Mapping)) or not isinstance(X, Sequence):
        raise ValueError(f"X: expected a sequence of diagram bundles (one mapping per image), got {type(X).__name__}")
    bundles = []
    for index, bundle in enumerate(X):
        if not isinstance(bundle, Mapping):
            raise ValueError(
                f"bundle {index}: expected a mapping (filtration, dim) -> diagram, got {type(bundle).__name__}"
            )
        checked: DiagramBundle = {}
        for key in BUNDLE_KEYS:
            if key not in bundle:
                raise ValueError(f"bundle {index}: missing diagram {key!r}; expected keys {list(BUNDLE_KEYS)}")
            try:
                checked[key] = check_diagram(bundle[key])
            except ValueError as error:
                raise ValueError(f"bundle {index}, {key!r}: {error}") from None
        bundles.append(checked)
    return bundles


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Configured:
    """``config()`` and ``config_hash()`` for anything with ``get_params``."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    """Bumped whenever the numbers an extractor computes for the same config change."""
    input_kind: ClassVar[Literal["bundle", "image"]]

    def config(self) -> dict[str, Any]:
        """``{"extractor": name, "version": version, "params": get_params()}``, JSON-ready."""
        params = self.get_params(deep=False)  # type: ignore[attr-defined]
        return {
            "extractor": self.name,
            "version": self.version,
            "params": {key: _jsonable(params[key]) for key in sorted(params)},
        }

    def config_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`config`; the feature store's key for this extractor."""
        text = json.dumps(self.config(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _BundleExtractor(_Configured, TransformerMixin, BaseEstimator):
    """One vectoriser per bundle part, columns concatenated with part prefixes."""

    input_kind = "bundle"

    def config(self) -> dict[str, Any]:
        """As :meth:`_Configured.config`, plus ``diagram_version``: the features also change when the diagrams do."""
        config = super().config()
        config["diagram_version"] = DIAGRAM_VERSION
        return config

    def _vectorizer(self) -> _DiagramVectorizer:
        raise NotImplementedError

    def fit(self, X: Sequence[Mapping[tuple[str, int], np.ndarray]], y: object = None) -> _BundleExtractor:
        """Fit one vectoriser per (filtration, dim) part on the training bundles.

        Parameters
        ----------
        X : sequence of mapping (filtration, dim) -> ndarray of shape (n_bars, 2)
            Training diagram bundles; only read when grids are learned (``fit_grids=True``). May be empty otherwise.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        bundles = check_bundles(X)
        self.vectorizers_: dict[tuple[str, int], _DiagramVectorizer] = {}
        names: list[str] = []
        for key in BUNDLE_KEYS:
            vectorizer = self._vectorizer().fit([bundle[key] for bundle in bundles])
            self.vectorizers_[key] = vectorizer
            names.extend(f"{PART_PREFIXES[key]}_{name}" for name in vectorizer.feature_names_out_)
        self.feature_names_out_ = np.asarray(names, dtype=object)
        return self

    def transform(self, X: Sequence[Mapping[tuple[str, int], np.ndarray]]) -> np.ndarray:
        """Vectorise every part of every bundle.

        Parameters
        ----------
        X : sequence of mapping (filtration, dim) -> ndarray of shape (n_bars, 2)
            Diagram bundles, one per image.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out)
            float64, columns as :meth:`get_feature_names_out`.
        """
        check_is_fitted(self)
        return self._transform_checked(check_bundles(X))

    def _transform_checked(self, bundles: list[DiagramBundle]) -> np.ndarray:
        """:meth:`transform` of bundles that :func:`check_bundles` returned (the pipeline checks them once for all
        extractors)."""
        blocks = [
            vectorizer._transform_valid([bundle[key] for bundle in bundles])
            for key, vectorizer in self.vectorizers_.items()
        ]
        return np.hstack(blocks) if bundles else np.empty((0, self.feature_names_out_.shape[0]))

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """Column names, e.g. ``sub_h0_landscape_k1_t000``.

        Parameters
        ----------
        input_features : None
            Ignored.

        Returns
        -------
        names : ndarray of str objects
        """
        check_is_fitted(self)
        return self.feature_names_out_.copy()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X is a list of dicts of diagrams
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


def _unit_grid(n_points: int) -> np.ndarray:
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_grid: expected an integer >= 2, got {n_points!r}")
    return np.linspace(_UNIT[0], _UNIT[1], n_points)


def _grid_param(explicit: ArrayLike | None, fit_grids: bool, n_grid: int) -> ArrayLike | None:
    """The grid handed to a vectoriser: explicit if given, else learned (None) or fixed on [0, 1]."""
    if explicit is not None:
        return explicit
    return None if fit_grids else _unit_grid(n_grid)


class LandscapeExtractor(_BundleExtractor):
    """Persistence landscapes (:class:`~conveyor.features.vectorizers.PersistenceLandscape`) of every part.

    Parameters
    ----------
    k : int, default=3
        Landscape levels.
    n_grid : int, default=20
        Grid points; fixed grid ``linspace(0, 1, n_grid)`` unless ``fit_grids`` or ``grid``.
    fit_grids : bool, default=False
        Learn the grid of each part from the training bundles.
    grid : sequence of float, default=None
        Explicit grid for every part.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "landscape"

    def __init__(self, k: int = 3, n_grid: int = 20, fit_grids: bool = False, grid: ArrayLike | None = None) -> None:
        self.k = k
        self.n_grid = n_grid
        self.fit_grids = fit_grids
        self.grid = grid

    def _vectorizer(self) -> _DiagramVectorizer:
        return PersistenceLandscape(
            k=self.k, n_grid=self.n_grid, grid=_grid_param(self.grid, self.fit_grids, self.n_grid)
        )


class BlockExtractor(_BundleExtractor):
    """Vectors of persistence blocks (:class:`~conveyor.features.vectorizers.PersistenceBlock`) of every part.

    Parameters
    ----------
    tau : float, default=0.3
        Block size factor.
    n_grid : int, default=6
        Edges per axis: quantile levels when ``fit_grids``, else ``linspace(0, 1, n_grid)`` on both axes.
    fit_grids : bool, default=False
        Learn TDAvec's quantile edges per part from the training bundles.
    birth_grid, persistence_grid : sequence of float, default=None
        Explicit edges for every part.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "block"

    def __init__(
        self,
        tau: float = 0.3,
        n_grid: int = 6,
        fit_grids: bool = False,
        birth_grid: ArrayLike | None = None,
        persistence_grid: ArrayLike | None = None,
    ) -> None:
        self.tau = tau
        self.n_grid = n_grid
        self.fit_grids = fit_grids
        self.birth_grid = birth_grid
        self.persistence_grid = persistence_grid

    def _vectorizer(self) -> _DiagramVectorizer:
        return PersistenceBlock(
            tau=self.tau,
            n_grid=self.n_grid,
            birth_grid=_grid_param(self.birth_grid, self.fit_grids, self.n_grid),
            persistence_grid=_grid_param(self.persistence_grid, self.fit_grids, self.n_grid),
        )


class FDAExtractor(_BundleExtractor):
    """Fourier coefficients (:class:`~conveyor.features.vectorizers.FunctionalDataAnalysis`) of every part.

    Parameters
    ----------
    K : int, default=10
        Frequencies (2K + 1 columns per part).
    fit_grids : bool, default=False
        Learn the scale (largest training death) per part; otherwise the scale is ``max_death``.
    max_death : float, default=1.0
        Scale used when not learned: the top of the [0, 1] intensity range.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "fda"

    def __init__(self, K: int = 10, fit_grids: bool = False, max_death: float = 1.0) -> None:
        self.K = K
        self.fit_grids = fit_grids
        self.max_death = max_death

    def _vectorizer(self) -> _DiagramVectorizer:
        return FunctionalDataAnalysis(K=self.K, max_death=None if self.fit_grids else self.max_death)


class StatsExtractor(_BundleExtractor):
    """TDAvec's 38 summary statistics (:class:`~conveyor.features.vectorizers.SummaryStatistics`) of every part.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "stats"

    def __init__(self) -> None:
        pass

    def _vectorizer(self) -> _DiagramVectorizer:
        return SummaryStatistics()


class ImageExtractor(_BundleExtractor):
    """Persistence images (:class:`~conveyor.features.vectorizers.PersistenceImage`) of every part.

    Parameters
    ----------
    n_grid : int, default=11
        Edges per axis (``n_grid - 1`` pixels); fixed on [0, 1] unless ``fit_grids`` or explicit edges.
    sigma : float, default=0.05
        Gaussian standard deviation in intensity units.
    fit_grids : bool, default=False
        Learn the pixel edges of each part from the training bundles.
    birth_grid, persistence_grid : sequence of float, default=None
        Explicit edges for every part.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "image"

    def __init__(
        self,
        n_grid: int = 11,
        sigma: float = 0.05,
        fit_grids: bool = False,
        birth_grid: ArrayLike | None = None,
        persistence_grid: ArrayLike | None = None,
    ) -> None:
        self.n_grid = n_grid
        self.sigma = sigma
        self.fit_grids = fit_grids
        self.birth_grid = birth_grid
        self.persistence_grid = persistence_grid

    def _vectorizer(self) -> _DiagramVectorizer:
        return PersistenceImage(
            n_grid=self.n_grid,
            sigma=self.sigma,
            birth_grid=_grid_param(self.birth_grid, self.fit_grids, self.n_grid),
            persistence_grid=_grid_param(self.persistence_grid, self.fit_grids, self.n_grid),
        )


class BettiExtractor(_BundleExtractor):
    """Betti curves (:class:`~conveyor.features.vectorizers.BettiCurve`) of every part.

    Parameters
    ----------
    n_grid : int, default=21
        Grid points (``n_grid - 1`` interval averages); fixed ``linspace(0, 1, n_grid)`` unless ``fit_grids`` or
        ``grid``.
    fit_grids : bool, default=False
        Learn the grid of each part from the training bundles.
    grid : sequence of float, default=None
        Explicit grid for every part.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "betti"

    def __init__(self, n_grid: int = 21, fit_grids: bool = False, grid: ArrayLike | None = None) -> None:
        self.n_grid = n_grid
        self.fit_grids = fit_grids
        self.grid = grid

    def _vectorizer(self) -> _DiagramVectorizer:
        return BettiCurve(n_grid=self.n_grid, grid=_grid_param(self.grid, self.fit_grids, self.n_grid))


class EntropyExtractor(_BundleExtractor):
    """Persistent entropy (:class:`~conveyor.features.vectorizers.PersistenceEntropy`) of every part: 4 columns.

    Attributes
    ----------
    vectorizers_ : dict
        Fitted vectoriser per (filtration, dim).
    feature_names_out_ : ndarray of str
    """

    name = "entropy"

    def __init__(self) -> None:
        pass

    def _vectorizer(self) -> _DiagramVectorizer:
        return PersistenceEntropy()


class IntensityExtractor(_Configured, IntensityFeatures):
    """:class:`~conveyor.features.intensity.IntensityFeatures` under the registry name ``intensity``.

    Takes preprocessed images, not bundles (``input_kind == "image"``). Parameters as ``IntensityFeatures``.
    """

    name = "intensity"
    input_kind = "image"

    def __init__(
        self,
        n_bins: int = 16,
        percentiles: Sequence[float] = (1, 5, 25, 50, 75, 95, 99),
        glcm_levels: int = 8,
    ) -> None:
        super().__init__(n_bins=n_bins, percentiles=percentiles, glcm_levels=glcm_levels)


EXTRACTORS: dict[str, type[_BundleExtractor] | type[IntensityExtractor]] = {
    cls.name: cls
    for cls in (
        LandscapeExtractor,
        BlockExtractor,
        FDAExtractor,
        StatsExtractor,
        ImageExtractor,
        BettiExtractor,
        EntropyExtractor,
        IntensityExtractor,
    )
}
"""Registry name -> extractor class. ``cls.input_kind`` says whether it takes diagram bundles or images."""


def make_extractor(name: str, **params: Any) -> _BundleExtractor | IntensityExtractor:
    """A new, unfitted extractor by registry name.

    Raises:
        ValueError: unknown name, or a parameter the extractor does not take.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"extractor: unknown name {name!r}, expected one of {sorted(EXTRACTORS)}")
    cls = EXTRACTORS[name]
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"extractor {name!r}: {error}") from None
