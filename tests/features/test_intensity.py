"""IntensityFeatures: exact values on a 2x2 image, degenerate images, agreement with numpy/scipy, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from conveyor.features.intensity import IntensityFeatures


def features_of(image: np.ndarray, **params: object) -> dict[str, float]:
    transformer = IntensityFeatures(**params).fit([image])  # type: ignore[arg-type]
    row = transformer.transform([image])[0]
    return dict(zip(transformer.get_feature_names_out().tolist(), row.tolist(), strict=True))


TINY = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)


def test_tiny_image_histogram_puts_one_in_the_last_bin() -> None:
    f = features_of(TINY, n_bins=4, glcm_levels=4)
    assert [f[f"hist_{i:02d}"] for i in range(4)] == [0.25, 0.25, 0.25, 0.25]
    assert f["entropy"] == 2.0


def test_tiny_image_gradient() -> None:
    # One (H-1, W-1) position: dx = 0.25 - 0, dy = 0.5 - 0.
    f = features_of(TINY, n_bins=4, glcm_levels=4)
    assert f["grad_mean"] == pytest.approx(math.sqrt(0.3125), rel=1e-7)
    assert f["grad_std"] == 0.0


def test_tiny_image_cooccurrence() -> None:
    # Levels [[0, 1], [2, 3]]; pairs (0,1), (2,3) across and (0,2), (1,3) down, symmetrised: 8 cells of 1/8.
    f = features_of(TINY, n_bins=4, glcm_levels=4)
    assert f["glcm_contrast"] == pytest.approx(4 / 8 * 1 + 4 / 8 * 4)
    assert f["glcm_homogeneity"] == pytest.approx(4 / 8 / 2 + 4 / 8 / 5)
    assert f["glcm_energy"] == pytest.approx(math.sqrt(8 / 64))
    assert f["glcm_correlation"] == pytest.approx(0.0, abs=1e-12)


def test_constant_image_has_defined_degenerate_values() -> None:
    f = features_of(np.full((8, 8), 0.3, dtype=np.float32))
    assert f["std"] == 0.0 and f["skewness"] == 0.0 and f["kurtosis"] == 0.0
    assert f["glcm_contrast"] == 0.0 and f["glcm_homogeneity"] == 1.0 and f["glcm_energy"] == 1.0
    assert f["glcm_correlation"] == 1.0
    assert f["entropy"] == 0.0 and f["grad_mean"] == 0.0


def test_moments_match_scipy(data) -> None:
    image = data.blob_images(1, seed=21, size=32)[0]
    f = features_of(image)
    values = image.astype(np.float64).ravel()
    assert f["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert f["std"] == pytest.approx(values.std(), rel=1e-12)
    assert f["skewness"] == pytest.approx(stats.skew(values), rel=1e-10)
    assert f["kurtosis"] == pytest.approx(stats.kurtosis(values), rel=1e-10)


def test_percentiles_equal_numpy_percentile(data) -> None:
    image = data.blob_images(1, seed=22, size=32)[0]
    q = (1, 5, 25, 50, 75, 95, 99, 12.5)
    f = features_of(image, percentiles=q)
    expected = np.percentile(image.astype(np.float64), q)
    assert [f["p01"], f["p05"], f["p25"], f["p50"], f["p75"], f["p95"], f["p99"], f["p12_5"]] == expected.tolist()


def test_default_columns() -> None:
    names = IntensityFeatures().fit([TINY]).get_feature_names_out().tolist()
    assert names[:2] == ["hist_00", "hist_01"] and names[15] == "hist_15"
    assert names[16:] == [
        "mean", "std", "skewness", "kurtosis", "p01", "p05", "p25", "p50", "p75", "p95", "p99",
        "grad_mean", "grad_std", "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "entropy",
    ]  # fmt: skip


def test_three_d_array_equals_list(data) -> None:
    images = data.blob_images(3, seed=23)
    transformer = IntensityFeatures().fit(images)
    np.testing.assert_array_equal(transformer.transform(np.stack(images)), transformer.transform(images))


def test_images_of_different_sizes_in_one_batch(data) -> None:
    images = [data.blob_images(1, seed=24, size=16)[0], data.blob_images(1, seed=25, size=40)[0]]
    out = IntensityFeatures().fit(images).transform(images)
    assert out.shape == (2, 34) and np.isfinite(out).all()


@pytest.mark.parametrize(
    ("X", "message"),
    [
        ([np.zeros(4)], r"image 0: expected a 2-D \(H, W\) array with H, W >= 2, got shape \(4,\)"),
        ([np.zeros((1, 5))], r"image 0: expected a 2-D \(H, W\) array with H, W >= 2, got shape \(1, 5\)"),
        ([TINY, np.full((3, 3), 2.0)], r"image 1: expected finite values in \[0, 1\]"),
        ([np.full((3, 3), np.nan)], r"image 0: expected finite values in \[0, 1\]"),
        (np.zeros((4, 4)), r"X: expected a sequence of \(H, W\) images or an \(N, H, W\) array, got shape \(4, 4\)"),
        (3, r"X: expected a sequence of \(H, W\) images, got int"),
    ],
)
def test_bad_images_raise_value_error(X: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IntensityFeatures().fit([TINY]).transform(X)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_bins": 1}, r"n_bins: expected an integer >= 2, got 1"),
        ({"glcm_levels": 2.5}, r"glcm_levels: expected an integer >= 2, got 2.5"),
        ({"percentiles": (50, 101)}, r"percentiles: expected a non-empty sequence of values in \[0, 100\]"),
        ({"percentiles": ()}, r"percentiles: expected a non-empty sequence"),
    ],
)
def test_bad_parameters_raise_value_error_in_fit(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IntensityFeatures(**params).fit([TINY])  # type: ignore[arg-type]
