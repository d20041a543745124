"""Cubical persistence diagrams: exact diagrams of tiny images, the superlevel convention, inf capping, errors."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.features import persistence
from conveyor.features.persistence import (
    BUNDLE_KEYS,
    bundle_from_arrays,
    bundle_to_arrays,
    diagram_bundle,
    diagram_bundles,
    persistence_diagram,
    persistence_diagrams,
)


def sorted_rows(diagram: np.ndarray) -> np.ndarray:
    return diagram[np.lexsort((diagram[:, 1], diagram[:, 0]))]


def ring_image() -> np.ndarray:
    """5x5: background 0.125, a bright 3x3 ring 0.75 around a centre pixel of 0.25 (binary fractions: exact)."""
    image = np.full((5, 5), 0.125, dtype=np.float32)
    image[1:4, 1:4] = 0.75
    image[2, 2] = 0.25
    return image


# ------------------------------------------------------------------------------------------------- exact diagrams


def test_ring_sublevel_diagrams() -> None:
    # t=0.125: the background frame is a component with a loop around the ring; t=0.25: the centre is a second
    # component; t=0.75: the ring joins them (centre dies) and fills the frame's hole. Essential bar capped at max 0.75.
    diagrams = persistence_diagram(ring_image(), "sublevel")
    np.testing.assert_array_equal(sorted_rows(diagrams[0]), [[0.125, 0.75], [0.25, 0.75]])
    np.testing.assert_array_equal(diagrams[1], [[0.125, 0.75]])


def test_ring_superlevel_diagrams() -> None:
    # Sublevel of 1 - image: ring 0.25, centre 0.75, background 0.875. The ring is born first with a hole that the
    # centre fills at 0.75; the background joins the ring as it enters. Essential bar capped at 1 - min = 0.875.
    diagrams = persistence_diagram(ring_image(), "superlevel")
    np.testing.assert_array_equal(diagrams[0], [[0.25, 0.875]])
    np.testing.assert_array_equal(diagrams[1], [[0.25, 0.75]])


@pytest.mark.parametrize("filtration", ["sublevel", "superlevel"])
def test_constant_image_has_one_capped_zero_length_h0_bar(filtration: persistence.Filtration) -> None:
    diagrams = persistence_diagram(np.full((6, 7), 0.5, dtype=np.float32), filtration)
    np.testing.assert_array_equal(diagrams[0], [[0.5, 0.5]])
    assert diagrams[1].shape == (0, 2)


def test_row_image_goes_through_the_general_path() -> None:
    # 1x5 line: minima 0.125, 0.25, 0.375; 0.25 merges at 0.5, 0.375 at 0.75; the essential bar is capped at 0.75.
    image = np.array([[0.125, 0.5, 0.25, 0.75, 0.375]], dtype=np.float32)
    diagrams = persistence_diagram(image)
    np.testing.assert_array_equal(sorted_rows(diagrams[0]), [[0.125, 0.75], [0.25, 0.5], [0.375, 0.75]])
    assert diagrams[1].shape == (0, 2)


def test_two_by_n_image_goes_through_the_general_path() -> None:
    image = np.array([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]], dtype=np.float32)
    diagrams = persistence_diagram(image)
    np.testing.assert_array_equal(sorted_rows(diagrams[0]), [[0.0, 1.0], [0.5, 1.0]])


def test_diagonal_neighbours_are_connected() -> None:
    # Top-cell filtration: pixels sharing a corner share a vertex, so the two dark pixels are one component.
    image = np.ones((4, 4), dtype=np.float32)
    image[1, 1] = image[2, 2] = 0.0
    np.testing.assert_array_equal(persistence_diagram(image)[0], [[0.0, 1.0]])


# ------------------------------------------------------------------------------------------------ inf and ranges


@pytest.mark.parametrize("filtration", ["sublevel", "superlevel"])
def test_no_infinite_values_and_births_not_after_deaths(data, filtration: persistence.Filtration) -> None:
    for image in data.blob_images(3, seed=1):
        for diagram in persistence_diagram(image, filtration).values():
            assert diagram.dtype == np.float64
            assert np.isfinite(diagram).all()
            assert (diagram[:, 0] <= diagram[:, 1]).all()
            assert diagram.min(initial=0.0) >= 0.0 and diagram.max(initial=1.0) <= 1.0


def test_sublevel_essential_bar_spans_min_to_max(data) -> None:
    image = data.blob_images(1, seed=2)[0]
    h0 = persistence_diagram(image, "sublevel")[0]
    assert [float(image.min()), float(image.max())] in h0.tolist()


def test_superlevel_essential_bar_spans_one_minus_max_to_one_minus_min(data) -> None:
    image = data.blob_images(1, seed=3)[0]
    h0 = persistence_diagram(image, "superlevel")[0]
    expected = [1.0 - float(image.max()), 1.0 - float(image.min())]
    assert expected in h0.tolist()


def test_superlevel_is_sublevel_of_the_inverted_image(data) -> None:
    image = data.blob_images(1, seed=4)[0]
    inverted = (1.0 - image.astype(np.float64)).astype(np.float64)
    for dim in (0, 1):
        np.testing.assert_array_equal(
            sorted_rows(persistence_diagram(image, "superlevel")[dim]),
            sorted_rows(persistence_diagram(inverted, "sublevel")[dim]),
        )


def test_fast_path_matches_public_cubical_complex(data) -> None:
    if persistence._fast_rectangle() is None:
        pytest.skip("this gudhi has no compiled 2-D fast path")
    for image in data.blob_images(3, seed=5, size=20):
        cells = np.ascontiguousarray(image, dtype=np.float64)
        fast = persistence._cubical(cells)
        public = persistence._cubical_public(cells)
        for dim in (0, 1):
            np.testing.assert_array_equal(sorted_rows(fast[dim]), sorted_rows(public[dim]))


def test_value_a_float32_rounding_above_one_is_accepted() -> None:
    image = np.full((3, 3), np.nextafter(np.float32(1.0), np.float32(2.0)))
    assert persistence_diagram(image)[0].shape == (1, 2)


# --------------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_batch_equals_one_by_one(data, n_jobs: int | None) -> None:
    images = data.blob_images(4, seed=6)
    batch = persistence_diagrams(images, "superlevel", n_jobs=n_jobs)
    for image, diagrams in zip(images, batch, strict=True):
        single = persistence_diagram(image, "superlevel")
        for dim in (0, 1):
            np.testing.assert_array_equal(diagrams[dim], single[dim])


def test_batch_accepts_a_3d_array(data) -> None:
    images = np.stack(data.blob_images(2, seed=7))
    assert len(persistence_diagrams(images)) == 2


def test_bundle_holds_both_filtrations_in_key_order(data) -> None:
    image = data.blob_images(1, seed=8)[0]
    bundle = diagram_bundle(image)
    assert list(bundle) == list(BUNDLE_KEYS)
    for (filtration, dim), diagram in bundle.items():
        np.testing.assert_array_equal(diagram, persistence_diagram(image, filtration)[dim])


def test_bundles_on_threads_equal_one_by_one(data) -> None:
    images = data.blob_images(3, seed=9)
    for threaded, image in zip(diagram_bundles(images, n_jobs=2), images, strict=True):
        for key, diagram in diagram_bundle(image).items():
            np.testing.assert_array_equal(threaded[key], diagram)


def test_bundle_survives_npz_round_trip(data, tmp_path) -> None:
    bundle = diagram_bundle(ring_image())
    path = tmp_path / "bundle.npz"
    np.savez(path, **bundle_to_arrays(bundle))
    with np.load(path) as stored:
        restored = bundle_from_arrays(stored)
    assert list(restored) == list(BUNDLE_KEYS)
    for key in BUNDLE_KEYS:
        np.testing.assert_array_equal(restored[key], bundle[key])


def test_bundle_from_arrays_names_the_missing_array() -> None:
    arrays = bundle_to_arrays(diagram_bundle(ring_image()))
    del arrays["superlevel_h1"]
    with pytest.raises(ValueError, match="missing array 'superlevel_h1'"):
        bundle_from_arrays(arrays)


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros(5, dtype=np.float32), r"expected a 2-D \(H, W\) array, got shape \(5,\)"),
        (np.zeros((2, 3, 3), dtype=np.float32), r"expected a 2-D \(H, W\) array, got shape \(2, 3, 3\)"),
        (np.zeros((0, 4), dtype=np.float32), r"expected a non-empty \(H, W\) array"),
        (np.array([[0.5, np.nan], [0.1, 0.2]]), r"expected finite values in \[0, 1\]"),
        (np.array([[0.5, np.inf], [0.1, 0.2]]), r"expected finite values in \[0, 1\]"),
        (np.array([[0.5, 1.5], [0.1, 0.2]]), r"got min 0.1, max 1.5"),
        (np.array([[-0.5, 0.5], [0.1, 0.2]]), r"got min -0.5, max 0.5"),
        (np.array([["a", "b"], ["c", "d"]]), r"expected a real numeric array, got dtype <U1"),
    ],
)
def test_bad_image_raises_value_error(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        persistence_diagram(image)


def test_unknown_filtration_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"filtration: expected one of \('sublevel', 'superlevel'\), got 'upper'"):
        persistence_diagram(ring_image(), "upper")  # type: ignore[arg-type]


def test_batch_error_names_the_image_index() -> None:
    with pytest.raises(ValueError, match=r"image 1: expected a 2-D"):
        persistence_diagrams([ring_image(), np.zeros(3)])
