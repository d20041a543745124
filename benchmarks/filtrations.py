"""Persistence of other filtrations than the image's intensity, against the default vector (issue 16's feature ideas).

conveyor's topological features come from the cubical persistence of the preprocessed intensity (sublevel and
superlevel). This measures four other filtrations of the same image, each summarised by the same 38-statistic
vectoriser (``stats``) on its sublevel and superlevel diagrams, and added to the default vector (stats + intensity):

* ``gradient``: the Sobel gradient magnitude (edges: a tumour's rim, the skull);
* ``distance``: the Euclidean distance transform of the foreground (pixels above Otsu's threshold), signed (negative
  outside), so thick and thin structures and holes show as long bars;
* ``radial``: the distance from the foreground's centre of mass, foreground only (background at the maximum): how
  the structure is arranged around the brain's centre;
* ``half``: the intensity at half the resolution (an image pyramid's second level: coarser, fewer noise bars).

Each filtration image is rescaled to [0, 1]. For each real set beside the checkout (conveyor's own training split,
``--limit`` images at most, a fixed draw; near-duplicate groups kept whole by the folds): CPU ms per image of each
added filtration (filtration, persistence and statistics), against the default vector's cost, and the mean grouped
5-fold CV F1 (macro for several classes) of a standardised RBF SVM (of C = 1, 10 the better by CV), a logistic
regression and histogram gradient boosting, with each one's test F1 (fitted on the training split drawn, scored on the
whole test split), for the default vector alone, with each filtration added, and with all four.

Usage: python benchmarks/filtrations.py [--limit 1500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.versions import raw_images
from conveyor.features.extractors import make_extractor
from conveyor.features.persistence import diagram_bundle
from conveyor.features.pipeline import FeaturePipeline
from conveyor.training.search import cv_splits
from conveyor.training.train import _dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("brain_mri_yes_no", "brain_mri_4class_train")


def _unit(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    return np.zeros_like(image) if high <= low else (image - low) / (high - low)


def _foreground(image: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return image > threshold_otsu(image) if image.max() > image.min() else np.zeros(image.shape, dtype=bool)


def gradient(image: np.ndarray) -> np.ndarray:
    return _unit(np.hypot(ndimage.sobel(image, axis=0), ndimage.sobel(image, axis=1)))


def distance(image: np.ndarray) -> np.ndarray:
    inside = _foreground(image)
    return _unit(ndimage.distance_transform_edt(inside) - ndimage.distance_transform_edt(~inside))


def radial(image: np.ndarray) -> np.ndarray:
    inside = _foreground(image)
    if not inside.any():
        return np.ones_like(image)
    cy, cx = ndimage.center_of_mass(inside)
    yy, xx = np.indices(image.shape)
    r = np.hypot(yy - cy, xx - cx)
    return _unit(np.where(inside, r, r.max()))


def half(image: np.ndarray) -> np.ndarray:
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


FILTRATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gradient": gradient,
    "distance": distance,
    "radial": radial,
    "half": half,
}


def _cpu(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.process_time()
    out = run()
    return out, time.process_time() - start


def _split_images(source: Path, workdir: Path, limit: int) -> tuple[Any, ...]:
    """Conveyor's training split of ``source``, at most ``limit`` images (a fixed draw): bytes, labels, CV groups;
    then its test split: bytes, labels."""
    settings = Settings(home=workdir / source.name)
    ingest(source, settings)
    data = _dataset(settings, None)
    shas = np.array([sha for sha, _, split in data.members if split == "train"])
    keep = np.arange(len(shas))
    if len(keep) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(keep), limit, replace=False))
    groups = None if data.groups is None else data.groups[keep]
    test = [sha for sha, _, split in data.members if split == "test"]
    y_test = np.array([data.classes.index(label) for label in data.test_labels])
    store = raw_images(settings, list(shas[keep]) + test)
    return store.read_all(list(shas[keep])), data.y_train[keep], groups, store.read_all(test), y_test


MODELS: dict[str, Callable[[], Any]] = {
    "SVM C=1": lambda: make_pipeline(StandardScaler(), SVC(C=1.0)),
    "SVM C=10": lambda: make_pipeline(StandardScaler(), SVC(C=10.0)),
    "logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
    "boosted trees": lambda: HistGradientBoostingClassifier(random_state=0),
}


def _scores(
    X: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], X_test: np.ndarray, y_test: np.ndarray
) -> list[tuple[float, float]]:
    """(mean grouped-CV F1, test F1 fitted on the whole training split) of the SVM (the C with the better CV), the
    logistic regression and boosted trees."""
    average = "macro" if len(np.unique(y)) > 2 else "binary"

    def score(make: Callable[[], Any]) -> tuple[float, float]:
        cv = [f1_score(y[va], make().fit(X[tr], y[tr]).predict(X[va]), average=average) for tr, va in folds]
        test = f1_score(y_test, make().fit(X, y).predict(X_test), average=average)
        return float(np.mean(cv)), float(test)

    found = {name: score(make) for name, make in MODELS.items()}
    svm = max(found["SVM C=1"], found["SVM C=10"], key=lambda pair: pair[0])
    return [svm, found["logreg"], found["boosted trees"]]


def measure(
    name: str, blobs: list[bytes], y: np.ndarray, groups: np.ndarray | None, test_blobs: list[bytes], y_test: np.ndarray
) -> None:
    pipeline = FeaturePipeline(Settings().preprocess, [])
    images = [pipeline.image(blob) for blob in blobs]
    test_images = [pipeline.image(blob) for blob in test_blobs]
    stats = make_extractor("stats").fit([])
    intensity = make_extractor("intensity").fit(images[:1])
    base_stats, spent_stats = _cpu(lambda: stats.transform([diagram_bundle(image) for image in images]))
    base_intensity, spent_intensity = _cpu(lambda: intensity.transform(images))
    default_ms = 1e3 * (spent_stats + spent_intensity) / len(images)
    tables, test_tables, cost = {}, {}, {}
    for label, filtration in FILTRATIONS.items():
        tables[label], spent = _cpu(
            lambda f=filtration: stats.transform([diagram_bundle(f(image)) for image in images])  # type: ignore[misc]
        )
        test_tables[label] = stats.transform([diagram_bundle(filtration(image)) for image in test_images])
        cost[label] = 1e3 * spent / len(images)
    folds = cv_splits(y, np.arange(len(y)), 5, 0, groups)
    base = np.hstack([base_stats, base_intensity])
    test_base = np.hstack([stats.transform([diagram_bundle(i) for i in test_images]), intensity.transform(test_images)])
    metric = "macro-F1" if len(np.unique(y)) > 2 else "F1"
    print(f"\n{name}: {len(images)} training images, {len(y_test)} test, {len(np.unique(y))} classes; {metric}")
    print(f"default vector (stats + intensity, persistence included): {default_ms:.2f} CPU ms per image")
    print("| vector | added ms/image | x default | SVM CV / test | logreg CV / test | boosted trees CV / test |")
    print("|---|---:|---:|---|---|---|")
    rows = [("default", base, test_base, 0.0)]
    for label in FILTRATIONS:
        rows.append((f"default + {label}", np.hstack([base, tables[label]]),
                     np.hstack([test_base, test_tables[label]]), cost[label]))  # fmt: skip
    rows.append(("default + all four", np.hstack([base, *tables.values()]),
                 np.hstack([test_base, *test_tables.values()]), sum(cost.values())))  # fmt: skip
    for label, X, X_test, ms in rows:
        cells = " | ".join(f"{cv:.3f} / {test:.3f}" for cv, test in _scores(X, y, folds, X_test, y_test))
        print(f"| {label} | {ms:.2f} | {(default_ms + ms) / default_ms:.2f}x | {cells} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1500, help="at most this many training images per set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in SETS:
            if not (DATA / name).is_dir():
                print(f"{name}: not at {DATA / name}, skipped")
                continue
            measure(name, *_split_images(DATA / name, Path(tmp), args.limit))


if __name__ == "__main__":
    main()
