"""Prediction sets on the real MRI sets: per-class coverage of the test split with its 95% interval, the share of
singleton sets and the mean set size at 0.80, 0.90 and 0.95, for the model `conveyor train` picks by CV.

Usage: python benchmarks/conformal.py [--data ../shared/data/brain_mri_yes_no] [--families logreg svm ...]
       [--extractors stats intensity all]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.training.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "brain_mri_yes_no")
    parser.add_argument("--families", nargs="+", default=None, help="training.families (default: the default five)")
    parser.add_argument("--extractors", nargs="+", default=None, help="training.extractors (default: every table)")
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
    report = result.conformal or {}
    print(f"\n{args.data.name}: winner {result.best.name} (CV {result.best.cv_score:.3f}), trained in {seconds:.0f} s")
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


if __name__ == "__main__":
    main()
