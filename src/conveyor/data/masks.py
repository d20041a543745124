"""Segmentation masks: read, checked against their image and the declared classes, and normalised to class indices.

A mask is a single-channel image (PNG, TIFF, BMP; gray RGB is accepted) the size of its image, whose pixel value i
means class i of ``ingest.masks.classes``; with two classes a 0/255 mask (the common export) reads as 0/1. It is
stored as an 8-bit PNG of class indices, named by the sha256 of that PNG, so the same mask is stored once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from conveyor.errors import InvalidImageError

__all__ = ["CheckedMask", "check_mask", "read_mask"]


@dataclass(frozen=True)
class CheckedMask:
    """A valid mask: its class indices (H, W) uint8, the PNG that stores them, and each class's area in pixels."""

    indices: np.ndarray
    png: bytes
    areas: dict[str, int]


def read_mask(png: bytes) -> np.ndarray:
    """The class indices (H, W) uint8 of a stored mask."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image, dtype=np.uint8)


def check_mask(data: bytes, width: int, height: int, classes: list[str]) -> CheckedMask:
    """The mask of a ``width`` x ``height`` image, checked and normalised.

    Raises:
        InvalidImageError: ``bad_mask``, saying why: unreadable, colour, another size, or values that are no class.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (width, height):  # from the header, before a byte of pixels is decoded (a bomb)
                raise InvalidImageError(
                    "bad_mask", f"the mask is {image.width}x{image.height}, its image {width}x{height}"
                )
            image.load()
            values = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError("bad_mask", f"the mask cannot be read as an image: {exc}") from exc
    if values.ndim == 3:
        if not all(np.array_equal(values[..., 0], values[..., c]) for c in range(1, min(3, values.shape[2]))):
            raise InvalidImageError("bad_mask", "the mask is in colour; it must hold one class index per pixel")
        values = values[..., 0]
    if values.shape != (height, width):
        raise InvalidImageError(
            "bad_mask", f"the mask is {values.shape[1]}x{values.shape[0]}, its image {width}x{height}"
        )
    found = np.unique(values)
    if len(classes) == 2 and set(found.tolist()) <= {0, 255}:
        values = (values == 255).astype(np.uint8)
        found = np.unique(values)
    outside = [int(v) for v in found if v < 0 or v >= len(classes)]
    if outside:
        shown = ", ".join(str(v) for v in outside[:5]) + (" ..." if len(outside) > 5 else "")
        raise InvalidImageError(
            "bad_mask", f"mask values {shown} are outside the classes 0..{len(classes) - 1} ({', '.join(classes)})"
        )
    indices = values.astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(indices).save(buffer, format="PNG", compress_level=6)
    counts = np.bincount(indices.ravel(), minlength=len(classes))
    return CheckedMask(indices, buffer.getvalue(), {name: int(counts[i]) for i, name in enumerate(classes)})
