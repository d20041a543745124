"""Ingest speed against the floor of only reading and decoding the same files.

Generates a few thousand 256x256 JPEGs (the demo generator; not timed), then times, in this one process:

* floor: read each file and decode it with Pillow into a numpy array, nothing else (one process, and every core);
* ingest: ``conveyor.data.ingest.ingest`` into a fresh workspace (hash, sniff, decode, validate, perceptual hash,
  copy to the raw store, record in SQLite, assign splits, record the dataset version);
* re-run: the same ingest again (every file is hashed and found already decided).

A warm-up ingest of 300 files runs first: the first ingest in a fresh process also pays one-off import and
page-cache costs that a long-running service does not.

Usage: python benchmarks/ingest.py [--n 3000]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import render_slice


def generate(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        label = "tumour" if i % 2 else "no_tumour"
        buffer = io.BytesIO()
        Image.fromarray(render_slice(rng, 256, tumour=i % 2 == 1)).save(buffer, format="JPEG", quality=90)
        path = root / label / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def _decode_files(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            np.asarray(image)


def floor(paths: list[Path], workers: int = 1) -> float:
    """Seconds to read and decode every file with Pillow, on ``workers`` processes."""
    start = time.perf_counter()
    if workers == 1:
        _decode_files(paths)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_decode_files, [paths[i::workers] for i in range(workers)]))
    return time.perf_counter() - start


def timed_ingest(source: Path, home: Path) -> float:
    start = time.perf_counter()
    summary = ingest(source, Settings(home=home))
    seconds = time.perf_counter() - start
    assert summary.seen == summary.stored + summary.duplicates + summary.conflicts + summary.quarantined
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="number of images")
    parser.add_argument("--repeat", type=int, default=3, help="timed ingests, each into a fresh workspace")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        paths = generate(source, args.n)
        warm = Path(tmp) / "warm"
        for path in paths[:300]:  # a warm-up ingest: imports, page cache, first-use costs
            (warm / path.parent.name).mkdir(parents=True, exist_ok=True)
            (warm / path.parent.name / path.name).write_bytes(path.read_bytes())
        timed_ingest(warm, Path(tmp) / "ws-warm")
        floor_1 = min(floor(paths) for _ in range(args.repeat))
        floor_n = min(floor(paths, cores) for _ in range(args.repeat))
        runs = sorted(timed_ingest(source, Path(tmp) / f"ws{i}") for i in range(args.repeat))
        start = time.perf_counter()
        again = ingest(source, Settings(home=Path(tmp) / "ws0"))
        rerun = time.perf_counter() - start
    assert again.nothing_new
    rows = [
        ("read + decode, 1 process (floor)", floor_1),
        (f"read + decode, {cores} processes", floor_n),
        ("conveyor ingest, best", runs[0]),
        ("conveyor ingest, median", runs[len(runs) // 2]),
        ("conveyor ingest, re-run", rerun),
    ]
    print(f"{args.n} JPEGs of 256x256; best of {args.repeat} for the floors; ingest uses {cores} processes")
    print(f"{'stage':<36}{'seconds':>9}{'images/s':>10}{'x floor':>9}")
    for name, seconds in rows:
        print(f"{name:<36}{seconds:>9.2f}{args.n / seconds:>10.0f}{seconds / floor_1:>9.2f}")


if __name__ == "__main__":
    main()
