"""Shared data for the feature tests: the tdavec reference fixture and ``data``, a set of small data makers.

The makers are reached through the ``data`` fixture rather than imported, so the tests work under any pytest import
mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conveyor.features.extractors import IntensityExtractor, _BundleExtractor
from conveyor.features.intensity import IntensityFeatures
from conveyor.features.persistence import DiagramBundle, diagram_bundle

REFERENCE_PATH = Path(__file__).parents[1] / "fixtures" / "tdavec_reference.json"


@pytest.fixture(scope="session")
def tdavec_reference() -> dict[str, Any]:
    """tests/fixtures/tdavec_reference.json: diagrams, parameters and tdavec 0.1.5's outputs."""
    reference: dict[str, Any] = json.loads(REFERENCE_PATH.read_text())
    return reference


def blob_image(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A float32 (size, size) image in [0, 1]: a few Gaussian blobs plus a little noise, min-max normalised."""
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size))
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(size / 10, size / 4)
        image += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    image += rng.normal(0.0, 0.02, image.shape)
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32)


def blob_images(n: int, seed: int = 0, size: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [blob_image(rng, size) for _ in range(n)]


def random_diagram(rng: np.random.Generator, n: int) -> np.ndarray:
    """n bars with births in [0, 0.8) and deaths <= 1."""
    births = rng.uniform(0.0, 0.8, n)
    deaths = births + rng.uniform(0.0, 0.2, n)
    return np.column_stack([births, deaths])


def random_diagrams(n_samples: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_diagram(rng, int(rng.integers(0, 12))) for _ in range(n_samples)]


def bundles_of(images: list[np.ndarray]) -> list[DiagramBundle]:
    return [diagram_bundle(image) for image in images]


def sample_input(estimator: object, n_samples: int = 6, seed: int = 0) -> list[Any]:
    """Valid X for any transformer of conveyor.features: diagrams, bundles or images."""
    if isinstance(estimator, (IntensityFeatures, IntensityExtractor)):
        return blob_images(n_samples, seed)
    if isinstance(estimator, _BundleExtractor):
        return bundles_of(blob_images(n_samples, seed))
    return random_diagrams(n_samples, seed)


class FeatureData:
    """The data makers above, as one object for the ``data`` fixture."""

    blob_image = staticmethod(blob_image)
    blob_images = staticmethod(blob_images)
    random_diagram = staticmethod(random_diagram)
    random_diagrams = staticmethod(random_diagrams)
    bundles_of = staticmethod(bundles_of)
    sample_input = staticmethod(sample_input)


@pytest.fixture
def data() -> type[FeatureData]:
    """Small-data makers: ``data.blob_images(n)``, ``data.random_diagrams(n)``, ``data.sample_input(estimator)``..."""
    return FeatureData
