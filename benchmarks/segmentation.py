"""Segmentation on generated MRI-like slices with exact lesion masks: the U-Net's Dice and IoU on the test split
against the two trivial baselines, and seconds per epoch on this CPU.

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


if __name__ == "__main__":
    main()
