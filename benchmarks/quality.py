"""Model quality on the real brain-MRI set (../shared/data/brain_mri_yes_no): what each family reaches.

Ingests the set into a temporary workspace, computes every extractor's features, runs ``conveyor train`` with every
family (the CNN included), and prints, per family, its best candidate's 5-fold CV F1 and test F1 with the 95%
bootstrap interval, then the winner. The brain-tumour TDA system reported test F1 0.762 on its split.

Usage: python benchmarks/quality.py [--families logreg,svm,...] [--path DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.training.train import train

REAL_SET = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_mri_yes_no"
FAMILIES = "logreg,svm,random_forest,hist_gradient_boosting,xgboost,cnn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=FAMILIES)
    parser.add_argument("--path", type=Path, default=REAL_SET)
    args = parser.parse_args()
    if not args.path.is_dir():
        raise SystemExit(f"the real set is not at {args.path}")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "ws", training={"families": args.families.split(",")})  # type: ignore[arg-type]
        ingest(args.path, settings)
        start = time.perf_counter()
        result = train(settings)
        seconds = time.perf_counter() - start
    print(f"dataset {result.dataset_version}: positive class {result.positive!r}; train took {seconds:.0f} s")
    print(f"{'family':<24}{'best input':<12}{'CV F1':>14}{'test F1 [95% interval]':>28}{'ROC-AUC':>9}")
    for family in args.families.split(","):
        best = max((c for c in result.candidates if c.family == family), key=lambda c: c.cv_score)
        f1 = best.test.intervals["f1"]
        auc = "-" if best.test.roc_auc is None else f"{best.test.roc_auc:.3f}"
        print(
            f"{family:<24}{best.extractor:<12}{best.cv_score:>8.3f} ± {best.cv_score_std:.3f}"
            f"{best.test.f1:>12.3f} [{f1.low:.3f}, {f1.high:.3f}]{auc:>9}"
        )
    for name, metrics in result.baselines.items():
        print(f"{name:<36}{'':>14}{metrics.f1:>12.3f}")
    cal = result.calibrated
    print(
        f"winner (by CV): {result.best.name}; calibrated test F1 {cal.f1:.3f} "
        f"[{cal.intervals['f1'].low:.3f}, {cal.intervals['f1'].high:.3f}], ECE {cal.ece:.3f}; "
        f"registered: {result.registered_version} ({result.alias})"
    )


if __name__ == "__main__":
    main()
