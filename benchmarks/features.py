"""Feature speed: the full feature vector against the floor of only decoding, and against giotto-tda.

In one run, on the same stored images (generated 256x256 demo JPEGs, and the real brain-MRI set when it is beside the
checkout at ../shared/data/brain_mri_yes_no):

* per core (issue 15, goal: whole vector <= 1.5x persistence alone): in one process, CPU time per image of
  persistence alone (decode, preprocess, both filtrations' diagrams) against the whole feature vector (what
  ``conveyor features`` computes per image: the same, then every configured extractor, in chunks of 64), with the
  vectorisers batched and with their reference path (one diagram at a time, as before batching), against all eight
  extractors, and each extractor's own share (``--per-core-only``: this table alone, for both sets);
* floor: read and decode every stored image (one process, then every core);
* conveyor: ``compute_features`` for every extractor, both filtrations, H0 and H1, on every core, from nothing
  (decode, preprocess, diagrams, vectorise, write the master tables);
* giotto-tda (optional, ``--gtda PYTHON``: a virtual environment with giotto-tda, which pins scikit-learn 1.3 and is
  never a project dependency): its ``CubicalPersistence`` on both filtrations plus its landscape, Betti curve,
  persistence image and entropy vectorisers on the same preprocessed images, every core;
* peak memory (``--memory``): the resident set of a features run at n and 4n images, each in a fresh process.

Usage: python benchmarks/features.py [--n 2000] [--gtda /path/to/venv/bin/python] [--memory] [--per-core-only]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conveyor.config import Settings
from conveyor.data.decode import decode_image
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import render_slice
from conveyor.features.extractors import EXTRACTORS, check_bundles
from conveyor.features.persistence import diagram_bundle
from conveyor.features.pipeline import FeaturePipeline
from conveyor.features.store import _CHUNK, compute_features, configured_extractors
from conveyor.features.vectorizers import _DiagramVectorizer
from conveyor.preprocess import Preprocessor

REAL_SET = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_mri_yes_no"

GTDA_SCRIPT = """
import sys, time, numpy as np
from gtda.homology import CubicalPersistence
from gtda.diagrams import PersistenceLandscape, BettiCurve, PersistenceImage, PersistenceEntropy
images = np.load(sys.argv[1])
start = time.perf_counter()
for sign in (1.0, -1.0):
    diagrams = CubicalPersistence(homology_dimensions=(0, 1), n_jobs=-1).fit_transform(sign * images)
    for vectoriser in (PersistenceLandscape(n_layers=3, n_bins=20, n_jobs=-1), BettiCurve(n_bins=20, n_jobs=-1),
                       PersistenceImage(n_bins=10, n_jobs=-1), PersistenceEntropy(n_jobs=-1)):
        vectoriser.fit_transform(diagrams)
print(time.perf_counter() - start)
"""


def generate(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = "tumour" if i % 2 else "no_tumour"
        path = root / label / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(render_slice(rng, 256, tumour=i % 2 == 1)).save(buffer, format="JPEG", quality=90)
        path.write_bytes(buffer.getvalue())


def _decode(paths: list[str]) -> int:
    for path in paths:
        decode_image(Path(path).read_bytes())
    return len(paths)


def decode_floor(raw: list[str], workers: int) -> float:
    start = time.perf_counter()
    if workers == 1:
        _decode(raw)
    else:
        chunks = [raw[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_decode, chunks))
    return time.perf_counter() - start


def _cpu_ms(run: Any, n: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in CPU milliseconds of this process per image (a busy machine does not count)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return 1e3 * best / n


def per_core(settings: Settings, raw: list[str], repeat: int = 2) -> list[tuple[str, float]]:
    """(stage, CPU ms per image) in this one process; see the module docstring."""
    blobs = [Path(p).read_bytes() for p in raw]
    n = len(blobs)
    configured = [(e.name, e.get_params(deep=False)) for e in configured_extractors(settings)]
    pipeline = FeaturePipeline(settings.preprocess, configured)
    every = FeaturePipeline(settings.preprocess, [(name, {}) for name in EXTRACTORS])

    def persistence() -> None:
        for blob in blobs:
            diagram_bundle(pipeline.image(blob))

    def whole(of: FeaturePipeline) -> None:  # store._compute_chunk without the file reads
        for start in range(0, n, _CHUNK):
            of.transform(of.prepare([of.image(blob) for blob in blobs[start : start + _CHUNK]]))

    images = [pipeline.image(blob) for blob in blobs]
    prepared = every.prepare(images)
    for fitted in (pipeline, every):
        fitted.transform(fitted.prepare(images[:1]))  # fits the extractors (fixed grids)
    chunks = [slice(start, start + _CHUNK) for start in range(0, n, _CHUNK)]
    names = ", ".join(name for name, _ in configured)
    rows = [("persistence alone: decode, preprocess, both filtrations", _cpu_ms(persistence, n, repeat))]
    for batched in (True, False):
        _DiagramVectorizer.batched = batched
        label = "batched" if batched else "per diagram, as before"
        rows.append((f"whole vector ({names}), {label}", _cpu_ms(lambda: whole(pipeline), n, repeat)))
    rows.append((f"all {len(EXTRACTORS)} extractors, batched", _cpu_ms(lambda: whole(every), n, repeat)))
    rows.append(("  check the bundles (once per chunk)", _cpu_ms(lambda: check_bundles(prepared.bundles), n, repeat)))
    for name, extractor in every._fitted.items():
        for batched in (True, False) if extractor.input_kind == "bundle" else (True,):
            _DiagramVectorizer.batched = batched
            inputs = prepared.bundles if extractor.input_kind == "bundle" else images
            label = "" if extractor.input_kind == "image" else (" batched" if batched else " per diagram")
            ms = _cpu_ms(lambda e=extractor, x=inputs: [e.transform(x[c]) for c in chunks], n, repeat)
            rows.append((f"  {name}{label}", ms))
    _DiagramVectorizer.batched = True
    return rows


def print_per_core(name: str, rows: list[tuple[str, float]], n: int) -> None:
    floor = rows[0][1]
    print(f"\n{name}: one core, {n} images, CPU ms per image")
    print(f"{'stage':<62}{'ms/image':>10}{'x persistence':>15}")
    for stage, ms in rows:
        print(f"{stage:<62}{ms:>10.3f}{ms / floor:>15.2f}")
    whole = rows[1][1] / floor
    print(
        f"whole vector / persistence alone: {whole:.2f}x (goal <= 1.5x; {rows[2][1] / floor:.2f}x per diagram; "
        f"{rows[3][1] / floor:.2f}x with every extractor)"
    )


def measure(name: str, source: Path, workdir: Path, gtda: str | None) -> list[tuple[str, str, float, int]]:
    settings = Settings(home=workdir / name)
    ingest(source, settings)
    raw = sorted(str(p) for p in (settings.home / "raw").rglob("*.*"))
    n = len(raw)
    decode_floor(raw[:100], 1)  # warm the page cache
    rows = [(name, "decode floor, 1 process", decode_floor(raw, 1), n)]
    cores = os.cpu_count() or 1
    rows.append((name, f"decode floor, {cores} processes", decode_floor(raw, cores), n))
    start = time.perf_counter()
    compute_features(settings)
    rows.append((name, f"conveyor features, {cores} processes", time.perf_counter() - start, n))
    if gtda:
        preprocess = Preprocessor(settings.preprocess)
        images = np.stack([preprocess(decode_image(Path(p).read_bytes()).pixels) for p in raw])
        np.save(workdir / f"{name}.npy", images)
        script = workdir / "gtda_bench.py"
        script.write_text(GTDA_SCRIPT)
        out = subprocess.run([gtda, str(script), str(workdir / f"{name}.npy")], capture_output=True, text=True)
        if out.returncode == 0:
            rows.append((name, "giotto-tda (diagrams + 4 vectorisers)", float(out.stdout.strip().splitlines()[-1]), n))
        else:
            print(f"giotto-tda failed: {out.stderr[-500:]}", file=sys.stderr)
    return rows


def peak_memory(n: int, workdir: Path) -> tuple[int, int]:
    """(peak RSS of the main process, peak RSS of the largest worker) in MiB, for a features run over n images."""
    code = (
        "import json, resource, sys; from pathlib import Path;"
        "from conveyor.config import Settings; from conveyor.features.store import compute_features;"
        "compute_features(Settings(home=Path(sys.argv[1])));"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    source = workdir / f"mem{n}"
    generate(source, n)
    ingest(source, Settings(home=workdir / f"memws{n}"))
    out = subprocess.run(
        [sys.executable, "-c", code, str(workdir / f"memws{n}")], capture_output=True, text=True, check=True
    )
    main_kib, child_kib = json.loads(out.stdout.strip().splitlines()[-1])
    return main_kib // 1024, child_kib // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="generated images")
    parser.add_argument("--gtda", help="python of a virtual environment with giotto-tda")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory at n and 4n images")
    parser.add_argument("--per-core-only", action="store_true", help="only the one-core table (generated images)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        generate(workdir / "generated", args.n)
        settings = Settings(home=workdir / "per-core")
        ingest(workdir / "generated", settings)
        raw = sorted(str(p) for p in (settings.home / "raw").rglob("*.*"))
        print_per_core("generated 256x256", per_core(settings, raw), len(raw))
        if REAL_SET.is_dir():
            real = Settings(home=workdir / "per-core-real")
            ingest(REAL_SET, real)
            real_raw = sorted(str(p) for p in (real.home / "raw").rglob("*.*"))
            print_per_core("brain MRI (real)", per_core(real, real_raw), len(real_raw))
        if args.per_core_only:
            return
        rows = measure("generated 256x256", workdir / "generated", workdir, args.gtda)
        if REAL_SET.is_dir():
            rows += measure("brain MRI (real)", REAL_SET, workdir, args.gtda)
        print(f"{'images':<20}{'stage':<42}{'seconds':>9}{'images/s':>10}{'x floor':>9}")
        for name, stage, seconds, n in rows:
            floor = next(s for nm, st, s, _ in rows if nm == name and st == "decode floor, 1 process")
            print(f"{name:<20}{stage:<42}{seconds:>9.2f}{n / seconds:>10.0f}{seconds / floor:>9.2f}")
        conveyor = {name: s for name, st, s, _ in rows if st.startswith("conveyor")}
        for name, stage, seconds, _ in rows:
            if stage.startswith("giotto"):
                print(f"{name}: conveyor is {seconds / conveyor[name]:.1f}x faster than giotto-tda end to end")
        if args.memory:
            small, large = peak_memory(args.n, workdir), peak_memory(4 * args.n, workdir)
            print(f"{'images':>8}{'main MiB':>10}{'worker MiB':>12}")
            for n, (main_mib, worker_mib) in ((args.n, small), (4 * args.n, large)):
                print(f"{n:>8}{main_mib:>10}{worker_mib:>12}")
            ratio = (large[0] + large[1]) / (small[0] + small[1])
            print(f"peak memory ratio {4 * args.n} vs {args.n} images: {ratio:.2f}")


if __name__ == "__main__":
    main()
