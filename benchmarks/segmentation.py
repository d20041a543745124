"""Segmentation on generated MRI-like slices with exact lesion masks: the U-Net's Dice and IoU on the test split
against the two trivial baselines, and seconds per epoch on this CPU; then the classifier's training table with
``features.roi: segmentation`` (every table of the whole image beside the same table inside the predicted region)
and what the region costs per image.

Usage: python benchmarks/segmentation.py [--n-per-class 100] [--size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.training.segmentation import train_segmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "src", SyntheticSpec(n_per_class=args.n_per_class, size=96, seed=8, masks=True))
        settings = Settings(home=root / "ws", segmentation={"size": (args.size, args.size)})  # type: ignore[arg-type]
        ingest(root / "src", settings)
        epochs: list[float] = []
        began = time.perf_counter()
        result = train_segmentation(settings, on_epoch=lambda n, row: epochs.append(row["seconds"]))
        seconds = time.perf_counter() - began
        print(f"\n{2 * args.n_per_class} generated slices at {args.size}x{args.size}: {result.n_train} to train, "
              f"{result.n_validation} to stop on, {result.n_test} to test; {result.epochs} epochs")  # fmt: skip
        print(f"{'':<16}{'Dice lesion [95%]':>24}{'IoU lesion':>12}{'Dice background':>17}{'HD95 px':>9}")
        for name, scored in {"U-Net": result.model, **result.baselines}.items():
            d, i, b = scored.dice["lesion"], scored.iou["lesion"], scored.dice["background"]
            hd = "-" if scored.hausdorff95 is None else f"{scored.hausdorff95:.1f}"
            print(f"{name:<16}{d[0]:>10.3f} [{d[1]:.3f}, {d[2]:.3f}]{i[0]:>12.3f}{b[0]:>17.3f}{hd:>9}")
        per_epoch = sum(epochs) / len(epochs)
        print(f"{per_epoch:.2f} s per epoch ({per_epoch / result.n_train * 1000:.1f} ms per training image), "
              f"{seconds:.0f} s in all; gate {'passed' if result.passed else 'refused'}")  # fmt: skip
        if result.passed:
            _roi_table(settings, root / "src")


def _roi_table(settings: Settings, src: Path) -> None:
    """The training table over the whole image's tables and the region's, and the features' cost per image."""
    from conveyor.features.pipeline import FeaturePipeline
    from conveyor.training.segmentation import feature_region
    from conveyor.training.train import train

    extractors = ["stats", "intensity", "landscape"]
    roi = settings.model_copy(
        update={
            "features": settings.features.model_copy(update={"roi": "segmentation", "extractors": extractors}),
            "training": settings.training.model_copy(update={"families": ["logreg", "random_forest"]}),
        }
    )
    trained = train(roi)
    print(f"\nclassifier, metric {trained.metric}: the whole image's tables against the same inside the region")
    print(f"{'candidate':<28}{'CV':>8}{'test':>8}")
    for c in sorted(trained.candidates, key=lambda c: c.name):
        test = "-" if c.test is None else f"{c.test.as_dict()[trained.metric]:.3f}"
        print(f"{c.name:<28}{c.cv_score:>8.3f}{test:>8}")
    region = feature_region(roi)
    images = [p.read_bytes() for p in sorted(src.rglob("images/*"))[:60]]
    specs = [(name, {}) for name in extractors]
    cost = {}
    for name, where in (("whole image", None), ("inside region", region)):
        pipeline = FeaturePipeline(roi.preprocess, specs, region=where)
        pipeline.vectors(pipeline.prepare([pipeline.image(images[0])]))  # warm: the network is built once
        began = time.perf_counter()
        pipeline.vectors(pipeline.prepare([pipeline.image(data) for data in images]))
        cost[name] = (time.perf_counter() - began) / len(images) * 1000
    base = cost["whole image"]
    print(f"\n{'features of':<16}{'ms/image':>10}{'ratio':>8}")
    for name, ms in cost.items():
        print(f"{name:<16}{ms:>10.2f}{ms / base:>8.2f}")


if __name__ == "__main__":
    main()
