"""Each transform keeps its stated shape and dtype contract and computes the exact values."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.config import PreprocessSettings
from conveyor.preprocess import (
    Preprocessor,
    normalise_minmax,
    normalise_percentile,
    resize,
    to_gray_unit,
    trim_borders,
)


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.array([[0, 255]], dtype=np.uint8), [[0.0, 1.0]]),
        (np.array([[0, 65535]], dtype=np.uint16), [[0.0, 1.0]]),
        (np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8), [[0.299, 0.114]]),
        (np.array([[0.25, 0.5]], dtype=np.float32), [[0.25, 0.5]]),
    ],
    ids=["uint8", "uint16", "rgb-luma", "float"],
)
def test_to_gray_unit_values(pixels: np.ndarray, expected: list[list[float]]) -> None:
    gray = to_gray_unit(pixels)
    assert gray.dtype == np.float32
    np.testing.assert_allclose(gray, expected, atol=1e-6)


def test_to_gray_unit_rejects_a_volume() -> None:
    with pytest.raises(ValueError, match=r"expected an \(H, W\) or \(H, W, C\) array, got shape \(2, 2, 2, 2\)"):
        to_gray_unit(np.zeros((2, 2, 2, 2)))


def test_trim_borders_crops_to_the_foreground_box() -> None:
    image = np.zeros((10, 12), dtype=np.float32)
    image[2:5, 3:9] = 1.0
    image[7, 4] = 0.5
    trimmed = trim_borders(image, 0.05)
    assert trimmed.shape == (6, 6)  # rows 2..7, columns 3..8
    assert trimmed[0, 0] == 1.0


def test_trim_borders_keeps_an_all_dark_image() -> None:
    assert trim_borders(np.zeros((5, 5), dtype=np.float32)).shape == (5, 5)


@pytest.mark.parametrize("shape", [(300, 200), (20, 30)])
def test_resize_gives_the_requested_shape(shape: tuple[int, int]) -> None:
    out = resize(np.random.default_rng(0).random(shape, dtype=np.float32), (128, 96))
    assert (out.shape, out.dtype) == ((128, 96), np.float32)


def test_resize_by_area_preserves_the_mean_when_halving() -> None:
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(resize(image, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])


def test_normalise_minmax() -> None:
    np.testing.assert_allclose(normalise_minmax(np.array([[2.0, 4.0, 6.0]])), [[0.0, 0.5, 1.0]])
    assert not normalise_minmax(np.full((2, 2), 3.0)).any()


def test_normalise_percentile_clips_outliers() -> None:
    image = np.concatenate([np.linspace(0.0, 1.0, 995), np.full(5, 1000.0)]).reshape(20, 50)
    out = normalise_percentile(image, 0.0, 99.0)
    assert float(out.max()) == 1.0  # the hot pixels are clipped to the top
    assert float(out.reshape(-1)[497]) == pytest.approx(0.5, abs=0.01)  # the middle stays in the middle


def test_preprocessor_output_contract() -> None:
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[50:250, 100:300] = np.random.default_rng(1).integers(50, 255, (200, 200, 3))
    out = Preprocessor(PreprocessSettings(size=(64, 48)))(pixels)
    assert (out.shape, out.dtype, float(out.min()), float(out.max())) == ((64, 48), np.float32, 0.0, 1.0)


def test_preprocessor_keeps_colour_when_asked() -> None:
    pixels = np.random.default_rng(2).integers(0, 255, (40, 50, 3)).astype(np.uint8)
    out = Preprocessor(PreprocessSettings(grayscale=False, size=(32, 32)))(pixels)
    assert out.shape == (32, 32, 3)


def test_preprocess_settings_reject_a_tiny_size() -> None:
    with pytest.raises(ValueError, match=r"preprocess\.size must be at least 8x8"):
        PreprocessSettings(size=(4, 4))


def test_preprocess_config_hash_changes_with_the_config() -> None:
    assert PreprocessSettings().config_hash() == PreprocessSettings().config_hash()
    assert PreprocessSettings().config_hash() != PreprocessSettings(size=(64, 64)).config_hash()


def test_clahe_raises_local_contrast_and_stays_in_the_unit_range() -> None:
    from conveyor.preprocess.transforms import Preprocessor

    rng = np.random.default_rng(0)
    flat = (100 + rng.normal(0, 3, (96, 96))).clip(0, 255).astype(np.uint8)  # a low-contrast image
    flat[:, :48] += 40
    plain = Preprocessor(PreprocessSettings(trim=False, size=(64, 64)))(flat)
    equalised = Preprocessor(PreprocessSettings(trim=False, size=(64, 64), contrast="clahe"))(flat)
    assert equalised.shape == plain.shape and equalised.dtype == np.float32
    assert equalised.min() >= 0.0 and equalised.max() <= 1.0
    assert float(equalised[:, :32].std()) > float(plain[:, :32].std())


def test_the_configuration_id_is_unchanged_without_clahe_and_changes_with_it() -> None:
    assert PreprocessSettings().config_hash() == "4868db3815dd"  # as before the contrast setting existed
    assert PreprocessSettings(contrast="clahe").config_hash() != "4868db3815dd"
