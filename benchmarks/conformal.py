"""Prediction sets on the real MRI sets: per-class coverage of the test split with its 95% interval, the share of
singleton sets and the mean set size at 0.80, 0.90 and 0.95, for the model `conveyor train` picks by CV.

With ``--resplits N`` (default 200), also the guarantee itself: split conformal promises coverage on average over
the draw of the calibration and test images, not on one split of 28 images. The CV-chosen winner (its family, its
parameters, its features) is refitted on N random grouped splits (test 20%, calibration 20% of the rest, whole
patient and near-duplicate groups, the same procedure as `conveyor train`: refit, sigmoid calibration on grouped
out-of-fold scores, Mondrian conformal on the held-out part), and the table gives per class the mean coverage, its
standard deviation and 5th percentile over the splits; then the same with conveyor's test split held fixed, where
only the calibration part is drawn again: how hard that one test split is for the sets.

Usage: python benchmarks/conformal.py [--data ../shared/data/brain_mri_yes_no] [--families logreg svm ...]
       [--extractors stats intensity all] [--resplits 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.versions import cv_groups, dataset_members
from conveyor.features.store import load_matrix
from conveyor.models.conformal import MondrianConformal
from conveyor.models.families import family
from conveyor.training.calibration import OutOfFoldCalibrated, decision_scores
from conveyor.training.train import COVERAGE_LEVELS, TrainResult, train
from conveyor.workspace import open_workspace

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "brain_mri_yes_no")
    parser.add_argument("--families", nargs="+", default=None, help="training.families (default: the default five)")
    parser.add_argument("--extractors", nargs="+", default=None, help="training.extractors (default: every table)")
    parser.add_argument("--resplits", type=int, default=200, help="random grouped re-splits (0: none)")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}")
    training: dict[str, object] = {}
    if args.families:
        training["families"] = args.families
    if args.extractors:
        training["extractors"] = args.extractors
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "ws", training=training)  # type: ignore[arg-type]
        ingest(args.data, settings)
        began = time.perf_counter()
        result = train(settings)
        seconds = time.perf_counter() - began
        _print_split(args.data.name, result, seconds)
        if args.resplits and result.best.extractor != "pixels":
            _print_resplits(settings, result, args.resplits)


def _print_split(name: str, result: TrainResult, seconds: float) -> None:
    report = result.conformal or {}
    print(f"\n{name}: winner {result.best.name} (CV {result.best.cv_score:.3f}), trained in {seconds:.0f} s")
    if not report.get("calibrated"):
        print(report.get("reason"))
        return
    held = ", ".join(f"{c} {n}" for c, n in report["n_calibration"].items())
    print(f"calibration part (held out of the search and the fit): {held}")
    levels = report["levels"]
    classes = list(next(iter(levels.values()))["per_class"])
    header = "".join(f"{c + ' [95%]':>26}" for c in classes)
    print(f"{'target':>8}{header}{'all':>8}{'singletons':>12}{'mean size':>11}")
    for level, found in levels.items():
        rows = [found["per_class"][n] for n in classes]
        cells = "".join(f"{c['coverage']:>10.3f} [{c['low']:.3f}, {c['high']:.3f}]" for c in rows)
        print(f"{level:>8}{cells}{found['coverage']:>8.3f}{found['singleton_share']:>12.1%}{found['mean_size']:>11.2f}")
    per_class = {n: levels[next(iter(levels))]["per_class"][n]["n"] for n in classes}
    print(f"test images per class: {per_class}")
    for level, found in levels.items():
        trivial = [n for n in classes if found["per_class"][n]["always_in_set"]]
        if trivial:
            print(f"at {level}: {trivial} in every set (too few calibration images for a threshold)")


def _refit_sets(
    settings: Settings,
    result: TrainResult,
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    fit: np.ndarray,
    calibrate: np.ndarray,
    seed: int,
) -> tuple[MondrianConformal, OutOfFoldCalibrated]:
    """The winner refitted on ``fit`` as `conveyor train` does, and its prediction sets calibrated on ``calibrate``."""
    best = result.best
    estimator = family(best.family).estimator_and_grid(settings)[0].set_params(**best.params)
    oof = np.zeros((len(fit), len(np.unique(y))))
    folds = StratifiedGroupKFold(settings.training.cv_folds, shuffle=True, random_state=seed)
    for inner, held in folds.split(X[fit], y[fit], groups[fit]):
        fold = clone(estimator).fit(X[fit][inner], y[fit][inner])
        oof[held] = decision_scores(fold, X[fit][held])
    model = OutOfFoldCalibrated(clone(estimator).fit(X[fit], y[fit]), method=settings.training.calibration)
    model.fit(oof, y[fit])
    classes = [str(c) for c in result.classes]
    return MondrianConformal.fit(model.predict_proba(X[calibrate]), y[calibrate], classes), model


def _print_resplits(settings: Settings, result: TrainResult, repeats: int) -> None:
    frame, labels = load_matrix(settings, result.best.extractor, split=None)
    classes = [str(c) for c in result.classes]
    X, y = frame.to_numpy(), np.array([classes.index(label) for label in labels])
    engine = open_workspace(settings)
    groups = cv_groups(engine, list(frame.index), settings.ingest.near_duplicate_bits)
    split_of = {sha: split for sha, _, split in dataset_members(engine, None)}
    fixed_test = np.array([split_of[sha] == "test" for sha in frame.index])
    began = time.perf_counter()
    for title, fixed in (("random grouped splits", False), ("conveyor's test split fixed", True)):
        found = np.zeros((repeats, len(COVERAGE_LEVELS), len(classes)))
        singletons = np.zeros((repeats, len(COVERAGE_LEVELS)))
        for r in range(repeats):
            if fixed:
                rest, test = np.flatnonzero(~fixed_test), np.flatnonzero(fixed_test)
            else:
                outer = StratifiedGroupKFold(5, shuffle=True, random_state=r)
                rest, test = next(outer.split(X, y, groups))
            inner = StratifiedGroupKFold(5, shuffle=True, random_state=10_000 + r)
            fit, calibrate = (rest[part] for part in next(inner.split(X[rest], y[rest], groups[rest])))
            conformal, model = _refit_sets(settings, result, X, y, groups, fit, calibrate, r)
            proba = model.predict_proba(X[test])
            for i, level in enumerate(COVERAGE_LEVELS):
                report = conformal.evaluate(proba, y[test], level)
                found[r, i] = [report["per_class"][c]["coverage"] for c in classes]
                singletons[r, i] = report["singleton_share"]
        print(f"\n{result.best.name} refitted on {repeats} {title}: per-class coverage, mean (sd) [5th percentile]")
        print(f"{'target':>8}" + "".join(f"{c:>26}" for c in classes) + f"{'singletons':>12}")
        for i, level in enumerate(COVERAGE_LEVELS):
            cells = "".join(
                f"{found[:, i, j].mean():>10.3f} ({found[:, i, j].std():.3f}) [{np.quantile(found[:, i, j], 0.05):.3f}]"
                for j in range(len(classes))
            )
            print(f"{level:>8g}{cells}{singletons[:, i].mean():>12.1%}")
    print(f"({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
