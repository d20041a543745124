"""A cross-fitted network ensemble against the one network conveyor ships, on the real brain-MRI sets (issue 16).

The one network holds out a fifth of the training split for early stopping and its temperature, so on the 146
training images of the yes/no set it learns from about 116 and is selected and calibrated on about 30. A cross-fitted
ensemble fits one network per grouped search fold instead (each with its own early-stopping fold inside that fold's
training part): every training image is then scored by a network that never saw it (out-of-fold scores over the
whole split, so a CV score on 146 images rather than 30), every image is in the training part of all but one network,
and the served answer is the mean of the fold networks' probabilities.

For each set beside the checkout (``--limit`` images per class for a quick run): ingest into a temporary workspace
(conveyor's split), then the one network (``training.cnn``'s defaults with ``networks: 1``) and the k fold networks,
and print CV balanced accuracy (the one network: on its validation fold; the ensemble: out of fold over the whole
training split), test balanced accuracy, F1 (macro-F1 with more than two classes), ECE with the ECE a calibrated model
would show by chance, and fit seconds. The ensemble's rows: the mean of the members' calibrated probabilities as it
is, and re-calibrated by a temperature fitted on the out-of-fold log-probabilities.

With ``--seeds N`` it also refits the one network with N-1 more seeds and prints the spread of its test scores
from the seed alone, and the mean of those N networks (a seed ensemble).

Usage: python benchmarks/cnn_ensemble.py [--sets yes_no,4class] [--folds 5] [--limit N] [--seeds N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cnn_quality import limited_copy  # a sibling script: benchmarks/ is on sys.path when one runs
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, f1_score

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.models.cnn import _fit_temperature, _softmax
from conveyor.models.ece import chance_ece, top_label_ece
from conveyor.models.families import family
from conveyor.training.search import cv_splits
from conveyor.training.train import PIXELS, _dataset, _load_inputs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"yes_no": DATA / "brain_mri_yes_no", "4class": DATA / "brain_mri_4class_train"}


def seed_rows(seeds: int, fit: Any, single: Any, X_test: Any, y_test: np.ndarray, scores: Any) -> None:
    """The one network refitted with seeds 1 .. seeds-1 (seed 0 is ``single``): the spread of its test scores from the
    seed alone (initial weights, validation fold, batch order, augmentation), and the mean of those networks."""
    networks = [single] + [fit(None, seed) for seed in range(1, seeds)]
    probas = [network.predict_proba(X_test) for network in networks]
    table = np.array([scores(proba, y_test)[:2] for proba in probas])
    print(
        f"\nthe one network, seeds 0-{seeds - 1}: test bal. acc. {table[:, 0].mean():.3f} +- {table[:, 0].std():.3f} "
        f"(min {table[:, 0].min():.3f}, max {table[:, 0].max():.3f}); F1 {table[:, 1].mean():.3f} +- "
        f"{table[:, 1].std():.3f} (min {table[:, 1].min():.3f}, max {table[:, 1].max():.3f})"
    )
    print("per seed (bal. acc., F1): " + ", ".join(f"{ba:.3f}/{f1:.3f}" for ba, f1 in table))
    ba, f1, ece, chance = scores(np.mean(probas, axis=0), y_test)
    print(f"mean of the {seeds} seeds' networks: test bal. acc. {ba:.3f}, F1 {f1:.3f}, ECE {ece:.3f} ({chance:.3f})")


def run_set(name: str, source: Path, folds: int, limit: int | None, seeds: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f"ensemble-{name}-") as tmp:
        if limit is not None:
            source = limited_copy(source, Path(tmp) / "source", limit)
        settings = Settings(home=Path(tmp) / "ws", training={"cnn": {"progress": False, "networks": 1}})
        ingest(source, settings)
        data = _dataset(settings, None)
        y, seed = data.y_train, settings.training.seed
        y_test = np.array([data.classes.index(label) for label in data.test_labels])
        positive = None if data.positive is None else data.classes.index(data.positive)
        pixels = _load_inputs(settings, PIXELS, data.version, data.members)
        network, _ = family("cnn").estimator_and_grid(settings)

        def fit(rows: np.ndarray | None, seed: int = seed) -> Any:
            rows = np.arange(len(y)) if rows is None else rows
            groups = {} if data.groups is None else {"val_groups": data.groups[rows]}
            return clone(network).set_params(seed=seed).fit(pixels.X_train[rows], y[rows], **groups)

        def scores(proba: np.ndarray, truth: np.ndarray) -> tuple[float, float, float, float]:
            predicted = proba.argmax(axis=1)
            f1 = (
                f1_score(truth, predicted, average="macro")
                if positive is None
                else f1_score(truth, predicted, pos_label=positive)
            )
            ece = top_label_ece(proba, truth)
            return float(balanced_accuracy_score(truth, predicted)), float(f1), ece, chance_ece(proba.max(axis=1))

        began = time.perf_counter()
        single = fit(np.arange(len(y)))
        single_seconds = time.perf_counter() - began
        val = np.asarray(single.val_index_)
        single_cv = balanced_accuracy_score(y[val], single.val_proba_.argmax(axis=1))

        metric = "F1" if positive is not None else "macro-F1"
        print(f"\n{name}: {len(y)} training images, {len(y_test)} test; the one network's validation fold {len(val)}")
        print(f"| model | CV bal. acc. (on) | test bal. acc. | test {metric} | ECE (chance) | fit s |")
        print("|---|---|---:|---:|---|---:|")
        rows = [("one network (shipped)", f"{single_cv:.3f} ({len(val)})", single.predict_proba(pixels.X_test),
                 single_seconds)]  # fmt: skip
        if folds > 1:
            splits = cv_splits(y, np.arange(len(y)), folds, seed, data.groups)
            oof = np.zeros((len(y), len(data.classes)))
            test_members = []
            began = time.perf_counter()
            for train, held in splits:
                member = fit(train)
                oof[held] = member.predict_proba(pixels.X_train[held])
                test_members.append(member.predict_proba(pixels.X_test))
            seconds = time.perf_counter() - began
            ensemble_test = np.mean(test_members, axis=0)
            temperature = _fit_temperature(np.log(np.clip(oof, 1e-12, 1.0)), y)
            recalibrated = _softmax(np.log(np.clip(ensemble_test, 1e-12, 1.0)), temperature)
            cv = f"{balanced_accuracy_score(y, oof.argmax(axis=1)):.3f} ({len(y)})"
            rows += [
                (f"{folds} fold networks, mean", cv, ensemble_test, seconds),
                (f"{folds} fold networks, mean, T={temperature:.2f} on OOF", cv, recalibrated, seconds),
            ]
        for label, cv, proba, seconds in rows:
            ba, f1, ece, chance = scores(proba, y_test)
            print(f"| {label} | {cv} | {ba:.3f} | {f1:.3f} | {ece:.3f} ({chance:.3f}) | {seconds:.0f} |", flush=True)
        if seeds > 1:
            seed_rows(seeds, fit, single, pixels.X_test, y_test, scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="yes_no")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1, help="also refit the one network with this many seeds")
    args = parser.parse_args()
    for name in args.sets.split(","):
        if not SETS[name].is_dir():
            print(f"{name}: skipped, the set is not at {SETS[name]}", file=sys.stderr)
            continue
        run_set(name, SETS[name], args.folds, args.limit, args.seeds)


if __name__ == "__main__":
    main()
