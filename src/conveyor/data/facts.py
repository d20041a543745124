"""What conveyor records about an image, computed the same way wherever an image arrives: ingest stores these facts
in the images table, the server logs them with each prediction, monitoring compares them between data sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conveyor.config import QualitySettings
from conveyor.data.decode import DecodedImage, DecodeLimits, decode_image
from conveyor.data.fingerprint import dhash
from conveyor.preprocess.transforms import to_gray_unit

__all__ = [
    "QUALITY_MEASURES",
    "Inspection",
    "brightness_contrast",
    "gray_statistics",
    "inspect_decoded",
    "inspect_image",
    "judge_quality",
    "quality_measures",
    "reduced_gray",
]

QUALITY_MEASURES = ("blur", "contrast", "dark_clipped", "bright_clipped", "resolution")
"""What ``ingest.quality`` can set thresholds on (see :func:`quality_measures`)."""


@dataclass(frozen=True)
class Inspection:
    """What conveyor records about a valid image: format, geometry, depth, perceptual hash, brightness, contrast, and
    the quality measures: sharpness (``blur``, the variance of the Laplacian: low is blurred) and the shares of
    pixels clipped to black (``dark_clipped``) and to white (``bright_clipped``)."""

    format: str
    width: int
    height: int
    channels: int
    mode: str
    bit_depth: int
    n_frames: int
    phash: str
    brightness: float
    contrast: float
    blur: float
    dark_clipped: float
    bright_clipped: float


def inspect_image(data: bytes, limits: DecodeLimits) -> Inspection:
    """Decode and validate ``data``; raise :class:`InvalidImageError` with the reason if it cannot be used."""
    return inspect_decoded(decode_image(data, limits))


def inspect_decoded(decoded: DecodedImage) -> Inspection:
    """The facts of a decoded image. The perceptual hash and the brightness/contrast statistics are computed on a copy
    subsampled to about 64 pixels on its short side (the hash needs 17x16): it keeps ingest close to the cost of
    decoding, and a served request too."""
    gray = reduced_gray(decoded.pixels)
    brightness, contrast = gray_statistics(gray)
    blur, dark, bright = _sharpness_and_clipping(reduced_gray(decoded.pixels, short_side=128))
    return Inspection(
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        channels=decoded.channels,
        mode=decoded.mode,
        bit_depth=decoded.bit_depth,
        n_frames=decoded.n_frames,
        phash=dhash(gray),
        brightness=brightness,
        contrast=contrast,
        blur=blur,
        dark_clipped=dark,
        bright_clipped=bright,
    )


def _sharpness_and_clipping(gray: np.ndarray) -> tuple[float, float, float]:
    """Variance of the 4-neighbour Laplacian of a gray image in [0, 1] (about 128 pixels on its short side, so the
    measure does not depend on the file's resolution), and the shares of pixels at black and at white. In place on
    one array, and small enough (64 KB) to stay off the allocator's page-mapped path: ~25 us."""
    if min(gray.shape) < 3:
        blur = 0.0
    else:
        laplacian = gray[:-2, 1:-1] + gray[2:, 1:-1]
        laplacian += gray[1:-1, :-2]
        laplacian += gray[1:-1, 2:]
        laplacian -= 4.0 * gray[1:-1, 1:-1]
        blur = float(laplacian.var())
    dark = np.count_nonzero(gray <= 0.5 / 255) / gray.size
    bright = np.count_nonzero(gray >= 254.5 / 255) / gray.size
    return blur, float(dark), float(bright)


def quality_measures(inspection: Inspection) -> dict[str, float]:
    """The measures ``ingest.quality`` judges, by name: blur, contrast, dark_clipped, bright_clipped and resolution
    (the short side, pixels)."""
    return {
        "blur": inspection.blur,
        "contrast": inspection.contrast,
        "dark_clipped": inspection.dark_clipped,
        "bright_clipped": inspection.bright_clipped,
        "resolution": float(min(inspection.width, inspection.height)),
    }


def gray_statistics(gray: np.ndarray) -> tuple[float, float]:
    """Brightness (mean) and contrast (standard deviation) of a reduced gray image."""
    return float(gray.mean()), float(gray.std())


def brightness_contrast(pixels: np.ndarray) -> tuple[float, float]:
    """Brightness and contrast of decoded pixels, as ingest records them, without the perceptual hash (a served
    request logs these two and has no use for the hash: 27 us of a 130 us decode)."""
    return gray_statistics(reduced_gray(pixels))


def reduced_gray(pixels: np.ndarray, short_side: int = 64) -> np.ndarray:
    """(h, w) float32 grayscale in [0, 1], subsampled by an integer stride to about ``short_side``.

    A strided view, not an average: it costs a few microseconds, the mean it gives is unbiased, and the hash reduces
    it further to 17x16 anyway.
    """
    step = max(1, min(pixels.shape[:2]) // short_side)
    return to_gray_unit(pixels[::step, ::step])


def judge_quality(inspection: Inspection, rules: QualitySettings) -> tuple[list[str], str | None]:
    """The measures whose ``warn`` rule the image breaches, and why it is refused (the first ``quarantine`` rule it
    breaches: the measure, its value and the bound), else None."""
    warned: list[str] = []
    for name, value in quality_measures(inspection).items():
        rule = getattr(rules, name)
        breach = None
        if rule.min is not None and value < rule.min:
            breach = f"{name} {value:.4g} is below ingest.quality.{name}.min {rule.min:g}"
        elif rule.max is not None and value > rule.max:
            breach = f"{name} {value:.4g} is above ingest.quality.{name}.max {rule.max:g}"
        if breach is None:
            continue
        if rule.action == "quarantine":
            return warned, breach
        warned.append(name)
    return warned, None
