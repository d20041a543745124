"""CNN speed: one training epoch and one prediction pass of CNNClassifier, every core against one thread.

In one run, on the same generated 128x128 demo slices (``render_slice``, half with a tumour, scaled to [0, 1]):

* train: ``fit`` for ``--epochs`` epochs (default 3) with augmentation, 20% validation fold; the table shows the
  fastest epoch after the first (the first also builds oneDNN kernels), from ``history_``: training on the 80% fold,
  BatchNorm statistics and the validation pass;
* predict: ``predict_proba`` on every image.

each with ``n_threads`` = every core, then 1. The ratio is 1-thread time over all-core time (above 1: threads help).
On a machine whose cores are busy with other work, extra threads can make torch slower, not faster.

With ``--memory``: the peak resident memory of one training epoch, in a fresh process each, with the images given
as one in-memory array and as ``ImageRows`` over the pixel store's file (read a batch at a time); the ratio is
in-memory over pixel store.

Usage: python benchmarks/cnn.py [--n 1000] [--size 128] [--epochs 3] [--architecture small] [--width 16] [--memory]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def peak_rss_child(source: str, path: str, n: int, size: int) -> None:
    """In a fresh process: one epoch on the images as an array or as ImageRows; prints the peak RSS in MiB."""
    from conveyor.training.pixels import ImageRows

    rows = ImageRows(Path(path), (size, size), np.arange(n))
    images = np.asarray(rows) if source == "array" else rows
    labels = np.array(["no_tumour", "tumour"] * (n // 2))
    CNNClassifier(max_epochs=1, patience=1).fit(images, labels)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory(n: int, size: int) -> None:
    images, _ = make_images(n, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pixels.f32"
        images.tofile(path)
        del images
        peak = {}
        for source in ("array", "rows"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", source, str(path), str(n), str(size)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            peak[source] = float(out.split()[-1])
    mib = n * size * size * 4 / 2**20
    print(f"one epoch of CNNClassifier(small): {n} images {size}x{size} ({mib:.0f} MiB as float32)")
    print(f"{'images given as':<32}{'peak RSS MiB':>14}")
    print(f"{'one in-memory array':<32}{peak['array']:>14.0f}")
    print(f"{'ImageRows (pixel store file)':<32}{peak['rows']:>14.0f}")
    print(f"in-memory / pixel store: {peak['array'] / peak['rows']:.2f}x")


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--memory-child":
        peak_rss_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--architecture", default="small")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--memory", action="store_true", help="Peak memory: in-memory array against ImageRows.")
    args = parser.parse_args()
    if args.memory:
        memory(args.n, args.size)
        return

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
