"""Object storage: ingest and features with the store on this disk against an S3 bucket, in one run.

Generates a set of 256x256 JPEGs (the demo generator; not timed), starts moto's standalone S3 server on 127.0.0.1
(``python -m moto.server``: a real HTTP S3 API, in its own process on the same cores) and times, for a workspace whose
store is its own folder and one whose ``storage.url`` is ``s3://bench/conveyor`` in that server:

* ingest (hash, decode, validate, copy into the raw store: a file, or one PUT per image, sent a chunk at a time);
* features from nothing (every worker reads its chunk's images from the store, concurrently on S3; the tables and the
  diagram cache are written there);
* features again (nothing to compute: listing the tables and reading their sha256 columns from the store);
* reading every stored image's bytes once: one request at a time, and a chunk of 64 at once (how the feature
  workers read them).

moto is a Python server sharing this machine's cores: its own CPU time per stage is shown (read from /proc), the part
of the S3 column a real service would spend on its own machines. So the ratios say what the S3 protocol, the client
and this server cost here, not what a remote service's latency or bandwidth would: the last line gives the measured
time of one small GET, from which a real endpoint's latency can be scaled.

Usage: python benchmarks/storage.py [--n 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.data.versions import raw_images
from conveyor.features.store import compute_features
from conveyor.storage import Storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' moto server, started the same way
from tests.test_storage import BUCKET, Moto


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, every thread) the process ``pid`` has used; 0 for none."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stages(settings: Settings, source: Path, workers: int, server: int | None) -> dict[str, tuple[float, float]]:
    """Per stage: wall seconds, and the CPU seconds the S3 server spent meanwhile."""

    def timed(run: Callable[[], Any]) -> tuple[float, float]:
        cpu, began = _cpu_s(server), time.perf_counter()
        run()
        return time.perf_counter() - began, _cpu_s(server) - cpu

    seconds = {"ingest": timed(lambda: ingest(source, settings))}
    seconds["features from nothing"] = timed(lambda: compute_features(settings, workers=workers))
    seconds["features again (nothing to do)"] = timed(lambda: compute_features(settings, workers=workers))
    from sqlalchemy import select

    from conveyor.store.db import session_scope
    from conveyor.store.models import Image
    from conveyor.workspace import open_workspace

    with session_scope(open_workspace(settings)) as session:
        shas = sorted(session.scalars(select(Image.sha256)))
    raw = raw_images(settings, shas)
    seconds["read every image, one at a time"] = timed(lambda: [raw.read(sha) for sha in shas])
    seconds["read every image, 64 at once"] = timed(
        lambda: [raw.read_all(shas[start : start + 64]) for start in range(0, len(shas), 64)]
    )
    return seconds


def _get_latency(storage: Storage, relative: str) -> float:
    times = []
    for _ in range(50):
        began = time.perf_counter()
        storage.read_bytes(relative)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "src", SyntheticSpec(n_per_class=args.n // 2, size=256, seed=3, fmt="jpeg"))
        generate_dataset(root / "warm", SyntheticSpec(n_per_class=50, size=256, seed=4, fmt="jpeg"))
        moto = Moto(root / "moto.log")  # the tests' server: a free loopback port, a bucket, stopped below
        try:
            options = moto.options()
            warm = Settings(home=root / "warm-ws", storage={"url": f"s3://{BUCKET}/warm", "options": options})  # type: ignore[arg-type]
            ingest(root / "warm", warm)  # imports, the S3 client and the server's first requests: not timed
            compute_features(warm, workers=args.workers)
            local = _stages(Settings(home=root / "local"), root / "src", args.workers, None)
            s3 = Settings(home=root / "s3", storage={"url": f"s3://{BUCKET}/conveyor", "options": options})  # type: ignore[arg-type]
            remote = _stages(s3, root / "src", args.workers, moto.process.pid)
            storage = Storage.of(s3)
            listed = storage.list("raw/00", "*")
            latency = _get_latency(storage, listed[0]) if listed else float("nan")
        finally:
            moto.stop()
    n = args.n
    print(f"\n{n} generated 256x256 JPEGs; {args.workers} worker processes; S3: moto on 127.0.0.1")
    print(f"{'stage':<34}{'local s':>9}{'S3 s':>8}{'S3 / local':>12}{'S3 ms/image':>13}{'of it, moto CPU s':>19}")
    for stage, (local_s, _) in local.items():
        wall, server_cpu = remote[stage]
        print(f"{stage:<34}{local_s:>9.2f}{wall:>8.2f}{wall / local_s:>12.2f}{1000 * wall / n:>13.2f}"
              f"{server_cpu:>19.2f}")  # fmt: skip
    one, many = remote["read every image, one at a time"][0], remote["read every image, 64 at once"][0]
    print(f"reading a chunk at once is {one / many:.1f}x faster than one request at a time on S3")
    print(f"one small GET from moto: {1000 * latency:.1f} ms (median of 50); a remote endpoint adds its round trip")


if __name__ == "__main__":
    main()
