"""Cubical persistence diagrams of preprocessed images (H0 and H1, sublevel and superlevel).

Input contract: a *preprocessed image* is a 2-D real array (H, W), normally float32, with values in [0, 1].
Output contract: a *diagram* is a float64 array of shape (n, 2) of (birth, death) pairs with birth <= death and only
finite values.

Each pixel is a top-dimensional cell of a cubical complex whose filtration value is the pixel value (gudhi's
``top_dimensional_cells`` input), so pixels that share only a corner are connected.

Conventions:

* ``sublevel`` (dark to bright): the filtration is the image itself.
* ``superlevel`` (bright to dark): the sublevel filtration of ``1 - image``. Its diagram is reported in those
  coordinates, ``(b, d) = (1 - intensity at birth, 1 - intensity at death)``: the values stay in [0, 1], birth <= death
  still holds, and every vectoriser treats both filtrations alike. A point (0.2, 0.7) is a feature born when the
  threshold comes down to intensity 0.8 and gone at intensity 0.3.
* Infinite bars: H0 has exactly one, born at the filtration's minimum; its death is capped at the filtration's maximum
  value for that image (``image.max()`` for sublevel, ``1 - image.min()`` for superlevel), so it records the image's
  dynamic range. A constant image therefore has a single zero-length H0 bar (c, c); it is kept, so every image has
  exactly one essential H0 bar. H1 of a 2-D image has no infinite bar. Bars of zero persistence other than this one are
  dropped (gudhi's ``min_persistence=0``).

gudhi's compiled 2-D routine (what ``gudhi.sklearn.CubicalPersistence`` calls for 2-D top cells) takes ~0.1 ms per
filtration on a smooth 128x128 image (~0.6 ms with thousands of noise bars). This module calls it directly, because
the estimator's joblib wrapper adds ~0.1 ms per call, as much as the routine itself; the public ``CubicalComplex``
(same diagrams, ~30x slower) is the fallback should a gudhi release rename the routine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

import numpy as np

__all__ = [
    "BUNDLE_KEYS",
    "DIAGRAM_VERSION",
    "FILTRATIONS",
    "HOMOLOGY_DIMENSIONS",
    "DiagramBundle",
    "Filtration",
    "bundle_from_arrays",
    "bundle_to_arrays",
    "diagram_bundle",
    "diagram_bundles",
    "persistence_diagram",
    "persistence_diagrams",
]

DIAGRAM_VERSION: Final = 1
"""Bumped whenever the diagrams computed for the same image change (conventions, capping): invalidates caches."""
Filtration = Literal["sublevel", "superlevel"]
FILTRATIONS: Final[tuple[Filtration, Filtration]] = ("sublevel", "superlevel")
HOMOLOGY_DIMENSIONS: Final[tuple[int, int]] = (0, 1)
BUNDLE_KEYS: Final[tuple[tuple[str, int], ...]] = tuple((f, d) for f in FILTRATIONS for d in HOMOLOGY_DIMENSIONS)
DiagramBundle = dict[tuple[str, int], np.ndarray]
"""Per image: (filtration, homology dimension) -> diagram, for every key of :data:`BUNDLE_KEYS`."""

# Preprocessing rounds in float32 (e.g. luma weights summing to 1 + 1 ulp); that is not bad input.
_RANGE_TOL: Final = 1e-6
_EMPTY: Final = np.empty((0, 2), dtype=np.float64)


@functools.cache
def _fast_rectangle() -> Callable[[np.ndarray, float], list[np.ndarray]] | None:
    """gudhi's compiled 2-D routine, imported on first use (gudhi is not loaded when this module is)."""
    try:
        from gudhi._pers_cub_low_dim_ext import _persistence_on_rectangle_from_top_cells
    except ImportError:  # older or newer gudhi: the public CubicalComplex gives the same diagrams, only slower
        return None
    return _persistence_on_rectangle_from_top_cells


def _cubical_public(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H0 and H1 of top-cell filtration values through gudhi's public CubicalComplex (any shape, slower)."""
    import gudhi

    complex_ = gudhi.CubicalComplex(top_dimensional_cells=cells)
    complex_.compute_persistence(homology_coeff_field=11, min_persistence=0.0)
    h0 = np.asarray(complex_.persistence_intervals_in_dimension(0), dtype=np.float64).reshape(-1, 2)
    h1 = np.asarray(complex_.persistence_intervals_in_dimension(1), dtype=np.float64).reshape(-1, 2)
    return h0, h1


def _cubical(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H0 and H1 (inf not yet capped) of a C-contiguous float64 (H, W) array of top-cell values."""
    fast = _fast_rectangle()
    if fast is not None and min(cells.shape) >= 3:
        h0, h1 = fast(cells, 0.0)
        return h0, h1
    return _cubical_public(cells)


def _check_image(image: object, index: int | None = None) -> np.ndarray:
    """The image as C-contiguous float64, or ValueError naming what is wrong."""
    where = "image" if index is None else f"image {index}"
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D (H, W) array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{where}: expected a non-empty (H, W) array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{where}: expected a real numeric array, got dtype {array.dtype}")
    cells = np.ascontiguousarray(array, dtype=np.float64)
    low, high = float(cells.min()), float(cells.max())
    # NaN fails both comparisons, so one test covers NaN, inf and out-of-range values.
    if not (low >= -_RANGE_TOL and high <= 1.0 + _RANGE_TOL):
        raise ValueError(
            f"{where}: expected finite values in [0, 1] (a preprocessed image), got min {low!r}, max {high!r}"
        )
    return cells


def _capped(h0: np.ndarray, cap: float) -> np.ndarray:
    infinite = ~np.isfinite(h0[:, 1])
    if infinite.any():
        h0[infinite, 1] = cap
    return h0


def _diagrams_of_cells(cells: np.ndarray, filtration: str) -> dict[int, np.ndarray]:
    """Both homology dimensions of one validated float64 image under one filtration."""
    if filtration == "sublevel":
        values = cells
        cap = float(cells.max())
    elif filtration == "superlevel":
        values = 1.0 - cells
        cap = 1.0 - float(cells.min())
    else:
        raise ValueError(f"filtration: expected one of {FILTRATIONS}, got {filtration!r}")
    h0, h1 = _cubical(values)
    return {0: _capped(np.asarray(h0, dtype=np.float64), cap), 1: np.asarray(h1, dtype=np.float64)}


def _check_filtration(filtration: str) -> None:
    if filtration not in FILTRATIONS:
        raise ValueError(f"filtration: expected one of {FILTRATIONS}, got {filtration!r}")


def persistence_diagram(image: np.ndarray, filtration: Filtration = "sublevel") -> dict[int, np.ndarray]:
    """H0 and H1 persistence diagrams of one preprocessed image.

    Args:
        image: (H, W) real array with values in [0, 1] (float32 from preprocessing).
        filtration: ``"sublevel"`` (the image as is) or ``"superlevel"`` (sublevel of ``1 - image``; see the module
            docstring for the coordinates).

    Returns:
        ``{0: H0, 1: H1}``, each a float64 (n, 2) array of finite (birth, death) pairs, birth <= death. The one
        infinite H0 bar is capped at the filtration's maximum value for this image.

    Raises:
        ValueError: the image is not a non-empty 2-D real array with finite values in [0, 1], or the filtration is
            unknown.
    """
    _check_filtration(filtration)
    return _diagrams_of_cells(_check_image(image), filtration)


def persistence_diagrams(
    images: Sequence[np.ndarray] | np.ndarray,
    filtration: Filtration = "sublevel",
    *,
    n_jobs: int | None = None,
) -> list[dict[int, np.ndarray]]:
    """H0 and H1 diagrams of many images under one filtration, as :func:`persistence_diagram` gives them.

    Args:
        images: a sequence of (H, W) images or an (N, H, W) array, values in [0, 1].
        filtration: ``"sublevel"`` or ``"superlevel"``.
        n_jobs: threads to spread images over (gudhi releases the GIL); None or 1 runs in this thread, -1 uses
            every core.

    Returns:
        One ``{0: H0, 1: H1}`` dict per image, in input order.

    Raises:
        ValueError: as :func:`persistence_diagram`; the message names the image's index.
    """
    _check_filtration(filtration)
    cells = [_check_image(image, index) for index, image in enumerate(images)]
    if n_jobs in (None, 1) or len(cells) < 2:
        return [_diagrams_of_cells(c, filtration) for c in cells]
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=n_jobs, prefer="threads")(delayed(_diagrams_of_cells)(c, filtration) for c in cells))


def diagram_bundle(image: np.ndarray) -> DiagramBundle:
    """Every diagram the topological extractors use for one image: both filtrations, H0 and H1.

    This is what the feature store caches per image (by the image's sha256).

    Args:
        image: (H, W) real array with values in [0, 1].

    Returns:
        ``{("sublevel", 0): ..., ("sublevel", 1): ..., ("superlevel", 0): ..., ("superlevel", 1): ...}``, in the
        order of :data:`BUNDLE_KEYS`.

    Raises:
        ValueError: as :func:`persistence_diagram`.
    """
    cells = _check_image(image)
    bundle: DiagramBundle = {}
    for filtration in FILTRATIONS:
        for dim, diagram in _diagrams_of_cells(cells, filtration).items():
            bundle[(filtration, dim)] = diagram
    return bundle


def diagram_bundles(images: Sequence[np.ndarray] | np.ndarray, *, n_jobs: int | None = None) -> list[DiagramBundle]:
    """:func:`diagram_bundle` of each image, optionally on ``n_jobs`` threads."""
    if n_jobs in (None, 1) or len(images) < 2:
        return [diagram_bundle(image) for image in images]
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=n_jobs, prefer="threads")(delayed(diagram_bundle)(image) for image in images))


def bundle_to_arrays(bundle: Mapping[tuple[str, int], np.ndarray]) -> dict[str, np.ndarray]:
    """Flat string keys (``"sublevel_h0"``...) for storing a bundle with ``np.savez``."""
    return {f"{filtration}_h{dim}": np.asarray(bundle[(filtration, dim)]) for filtration, dim in BUNDLE_KEYS}


def bundle_from_arrays(arrays: Mapping[str, np.ndarray]) -> DiagramBundle:
    """Inverse of :func:`bundle_to_arrays` (accepts an ``np.load`` result).

    Raises:
        ValueError: a key is missing or a diagram is not an (n, 2) array.
    """
    bundle: DiagramBundle = {}
    for filtration, dim in BUNDLE_KEYS:
        name = f"{filtration}_h{dim}"
        if name not in arrays:
            raise ValueError(f"diagram bundle: missing array {name!r}, have {sorted(arrays)}")
        diagram = np.asarray(arrays[name], dtype=np.float64)
        if diagram.size == 0:
            diagram = _EMPTY.copy()
        if diagram.ndim != 2 or diagram.shape[1] != 2:
            raise ValueError(f"diagram bundle: {name!r} has shape {diagram.shape}, expected (n, 2)")
        bundle[(filtration, dim)] = diagram
    return bundle
