"""Model quality on both real brain-MRI sets: every candidate of ``conveyor train``, chosen by CV alone.

For each set beside the checkout (../shared/data/brain_mri_yes_no, ../shared/data/brain_mri_4class_train): ingest it
into a temporary workspace, compute the configured extractors' features (CPU ms per image over both cores' wall time),
run ``conveyor train``, and print one table: per candidate its CV score +- sd on grouped folds (near-duplicates on one
side), its test score with the 95% bootstrap interval, the CV-test gap, and its fit seconds; then the winner's
calibrated test scores (F1 or macro-F1, balanced accuracy, ECE of the served confidence) against the issue's goals.

``--extractors`` compares feature sets (``default``: the configured default; ``all``: the eight extractors), one
table each, in the same run. ``--families`` picks the model families (``cnn`` adds the network: minutes).

Usage: python benchmarks/quality.py [--extractors default,all] [--families ...] [--sets yes_no,4class]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.features.extractors import EXTRACTORS
from conveyor.features.store import compute_features
from conveyor.training.train import TrainResult, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"yes_no": DATA / "brain_mri_yes_no", "4class": DATA / "brain_mri_4class_train"}
GOALS = {"yes_no": "F1 >= 0.90, balanced accuracy >= 0.88, ECE <= 0.05", "4class": "macro-F1 >= 0.95, ECE <= 0.05"}


def run(source: Path, workdir: Path, extractors: list[str] | None, families: list[str] | None) -> tuple[float, Any]:
    """(feature CPU-core ms per image, the train result) for one set and one feature configuration."""
    options: dict[str, Any] = {"home": workdir}
    if extractors is not None:
        options["features"] = {"extractors": extractors}
    if families is not None:
        options["training"] = {"families": families}
    settings = Settings(**options)
    ingest(source, settings)
    start = time.perf_counter()
    summary = compute_features(settings)
    per_image = 1e3 * (time.perf_counter() - start) * (os.cpu_count() or 1) / max(summary.computed, 1)
    return per_image, train(settings)


def report(name: str, label: str, feature_ms: float, result: TrainResult) -> None:
    metric = result.metric
    print(f"\n{name}, extractors {label}: features {feature_ms:.2f} core-ms per image, train {result.seconds:.0f} s")
    print(f"{'candidate':<34}{'stage':<10}{'CV ' + metric:>18}{'test [95% interval]':>28}{'gap':>8}{'fit s':>8}")
    for c in sorted(result.candidates, key=lambda c: -c.cv_score):
        test = gap = "-"
        if c.test is not None:
            interval = c.test.intervals.get(metric)
            value = getattr(c.test, metric)
            test = f"{value:.3f}" + (f" [{interval.low:.3f}, {interval.high:.3f}]" if interval else "")
            gap = f"{c.cv_test_gap(metric):+.3f}"
        cv = f"{c.cv_score:.3f} +- {c.cv_score_std:.3f}"
        print(f"{c.name:<34}{c.stage:<10}{cv:>18}{test:>28}{gap:>8}{c.fit_seconds:>8.1f}")
    cal = result.calibrated
    print(
        f"winner by CV: {result.best.name}; calibrated test F1 {cal.f1:.3f}, balanced accuracy "
        f"{cal.balanced_accuracy:.3f}, ECE {cal.ece:.3f} (a calibrated model shows {cal.ece_chance:.3f} by chance on "
        f"{cal.n} test images; goals: {GOALS[name]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extractors", default="default", help="comma-separated: default, all")
    parser.add_argument("--families", help="comma-separated model families; default: training's default")
    parser.add_argument("--sets", default="yes_no,4class")
    args = parser.parse_args()
    families = args.families.split(",") if args.families else None
    choices = {"default": None, "all": list(EXTRACTORS)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            if not SETS[name].is_dir():
                print(f"{name}: not at {SETS[name]}, skipped")
                continue
            for label in args.extractors.split(","):
                workdir = Path(tmp) / f"{name}-{label}"
                feature_ms, result = run(SETS[name], workdir, choices[label], families)
                report(name, label, feature_ms, result)


if __name__ == "__main__":
    main()
