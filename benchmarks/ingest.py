"""Ingest speed against the floor of only reading and decoding the same files.

Generates a few thousand 256x256 JPEGs (the demo generator; not timed), then times, in this one process:

* floor: read each file and decode it with Pillow into a numpy array, nothing else;
* ingest: ``conveyor.data.ingest.ingest`` into a fresh workspace (hash, sniff, decode, validate, perceptual hash,
  copy to the raw store, record in SQLite, assign splits, record the dataset version);
* re-run: the same ingest again (every file is hashed and found already decided).

Usage: python benchmarks/ingest.py [--n 3000]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
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


def floor(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            np.asarray(image)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="number of images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        paths = generate(source, args.n)
        floor(paths[:200])  # warm the page cache and Pillow
        floor_s = min(floor(paths) for _ in range(2))
        settings = Settings(home=Path(tmp) / "ws")
        start = time.perf_counter()
        summary = ingest(source, settings)
        ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        again = ingest(source, settings)
        rerun_s = time.perf_counter() - start
    assert summary.stored == args.n and again.nothing_new
    rows = [
        ("read + decode (floor)", floor_s),
        ("conveyor ingest", ingest_s),
        ("conveyor ingest, re-run", rerun_s),
    ]
    print(f"{args.n} JPEGs of 256x256, one process")
    print(f"{'stage':<26}{'seconds':>9}{'images/s':>10}{'x floor':>9}")
    for name, seconds in rows:
        print(f"{name:<26}{seconds:>9.2f}{args.n / seconds:>10.0f}{seconds / floor_s:>9.2f}")


if __name__ == "__main__":
    main()
