"""What each extractor earns for its cost: CPU ms per image against grouped-CV score, on both real MRI sets.

For each set beside the checkout (../shared/data/brain_mri_yes_no, ../shared/data/brain_mri_4class_train), in one run:
ingest it, take conveyor's own training split and its CV groups (near-duplicates kept on one side), compute every
image's diagrams once, then per extractor and per combination of extractors: CPU ms per image in this one process
(against persistence alone), and the mean 5-fold grouped-CV F1 (macro for several classes) of a standardised RBF SVM
(best of C = 1, 10) and of a logistic regression. ``--min-persistence`` also drops the bars at or below each threshold
before vectorising (gudhi's ``min_persistence``), to see whether noise bars can be cut for speed.

This table chose ``features.extractors``' default (stats and intensity).

Usage: python benchmarks/extractor_value.py [--limit 1500] [--min-persistence 0,0.01,0.02]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.versions import raw_images
from conveyor.features.extractors import EXTRACTORS, make_extractor
from conveyor.features.persistence import DiagramBundle, diagram_bundle
from conveyor.features.pipeline import FeaturePipeline
from conveyor.training.search import cv_splits
from conveyor.training.train import _dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("brain_mri_yes_no", "brain_mri_4class_train")
COMBINATIONS = (
    ("stats", "intensity"),
    ("stats", "landscape", "betti", "entropy", "intensity"),
    tuple(EXTRACTORS),
)


def _cpu(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.process_time()
    out = run()
    return out, time.process_time() - start


def _training_images(source: Path, workdir: Path, limit: int) -> tuple[list[bytes], np.ndarray, np.ndarray | None]:
    """Conveyor's training split of ``source``, at most ``limit`` images (a fixed draw): bytes, labels, CV groups."""
    settings = Settings(home=workdir / source.name)
    ingest(source, settings)
    data = _dataset(settings, None)
    shas = np.array([sha for sha, _, split in data.members if split == "train"])
    keep = np.arange(len(shas))
    if len(keep) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(keep), limit, replace=False))
    groups = None if data.groups is None else data.groups[keep]
    return raw_images(settings, list(shas[keep])).read_all(list(shas[keep])), data.y_train[keep], groups


def _cv(X: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Mean grouped-CV F1 of the SVM (best C) and of the logistic regression."""
    average = "macro" if len(np.unique(y)) > 2 else "binary"

    def score(make: Callable[[], Any]) -> float:
        scores = [f1_score(y[va], make().fit(X[tr], y[tr]).predict(X[va]), average=average) for tr, va in folds]
        return float(np.mean(scores))

    svm = max(score(lambda c=c: make_pipeline(StandardScaler(), SVC(C=c))) for c in (1.0, 10.0))
    logreg = score(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)))
    return svm, logreg


def _without_noise(bundles: list[DiagramBundle], threshold: float) -> list[DiagramBundle]:
    if threshold <= 0:
        return bundles
    return [{key: d[(d[:, 1] - d[:, 0]) > threshold] for key, d in bundle.items()} for bundle in bundles]


def measure(name: str, blobs: list[bytes], y: np.ndarray, groups: np.ndarray | None, thresholds: list[float]) -> None:
    pipeline = FeaturePipeline(Settings().preprocess, [])
    images, seconds = _cpu(lambda: [pipeline.image(blob) for blob in blobs])
    bundles, more = _cpu(lambda: [diagram_bundle(image) for image in images])
    persistence = 1e3 * (seconds + more) / len(blobs)
    folds = cv_splits(y, np.arange(len(y)), 5, 0, groups)
    print(f"\n{name}: {len(blobs)} training images, {len(np.unique(y))} classes, grouped 5-fold CV")
    print(f"persistence alone (decode, preprocess, both filtrations): {persistence:.2f} CPU ms per image")
    print(f"{'extractors':<58}{'min pers.':>10}{'bars':>7}{'ms/image':>10}{'x pers.':>8}{'SVM F1':>8}{'logreg F1':>10}")
    intensity = make_extractor("intensity").fit(images[:1])
    X_intensity, seconds = _cpu(lambda: intensity.transform(images))
    for threshold in thresholds:
        kept = _without_noise(bundles, threshold)
        bars = np.mean([sum(len(d) for d in bundle.values()) for bundle in kept])
        tables, cost = {"intensity": X_intensity}, {"intensity": 1e3 * seconds / len(blobs)}
        for extractor in EXTRACTORS:
            if extractor != "intensity":
                fitted = make_extractor(extractor).fit([])
                tables[extractor], spent = _cpu(lambda f=fitted, x=kept: f.transform(x))
                cost[extractor] = 1e3 * spent / len(blobs)
        for combination in [(extractor,) for extractor in EXTRACTORS] + list(COMBINATIONS):
            ms = sum(cost[e] for e in combination)
            svm, logreg = _cv(np.hstack([tables[e] for e in combination]), y, folds)
            label = "+".join(combination) if len(combination) < len(EXTRACTORS) else f"all {len(EXTRACTORS)}"
            ratio = ms / persistence
            print(f"{label:<58}{threshold:>10.3f}{bars:>7.0f}{ms:>10.3f}{ratio:>8.2f}{svm:>8.3f}{logreg:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1500, help="at most this many training images per set")
    parser.add_argument("--min-persistence", default="0,0.01,0.02", help="bar thresholds to try, comma-separated")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.min_persistence.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in SETS:
            if not (DATA / name).is_dir():
                print(f"{name}: not at {DATA / name}, skipped")
                continue
            blobs, y, groups = _training_images(DATA / name, Path(tmp), args.limit)
            measure(name, blobs, y, groups, thresholds)


if __name__ == "__main__":
    main()
