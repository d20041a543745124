"""Feature selection and importance on a real brain-MRI set: every family with and without selection, side by side.

Ingests ``../shared/data/brain_mri_yes_no`` (or ``--set 4class``) into a temporary workspace and trains a grid
search of logistic regression, SVM and random forest on every feature table, each family also behind
``training.feature_selection`` (top ``--k`` features by extra-trees importance, chosen inside each fold). Prints
every candidate's CV score and test score of ``training.metric``, pairs each family with its selecting variant,
then the registered winner's permutation importance per extractor group.

Usage: python benchmarks/selection.py [--set yes_no|4class] [--k 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.features.store import compute_features
from conveyor.training.train import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"yes_no": DATA / "brain_mri_yes_no", "4class": DATA / "brain_mri_4class_train"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="yes_no", choices=sorted(SETS))
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    source = SETS[args.set]
    if not source.is_dir():
        print(f"{source} is absent: nothing to measure")
        return
    with tempfile.TemporaryDirectory() as tmp:
        training = {
            "families": ["logreg", "svm", "random_forest"],
            "search": {"mode": "grid"},
            "feature_selection": {"keep": "top_k", "k": args.k},
        }
        settings = Settings(home=Path(tmp) / "ws", training=training)  # type: ignore[arg-type]
        ingest(source, settings)
        compute_features(settings)
        began = time.perf_counter()
        result = train(settings)
        seconds = time.perf_counter() - began
        metric = result.metric
        print(f"\n{args.set}: grid search, {result.search.fits} fits in {seconds:.0f} s; metric {metric}")
        print(f"{'candidate':<34}{'CV score':>16}{'test':>8}   {'with selection (top ' + str(args.k) + ')':<34}"
              f"{'CV score':>16}{'test':>8}")  # fmt: skip
        by_name = {c.name: c for c in result.candidates}
        for c in result.candidates:
            if "+select" in c.family:
                continue
            s = by_name[f"{c.family}+select@{c.extractor}"]

            def shown(x):  # type: ignore[no-untyped-def]
                test = "-" if x.test is None else f"{getattr(x.test, metric):.3f}"
                return f"{x.cv_score:>9.3f} ± {x.cv_score_std:.3f}{test:>8}"

            print(f"{c.name:<34}{shown(c)}   {s.name:<34}{shown(s)}")
        wins = sum(by_name[f"{c.family}+select@{c.extractor}"].cv_score > c.cv_score
                   for c in result.candidates if "+select" not in c.family)  # fmt: skip
        pairs = sum("+select" not in c.family for c in result.candidates)
        print(f"selection raised the CV score in {wins} of {pairs} pairs; winner {result.best.name}")
        if result.registered_version is not None:
            from conveyor.tracking.explain import importance_of

            found = importance_of(settings, result.registered_version)
            print(f"importance of v{result.registered_version} ({found['candidate']}), test {metric} "
                  f"{found['baseline']:.3f}:")  # fmt: skip
            for g in found["groups"]:
                print(f"  {g['group']:<12} {g['features']:>4} features  drop {g['drop']:+.4f} ± {g['drop_std']:.4f}")
        else:
            print("the winner did not pass the gate: no importance recorded")


if __name__ == "__main__":
    main()
