"""Features: persistence diagrams of preprocessed images, their vectorisations, and the named extractors.

Names are imported on first use (PEP 562): importing this package, or only :mod:`conveyor.features.persistence`,
loads neither scikit-learn, scipy nor gudhi, so commands that do not compute features start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.features.extractors import (
        EXTRACTORS,
        PART_PREFIXES,
        BettiExtractor,
        BlockExtractor,
        EntropyExtractor,
        FDAExtractor,
        ImageExtractor,
        IntensityExtractor,
        LandscapeExtractor,
        StatsExtractor,
        check_bundles,
        make_extractor,
    )
    from conveyor.features.intensity import IntensityFeatures, check_images
    from conveyor.features.persistence import (
        BUNDLE_KEYS,
        DIAGRAM_VERSION,
        FILTRATIONS,
        HOMOLOGY_DIMENSIONS,
        DiagramBundle,
        Filtration,
        bundle_from_arrays,
        bundle_to_arrays,
        diagram_bundle,
        diagram_bundles,
        persistence_diagram,
        persistence_diagrams,
    )
    from conveyor.features.vectorizers import (
        STATS_NAMES,
        BettiCurve,
        FunctionalDataAnalysis,
        PersistenceBlock,
        PersistenceEntropy,
        PersistenceImage,
        PersistenceLandscape,
        SummaryStatistics,
        check_diagram,
        check_diagrams,
    )

_SUBMODULE_NAMES: dict[str, tuple[str, ...]] = {
    "extractors": (
        "EXTRACTORS", "PART_PREFIXES", "BettiExtractor", "BlockExtractor", "EntropyExtractor", "FDAExtractor",
        "ImageExtractor", "IntensityExtractor", "LandscapeExtractor", "StatsExtractor", "check_bundles",
        "make_extractor",
    ),
    "intensity": ("IntensityFeatures", "check_images"),
    "persistence": (
        "BUNDLE_KEYS", "DIAGRAM_VERSION", "FILTRATIONS", "HOMOLOGY_DIMENSIONS", "DiagramBundle", "Filtration",
        "bundle_from_arrays", "bundle_to_arrays", "diagram_bundle", "diagram_bundles", "persistence_diagram",
        "persistence_diagrams",
    ),
    "vectorizers": (
        "STATS_NAMES", "BettiCurve", "FunctionalDataAnalysis", "PersistenceBlock", "PersistenceEntropy",
        "PersistenceImage", "PersistenceLandscape", "SummaryStatistics", "check_diagram", "check_diagrams",
    ),
}  # fmt: skip
_EXPORTS = {name: module for module, names in _SUBMODULE_NAMES.items() for name in names}

__all__ = [
    "BUNDLE_KEYS",
    "DIAGRAM_VERSION",
    "EXTRACTORS",
    "FILTRATIONS",
    "HOMOLOGY_DIMENSIONS",
    "PART_PREFIXES",
    "STATS_NAMES",
    "BettiCurve",
    "BettiExtractor",
    "BlockExtractor",
    "DiagramBundle",
    "EntropyExtractor",
    "FDAExtractor",
    "Filtration",
    "FunctionalDataAnalysis",
    "ImageExtractor",
    "IntensityExtractor",
    "IntensityFeatures",
    "LandscapeExtractor",
    "PersistenceBlock",
    "PersistenceEntropy",
    "PersistenceImage",
    "PersistenceLandscape",
    "StatsExtractor",
    "SummaryStatistics",
    "bundle_from_arrays",
    "bundle_to_arrays",
    "check_bundles",
    "check_diagram",
    "check_diagrams",
    "check_images",
    "diagram_bundle",
    "diagram_bundles",
    "make_extractor",
    "persistence_diagram",
    "persistence_diagrams",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
