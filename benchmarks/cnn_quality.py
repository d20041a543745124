"""CNN quality on the real brain-MRI sets: the old recipe against the new one, one table per set.

For each set beside the checkout (``../shared/data/brain_mri_4class_train``, ``../shared/data/brain_mri_yes_no``;
a set that is absent is skipped): ingest it once into a temporary workspace (conveyor's own split: 20% of each class
to test, near-duplicates on one side), then, in a fresh copy of that workspace per recipe, ``conveyor train`` with the
``cnn`` family alone. The recipes (``training.cnn``):

* ``old``: the network and search before issue 16: the plain ``small`` ConvNet, MONAI's per-image augmentation, a
  constant learning rate, no test-time augmentation, one network, the grid {learning_rate: [1e-3, 3e-3], width: [8,
  16]} scored on a grouped holdout of the training split and the best refitted on all of it, patience 5, 900 s for the
  search. (One difference from the code of then: the network's own early-stopping fold now keeps near-duplicate groups
  whole.)
* ``new``: the defaults: ``resnet_small`` at width 16, augmentation on the batch tensor, a warm-up then cosine
  learning rate, test-time augmentation, one grid point {learning_rate: 3e-3, width: 16} whose early-stopped model is
  final, patience 6, 1800 s.
* ``refit``: ``new`` scored on a grouped holdout, then refitted on the whole training split (``training.cnn.refit``).
* ``30_epochs``: ``new`` without ``min_steps`` or the seed ensemble (as before them): a small set's 30 epochs are a few
  hundred steps at most.
* ``one_network``: ``new`` without the seed ensemble (``networks: 1``; a set over ``ensemble_up_to`` images trains one
  network anyway).

Prints, per set and recipe, the served (calibrated) model's test macro-F1 (F1 of the positive class and balanced
accuracy on the two-class set) with 95% bootstrap intervals, accuracy, ECE of the served confidence, the CNN's fit
seconds (its search and refit; wall time, which other work on the machine stretches), the CPU seconds of the whole
``train`` call (pixel store, fits, evaluation, MLflow), its validation score (``training.metric``), the kept epoch /
epochs run and why it stopped; then each recipe against ``old`` as ratios (metric ratio above 1: better; ECE and time
ratios: the recipe's over old's, below 1: better).

Usage: python benchmarks/cnn_quality.py [--sets 4class,yes_no] [--recipes old,new] [--limit N] [--budget S]
    --limit N: at most N files per class (the first by name), for a quick run.
    --budget S: every recipe's training.cnn.time_budget_s (default: each recipe's own).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.training.evaluate import Metrics
from conveyor.training.train import TrainResult, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"4class": DATA / "brain_mri_4class_train", "yes_no": DATA / "brain_mri_yes_no"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}

RECIPES: dict[str, dict[str, Any]] = {
    "old": {
        "architecture": "small",
        "grid": {"learning_rate": [1e-3, 3e-3], "width": [8, 16]},
        "patience": 5,
        "time_budget_s": 900.0,
        "augment": "monai",
        "schedule": "constant",
        "tta": False,
        "refit": True,
        "networks": 1,
    },
    "new": {},
    "refit": {"refit": True},
    "30_epochs": {"min_steps": 0, "networks": 1},
    "one_network": {"networks": 1},
}


def limited_copy(source: Path, target: Path, limit: int) -> Path:
    """The first ``limit`` image files (by name) of each class folder of ``source``, copied under ``target``."""
    for label in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in label.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        (target / label.name).mkdir(parents=True)
        for path in files:
            shutil.copy2(path, target / label.name / path.name)
    return target


def settings_for(home: Path, recipe: str, budget: float | None) -> Settings:
    cnn = {**RECIPES[recipe], "progress": False}
    if budget is not None:
        cnn["time_budget_s"] = budget
    return Settings(home=home, training={"families": ["cnn"], "cnn": cnn})


def run_set(name: str, source: Path, recipes: list[str], limit: int | None, budget: float | None) -> None:
    with tempfile.TemporaryDirectory(prefix=f"cnn-quality-{name}-") as tmp:
        root = Path(tmp)
        if limit is not None:
            source = limited_copy(source, root / "source", limit)
        ingested = root / "ingested"
        start = time.perf_counter()
        summary = ingest(source, settings_for(ingested, "new", budget))
        print(f"\n{name}: ingested {summary.stored} images in {time.perf_counter() - start:.0f} s", flush=True)
        rows: dict[str, tuple[TrainResult, float]] = {}
        for recipe in recipes:
            home = root / recipe
            shutil.copytree(ingested, home)
            start, cpu = time.perf_counter(), cpu_seconds()
            result = train(settings_for(home, recipe, budget))
            rows[recipe] = (result, cpu_seconds() - cpu)
            cnn = result.best.estimator
            print(
                f"  {recipe}: fit {result.best.fit_seconds:.0f} s (train {time.perf_counter() - start:.0f} s, "
                f"{rows[recipe][1]:.0f} CPU s), "
                f"epoch {cnn.best_epoch_}/{len(cnn.history_)} ({cnn.stop_reason_}), params {result.best.params}",
                flush=True,
            )
        print_table(name, rows)


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def interval(metrics: Metrics, name: str) -> str:
    low, high = metrics.intervals[name].low, metrics.intervals[name].high
    return f"{getattr(metrics, name):.3f} [{low:.3f}, {high:.3f}]"


def print_table(name: str, rows: dict[str, tuple[TrainResult, float]]) -> None:
    first = next(iter(rows.values()))[0]
    binary = first.positive is not None
    label_metrics = ["f1", "balanced_accuracy"] if binary else ["f1"]
    headers = {"f1": f"F1 ({first.positive})" if binary else "macro-F1", "balanced_accuracy": "balanced accuracy"}
    n_test = first.calibrated.n
    print(f"\n{name}: {len(first.classes)} classes, {n_test} test images; validation score = {first.metric}")
    columns = ["recipe", *(headers[m] for m in label_metrics), "accuracy", "ECE", "fit s", "train CPU s"]
    columns += ["val score", "epochs"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for recipe, (result, cpu) in rows.items():
        cal, cnn = result.calibrated, result.best.estimator
        cells = [recipe, *(interval(cal, m) for m in label_metrics), f"{cal.accuracy:.3f}", f"{cal.ece or 0.0:.3f}"]
        cells += [f"{result.best.fit_seconds:.0f}", f"{cpu:.0f}", f"{result.best.cv_score:.3f}"]
        cells.append(f"{cnn.best_epoch_}/{len(cnn.history_)} {cnn.stop_reason_}")
        print("| " + " | ".join(cells) + " |")
    if "old" not in rows:
        return
    old, old_cpu = rows["old"]
    for recipe, (result, cpu) in rows.items():
        if recipe == "old":
            continue
        ratios = [f"{getattr(result.calibrated, m) / getattr(old.calibrated, m):.2f}x" for m in label_metrics]
        ratios.append(f"{result.calibrated.accuracy / old.calibrated.accuracy:.2f}x")
        ratios.append(f"{(result.calibrated.ece or 0.0) / (old.calibrated.ece or 1.0):.2f}x")  # below 1: better
        ratios.append(f"{result.best.fit_seconds / old.best.fit_seconds:.2f}x")
        ratios.append(f"{cpu / old_cpu:.2f}x")
        print(f"| {recipe} / old | " + " | ".join(ratios) + " | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--recipes", default="old,new")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None)
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; one of {list(RECIPES)}")
    for name in args.sets.split(","):
        source = SETS[name]
        if not source.is_dir():
            print(f"{name}: skipped, the set is not at {source}", file=sys.stderr)
            continue
        run_set(name, source, recipes, args.limit, args.budget)


if __name__ == "__main__":
    main()
