"""From image bytes to feature vectors: the one code path that the feature store and the served model share.

:class:`FeaturePipeline` decodes, preprocesses, takes persistence diagrams and applies each configured extractor,
exactly as the master tables were computed, so a model trained on the tables sees the same numbers in serving.
With a :class:`Region` (``features.roi: segmentation``) the pixels outside the region are set to black first, so the
preprocessing's trim crops to the region and every feature describes what lies inside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from conveyor.config import PreprocessSettings
from conveyor.data.decode import DecodeLimits, decode_image
from conveyor.features.extractors import check_bundles, make_extractor
from conveyor.features.persistence import DiagramBundle, diagram_bundle
from conveyor.preprocess.transforms import Preprocessor, to_gray_unit

__all__ = ["FeaturePipeline", "Prepared", "Region", "inside"]


class Region(Protocol):
    """Where in an image the features are computed: decoded pixels in, a boolean (H, W) mask of them out.

    ``key`` names what draws the region (a segmentation model's weights): the feature store keeps one set of tables
    per key, so features of two regions never mix.
    """

    key: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


def inside(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``pixels`` with everything outside ``mask`` (H, W) set to zero (every channel of a colour image).

    Raises:
        ValueError: the mask's shape is not the image's.
    """
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"a region mask of shape {mask.shape} for an image of shape {pixels.shape[:2]}")
    keep = mask.astype(bool)
    return np.where(keep[..., None] if pixels.ndim == 3 else keep, pixels, np.zeros((), dtype=pixels.dtype))


@dataclass
class Prepared:
    """Preprocessed images and their diagram bundles, in input order."""

    images: list[np.ndarray] = field(default_factory=list)
    bundles: list[DiagramBundle] = field(default_factory=list)


@dataclass
class FeaturePipeline:
    """Preprocessing and a list of fixed-grid extractors, given as ``(name, params)``.

    Args:
        preprocess: the preprocessing settings the tables (and the model) were built with.
        extractors: ``[(name, params), ...]`` in column order.
        limits: what a decoded file must satisfy (serving passes the ingest limits; the store trusts its raw files).
        region: where the features are computed (default: the whole image).
    """

    preprocess: PreprocessSettings
    extractors: Sequence[tuple[str, Mapping[str, Any]]]
    limits: DecodeLimits = field(default_factory=lambda: DecodeLimits(min_side=1, max_pixels=1 << 62))
    region: Region | None = None

    def __post_init__(self) -> None:
        self._preprocessor = Preprocessor(self.preprocess)
        self._fitted: dict[str, Any] = {}

    def image(self, data: bytes, *, colour: bool = False) -> np.ndarray:
        """Decode and preprocess one file (see :meth:`preprocessed`).

        Raises:
            InvalidImageError: the bytes are not a usable image.
        """
        return self.preprocessed(decode_image(data, self.limits).pixels, colour=colour)

    def preprocessed(self, pixels: np.ndarray, *, colour: bool = False) -> np.ndarray:
        """Preprocess decoded pixels: (H, W) float32 in [0, 1], colour reduced to luma (what topology reads).

        With ``colour`` (a network's input) and settings that keep colour, (H, W, 3) instead; a grayscale file then
        repeats its one channel, so every image of a dataset has the same shape. With a region, only what lies inside
        it.
        """
        if self.region is not None:
            pixels = inside(pixels, self.region(pixels))
        image = self._preprocessor(pixels).astype(np.float32, copy=False)
        if not colour:
            return to_gray_unit(image) if image.ndim == 3 else image
        if not self.preprocess.grayscale and image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        return image

    def prepare(self, images: Sequence[np.ndarray], cached: Sequence[DiagramBundle | None] | None = None) -> Prepared:
        """Diagram bundles of preprocessed images (taking ``cached[i]`` when given); none when no extractor reads
        diagrams (an intensity-only model skips persistence altogether)."""
        if not self._needs_diagrams():
            return Prepared(list(images), [])
        bundles = [
            (cached[i] if cached is not None and cached[i] is not None else diagram_bundle(image))
            for i, image in enumerate(images)
        ]
        return Prepared(list(images), bundles)  # type: ignore[arg-type]

    def transform(self, prepared: Prepared) -> dict[str, np.ndarray]:
        """Each extractor's features, ``{name: (n, n_features)}``; empty input gives an empty dict."""
        if not prepared.images:
            return {}
        out: dict[str, np.ndarray] = {}
        checked: list[DiagramBundle] | None = None  # validated once, read by every topological extractor
        for name, extractor in self._extractors(prepared).items():
            if extractor.input_kind == "image":
                out[name] = np.asarray(extractor.transform(prepared.images), dtype=np.float64)
                continue
            if checked is None:
                checked = check_bundles(prepared.bundles)
            out[name] = extractor._transform_checked(checked)
        return out

    def columns(self) -> dict[str, list[str]]:
        """Each extractor's column names (after the first :meth:`transform`)."""
        return {name: [str(c) for c in e.get_feature_names_out()] for name, e in self._fitted.items()}

    def vectors(self, prepared: Prepared) -> np.ndarray:
        """All extractors' features side by side, in the configured order: (n, total features)."""
        parts = self.transform(prepared)
        return np.hstack([parts[name] for name, _ in self.extractors]) if parts else np.empty((0, 0))

    def _needs_diagrams(self) -> bool:
        from conveyor.features.extractors import EXTRACTORS

        return any(EXTRACTORS[name].input_kind == "bundle" for name, _ in self.extractors)

    def _extractors(self, prepared: Prepared) -> dict[str, Any]:
        # Fixed grids: fit learns nothing from the data, so one sample is enough (and is done once).
        if not self._fitted:
            for name, params in self.extractors:
                extractor = make_extractor(name, **dict(params))
                if getattr(extractor, "fit_grids", False):
                    raise ValueError(f"extractor {name!r}: fit_grids=True has no place in a fixed feature pipeline")
                sample: Any = prepared.images[:1] if extractor.input_kind == "image" else prepared.bundles[:1]
                self._fitted[name] = extractor.fit(sample)
        return self._fitted
