"""CNN speed: one training epoch and one prediction pass of CNNClassifier, every core against one thread.

In one run, on the same generated 128x128 demo slices (``render_slice``, half with a tumour, scaled to [0, 1]):

* train: ``fit`` for ``--epochs`` epochs (default 3) with augmentation, 20% validation fold; the table shows the
  fastest epoch after the first (the first also builds oneDNN kernels), from ``history_``: training on the 80% fold,
  BatchNorm statistics and the validation pass;
* predict: ``predict_proba`` on every image.

each with ``n_threads`` = every core, then 1. The ratio is 1-thread time over all-core time (above 1: threads help).
On a machine whose cores are busy with other work, extra threads can make torch slower, not faster.

Usage: python benchmarks/cnn.py [--n 1000] [--size 128] [--epochs 3] [--architecture small] [--width 16]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from conveyor.data.synthetic import render_slice
from conveyor.models.cnn import CNNClassifier


def make_images(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((n, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=object)
    for i in range(n):
        tumour = bool(i % 2)
        images[i] = render_slice(np.random.default_rng(i), size, tumour=tumour) / np.float32(255)
        labels[i] = "tumour" if tumour else "no_tumour"
    return images, labels.astype(str)


def measure(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace, threads: int) -> dict[str, float]:
    model = CNNClassifier(
        architecture=args.architecture,
        width=args.width,
        max_epochs=args.epochs,
        patience=args.epochs,
        n_threads=threads,
    ).fit(images, labels)
    epochs = [row["seconds"] for row in model.history_]
    epoch_s = min(epochs[1:]) if len(epochs) > 1 else epochs[0]
    start = time.perf_counter()
    model.predict_proba(images)
    predict_s = time.perf_counter() - start
    n_train = len(images) - round(0.2 * len(images))
    return {
        "epoch_s": epoch_s,
        "train_ips": n_train / epoch_s,
        "predict_s": predict_s,
        "predict_ips": len(images) / predict_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--architecture", default="small")
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()

    images, labels = make_images(args.n, args.size)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results = {threads: measure(images, labels, args, threads) for threads in (cores, 1)}
    all_cores, one = results[cores], results[1]

    model = f"CNNClassifier({args.architecture}, width={args.width})"
    print(f"{model}: {args.n} images {args.size}x{args.size}, {cores} cores")
    print(f"{'stage':<9}{'threads':>8}{'seconds':>10}{'images/s':>11}{'1-thread / this':>17}")
    for stage, seconds, ips in (("train", "epoch_s", "train_ips"), ("predict", "predict_s", "predict_ips")):
        for threads, row in ((1, one), (cores, all_cores)):
            ratio = one[seconds] / row[seconds]
            print(f"{stage:<9}{threads:>8}{row[seconds]:>10.2f}{row[ips]:>11.0f}{ratio:>17.2f}")
    print("train: one epoch (training fold with augmentation, BatchNorm statistics, validation); images/s of the fold")


if __name__ == "__main__":
    main()
