"""What monitoring compares: the champion, its reference (its training data) and the current data.

Edges only: these functions read the registry, the metadata DB, the feature store and image files, and hand pure
tables to :mod:`conveyor.monitoring.monitor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from conveyor.config import PreprocessSettings, Settings
from conveyor.errors import ConveyorError, InvalidImageError, NotFoundError
from conveyor.features.store import feature_column_names, stored_features
from conveyor.store.db import session_scope
from conveyor.store.models import Image

if TYPE_CHECKING:
    from conveyor.tracking.pyfunc import ModelSpec

__all__ = [
    "IMAGE_STAT_KINDS",
    "Champion",
    "Current",
    "Reference",
    "image_stats_from_db",
    "image_stats_of",
    "load_champion",
    "load_reference",
    "monitored_extractors",
    "read_features",
]

IMAGE_STAT_KINDS: dict[str, str] = {
    "width": "numerical",
    "height": "numerical",
    "aspect": "numerical",
    "brightness": "numerical",
    "contrast": "numerical",
    "bit_depth": "numerical",
    "channels": "numerical",
    "format": "categorical",
    "mode": "categorical",
    "blur": "numerical",
    "dark_clipped": "numerical",
    "bright_clipped": "numerical",
}
"""Image-level statistics compared for drift, and how each is tested. The quality measures (blur, clipped shares)
are unknown for images stored before conveyor measured them: a column the reference lacks is left out."""


@dataclass
class Champion:
    """The model that serves: its registry version, the loaded pyfunc python model, its spec and its calibrated test
    metrics when it was made champion (``test_f1``, ``test_balanced_accuracy``, ...)."""

    version: int
    model: Any
    spec: ModelSpec
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def test_score(self, metric: str) -> float | None:
        """Its test value of ``metric``; None when it was not recorded (a champion set by hand)."""
        value = self.test_metrics.get(f"test_{metric}")
        return None if value is None else float(value)


@dataclass
class Reference:
    """The champion's training data: train split of its dataset version."""

    version: str
    shas: list[str]
    labels: list[str]
    features: pd.DataFrame | None  # indexed by sha256, the monitored feature columns
    image_stats: pd.DataFrame
    proba: np.ndarray | None = None  # the champion's probabilities on it (feature models)


@dataclass
class Current:
    """The data being monitored, one row per input, aligned across every field."""

    kind: str  # "batch" or "log"
    source: str
    names: list[str]
    proba: np.ndarray
    labels: list[str | None]
    features: pd.DataFrame | None = None
    image_stats: pd.DataFrame | None = None
    dataset_version: str | None = None
    model_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Per input, its subgroup values (conveyor.data.subgroups) when it was ingested; None where unknown or not stored.
    subgroups: list[dict[str, str] | None] | None = None

    @property
    def labelled(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label is not None]


def load_champion(settings: Settings) -> Champion:
    """The champion from the registry, with its test metrics from the audit log.

    Raises:
        NotFoundError: no model holds the champion alias.
        ModelIntegrityError: its artifacts changed since registration.
    """
    from conveyor.tracking.registry import CHAMPION, current_version, history
    from conveyor.tracking.setup import configure_mlflow

    configure_mlflow(settings)
    version = current_version(settings, CHAMPION)
    if version is None:
        raise NotFoundError(f"model {settings.model_name!r} has no champion to monitor: run `conveyor train` first")
    from conveyor.tracking.integrity import load_verified

    model = load_verified(settings, version).unwrap_python_model()
    metrics: dict[str, float] = {}
    for record in history(settings, settings.model_name):
        if record.action == f"set_{CHAMPION}" and record.details.get("version") == version:
            metrics = record.details.get("metrics") or metrics
    return Champion(version, model, model.spec, metrics)


def monitored_extractors(settings: Settings, champion: Champion) -> list[tuple[str, dict[str, Any]]]:
    """The feature tables drift and OOD look at: the champion's own extractors; for a model on pixels, the intensity
    features if the workspace computes them (else none: image statistics only)."""
    if champion.spec.input_kind != "image" and champion.spec.extractors:
        return [(name, dict(params)) for name, params in champion.spec.extractors]
    if "intensity" in settings.features.extractors:
        return [("intensity", dict(settings.features.params.get("intensity", {})))]
    return []


def read_features(
    settings: Settings, champion: Champion, extractors: Sequence[tuple[str, dict[str, Any]]], shas: Sequence[str]
) -> tuple[pd.DataFrame, list[str]]:
    """The stored feature rows of ``shas`` from the master tables the champion was trained on (see
    :func:`conveyor.features.store.stored_features`)."""
    own = list(extractors) == [(name, dict(params)) for name, params in champion.spec.extractors]
    region_key = champion.spec.region_key if own else None  # its own tables lie inside its region, if it has one
    return stored_features(settings, PreprocessSettings(**champion.spec.preprocess), extractors, shas, region_key)


def compute_features_of(
    champion: Champion, extractors: Sequence[tuple[str, dict[str, Any]]], blobs: Sequence[bytes]
) -> pd.DataFrame:
    """Features of image files' bytes, computed with the champion's preprocessing and the same pipeline the store
    runs (not stored), inside the champion's region when they are its own features."""
    from conveyor.features.pipeline import FeaturePipeline

    own = list(extractors) == [(name, dict(params)) for name, params in champion.spec.extractors]
    region = champion.model.pipeline.region if own else None
    pipeline = FeaturePipeline(PreprocessSettings(**champion.spec.preprocess), list(extractors), region=region)
    parts = pipeline.transform(pipeline.prepare([pipeline.image(data) for data in blobs]))
    if not parts:
        return pd.DataFrame(index=range(len(blobs)))
    columns = pipeline.columns()
    frames = [
        pd.DataFrame(parts[name], columns=feature_column_names(extractors, name, columns[name]))
        for name, _ in extractors
    ]
    return pd.concat(frames, axis=1)


def image_stats_from_db(engine: Engine, shas: Sequence[str]) -> pd.DataFrame:
    """Image-level statistics of stored images, indexed by sha256 in the order of ``shas``."""
    rows: list[dict[str, Any]] = []
    unique = list(dict.fromkeys(shas))
    with session_scope(engine) as session:
        for start in range(0, len(unique), 5000):
            chunk = unique[start : start + 5000]
            query = select(
                Image.sha256,
                Image.width,
                Image.height,
                Image.brightness,
                Image.contrast,
                Image.bit_depth,
                Image.channels,
                Image.format,
                Image.mode,
                Image.blur,
                Image.dark_clipped,
                Image.bright_clipped,
            ).where(Image.sha256.in_(chunk))
            rows.extend(r._asdict() for r in session.execute(query))
    columns = ["sha256", "width", "height", "brightness", "contrast", "bit_depth", "channels", "format", "mode"]
    frame = pd.DataFrame(rows, columns=[*columns, "blur", "dark_clipped", "bright_clipped"]).set_index("sha256")
    frame = frame.reindex(list(shas))
    frame.insert(2, "aspect", frame["width"] / frame["height"])
    return frame


def image_stats_of(inspections: Sequence[Any]) -> pd.DataFrame:
    """Image-level statistics of :class:`conveyor.data.facts.Inspection` objects (files read, not ingested)."""
    rows = [
        {
            "width": i.width,
            "height": i.height,
            "aspect": i.width / i.height,
            "brightness": i.brightness,
            "contrast": i.contrast,
            "bit_depth": i.bit_depth,
            "channels": i.channels,
            "format": i.format,
            "mode": i.mode,
            "blur": i.blur,
            "dark_clipped": i.dark_clipped,
            "bright_clipped": i.bright_clipped,
        }
        for i in inspections
    ]
    return pd.DataFrame(rows, columns=list(IMAGE_STAT_KINDS))


def load_reference(settings: Settings, engine: Engine, champion: Champion) -> Reference:
    """The champion's training data: the train split of its dataset version, its stored features and statistics.

    Raises:
        NotFoundError: the dataset version is gone, or its features were never computed.
    """
    from conveyor.data.versions import dataset_members

    version = champion.spec.dataset_version
    members = [(sha, label) for sha, label, split in dataset_members(engine, version) if split == "train"]
    if not members:
        raise NotFoundError(f"dataset version {version} (the champion's training data) has no train split")
    shas = [sha for sha, _ in members]
    extractors = monitored_extractors(settings, champion)
    features = None
    proba = None
    if extractors:
        features, missing = read_features(settings, champion, extractors, shas)
        if missing:
            raise NotFoundError(
                f"{len(missing)} of the champion's {len(shas)} training images have no stored features for "
                f"{[n for n, _ in extractors]}: run `conveyor features`"
            )
        if champion.spec.input_kind == "features":
            proba = champion.model.predict_features(features.to_numpy())
    return Reference(version, shas, [label for _, label in members], features, image_stats_from_db(engine, shas), proba)


def read_image_file(path: Path, limits: Any) -> tuple[Any, bytes]:
    """Inspect one file: its facts (as ingest records them) and its bytes.

    Raises:
        InvalidImageError: not a usable image.
    """
    from conveyor.data.facts import inspect_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImageError("unreadable", f"{path}: {exc}") from exc
    return inspect_image(data, limits), data


def predict(champion: Champion, features: pd.DataFrame | None, blobs: Sequence[bytes] | None) -> np.ndarray:
    """The champion's probabilities: from stored features for a feature model (the same numbers its pipeline
    computes), from the image files' bytes otherwise."""
    if champion.spec.input_kind == "features":
        if features is None:
            raise ConveyorError("a feature model needs the features of the current images")
        return champion.model.predict_features(features.to_numpy())
    return champion.model.predict_images([champion.model.image(data) for data in blobs or []])
