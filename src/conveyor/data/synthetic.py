"""Deterministic MRI-like demo images, so conveyor runs end to end with nothing to download.

Each image is an axial "slice": a dark background margin, a bright skull ring, textured brain tissue with darker
ventricles, and, for the ``tumour`` class, a bright lesion. Variations model what changes in a clinic:

* ``drift="none"``: the training distribution;
* ``drift="scanner"``: a different scanner: brighter, lower contrast, another resolution, more noise;
* ``drift="lesion"``: an unseen lesion type: dark, ring-enhancing lesions that the bright-lesion model never saw.

The same ``seed`` always gives the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = ["CLASSES", "Drift", "SyntheticSpec", "generate_dataset", "render_slice", "render_slice_and_mask"]

CLASSES = ("no_tumour", "tumour")
Drift = Literal["none", "scanner", "lesion"]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``n_per_class`` images of each class, ``size`` pixels square, as ``fmt`` files."""

    n_per_class: int = 60
    size: int = 160
    seed: int = 0
    drift: Drift = "none"
    fmt: Literal["png", "jpeg"] = "png"
    masks: bool = False  # also write each slice's lesion mask: <class>/images/<name> beside <class>/masks/<name>.png


def render_slice(rng: np.random.Generator, size: int, tumour: bool, drift: Drift = "none") -> np.ndarray:
    """One (size, size) uint8 slice drawn from ``rng``."""
    return render_slice_and_mask(rng, size, tumour, drift)[0]


def render_slice_and_mask(
    rng: np.random.Generator, size: int, tumour: bool, drift: Drift = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size) uint8 slice drawn from ``rng`` and its lesion mask (bool: inside the lesion's radius; all
    False without a tumour): the exact ground truth of a segmentation."""
    lesion = np.zeros((size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = 0.5 + rng.normal(0, 0.03, 2)
    ry, rx = rng.uniform(0.34, 0.42), rng.uniform(0.27, 0.35)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), sigma=size / 40)
    texture /= np.abs(texture).max() + 1e-9
    brain = (r < 0.9) * (0.45 + 0.12 * texture)
    skull = np.exp(-(((r - 0.95) / 0.035) ** 2)) * 0.65  # dimmer than an enhancing lesion, as in T1+contrast
    # Ventricles: two dark lobes near the centre.
    for side in (-1, 1):
        vr = np.sqrt(((yy - cy) / 0.09) ** 2 + ((xx - cx - side * 0.05) / 0.035) ** 2)
        brain = brain * np.where(vr < 1, 0.35, 1.0)
    image = brain + skull
    if tumour:
        # A lesion inside the brain, away from the skull.
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.55)
        ly, lx = cy + dist * ry * np.sin(angle), cx + dist * rx * np.cos(angle)
        radius = rng.uniform(0.04, 0.09)
        d = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2) / radius
        lesion = d < 1
        if drift == "lesion":  # dark necrotic core with a thin enhancing rim
            image = image * np.where(d < 1, 0.25, 1.0) + 0.35 * np.exp(-(((d - 1.0) / 0.15) ** 2))
        else:  # a bright, solid lesion
            image = image + rng.uniform(0.4, 0.55) * np.exp(-(d**2) * 1.5)
    noise = 0.02
    if drift == "scanner":
        image = 0.25 + 0.7 * image
        noise = 0.05
    image = image + rng.normal(0, noise, image.shape) * (r < 1.05)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), lesion


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    else:
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def generate_dataset(root: Path, spec: SyntheticSpec = SyntheticSpec(), prefix: str = "case") -> list[Path]:
    """Write ``root/<class>/<prefix>_<i>.<ext>`` for both classes and return the paths, in order.

    Scanner drift also changes the resolution (``size * 3 // 2``), as a new scanner would.
    """
    rng = np.random.default_rng(spec.seed)
    size = spec.size * 3 // 2 if spec.drift == "scanner" else spec.size
    ext = "jpg" if spec.fmt == "jpeg" else "png"
    paths: list[Path] = []
    for index in range(spec.n_per_class):
        for label in CLASSES:
            pixels, lesion = render_slice_and_mask(rng, size, tumour=label == "tumour", drift=spec.drift)
            name = f"{prefix}_{spec.seed}_{index:04d}"
            folder = root / label / "images" if spec.masks else root / label
            path = folder / f"{name}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encode(pixels, spec.fmt))
            paths.append(path)
            if spec.masks:
                mask = root / label / "masks" / f"{name}.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                mask.write_bytes(_encode(lesion.astype(np.uint8) * 255, "png"))
    return paths
