"""Stateless image transforms, each with its shape and dtype contract.

The chain every model sees (:class:`Preprocessor`) is: to grayscale, scale to [0, 1], trim black borders, resize,
normalise. EXIF orientation is applied earlier, when the file is decoded (:func:`conveyor.data.decode.decode_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from conveyor.config import PreprocessSettings

__all__ = [
    "Preprocessor",
    "clahe",
    "foreground_box",
    "normalise_minmax",
    "normalise_percentile",
    "resize",
    "to_gray_unit",
    "trim_borders",
]

# Luma weights, applied elementwise: a BLAS matrix product here spins OpenBLAS threads, which under CPU contention
# made one small product take hundreds of times longer.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray_unit(pixels: np.ndarray) -> np.ndarray:
    """Grayscale in [0, 1].

    Args:
        pixels: (H, W) or (H, W, C) with C >= 3 (extra channels ignored); uint8, uint16 (full 16-bit range) or float
            already in [0, 1].

    Returns:
        (H, W) float32 in [0, 1]. Colour uses ITU-R 601 luma weights.
    """
    if pixels.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif pixels.dtype == np.uint16:
        scale = 1.0 / 65535.0
    else:
        scale = 1.0
    if pixels.ndim == 3:
        if pixels.shape[2] < 3:
            gray = pixels[..., 0].astype(np.float32)
        else:  # elementwise, not a BLAS product: see _LUMA
            rgb = pixels[..., :3].astype(np.float32)
            gray = rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]
    else:
        gray = pixels.astype(np.float32)
    if scale != 1.0:
        gray *= scale
    return gray


def foreground_box(image: np.ndarray, threshold: float = 0.05) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of pixels brighter than ``threshold`` x the maximum.

    Args:
        image: (H, W) float array.
        threshold: share of the maximum that counts as foreground, in [0, 1).

    Returns:
        ``(rows, cols)``; the whole image when nothing is above the threshold.
    """
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) array, got shape {image.shape}")
    mask = image > threshold * float(image.max())
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return slice(None), slice(None)
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def trim_borders(image: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Crop (H, W) to its foreground box (see :func:`foreground_box`); returns a view (h, w), h <= H, w <= W."""
    rows, cols = foreground_box(image, threshold)
    return image[rows, cols]


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize with area averaging when shrinking and bilinear interpolation when growing.

    Args:
        image: (H, W) float32.
        size: (height, width) of the output.

    Returns:
        (height, width) float32.
    """
    height, width = size
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = image.shape[0] >= height and image.shape[1] >= width
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize((width, height), method)
    return np.asarray(out, dtype=np.float32)


def normalise_minmax(image: np.ndarray) -> np.ndarray:
    """Scale (H, W) float to [0, 1] by its own minimum and maximum; a constant image becomes all zeros."""
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def normalise_percentile(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Clip (H, W) float to its ``low``..``high`` percentiles, then scale to [0, 1]; robust to hot pixels."""
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return normalise_minmax(image)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class Preprocessor:
    """The configured chain; call it on decoded pixels.

    ``Preprocessor(settings)(pixels)`` takes (H, W) or (H, W, C) pixels as :func:`to_gray_unit` accepts and returns
    ``settings.size`` float32 in [0, 1]. With ``grayscale=False`` colour images keep 3 channels: (h, w, 3).
    """

    settings: PreprocessSettings

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        s = self.settings
        if s.grayscale or pixels.ndim == 2:
            image = to_gray_unit(pixels)
            if s.trim:
                image = trim_borders(image, s.trim_threshold)
            image = resize(image, s.size)
            return self._normalise(image)
        if s.trim:
            rows, cols = foreground_box(to_gray_unit(pixels), s.trim_threshold)
            pixels = pixels[rows, cols]
        channels = [to_gray_unit(pixels[..., c]) for c in range(3)]
        return np.stack([self._normalise(resize(c, s.size)) for c in channels], axis=-1)

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        if self.settings.normalise == "percentile":
            low, high = self.settings.percentiles
            image = normalise_percentile(image, low, high)
        else:
            image = normalise_minmax(image)
        if self.settings.contrast == "clahe":
            image = clahe(image, self.settings.clahe_clip)
        return image


def clahe(image: np.ndarray, clip: float = 0.01) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image's ``equalize_adapthist``) of an image in
    [0, 1]: local contrast raised, noise amplification bounded by ``clip``."""
    from skimage.exposure import equalize_adapthist

    return np.asarray(equalize_adapthist(image, clip_limit=clip), dtype=np.float32)
