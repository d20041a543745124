"""Training speed and selection quality: the full grid against the race (the default), and a refit after new data.

For each real set (``../shared/data/brain_mri_yes_no`` and ``../shared/data/brain_mri_4class_train``): ingest 80% of
its files into a temporary workspace and compute the features (timed apart: every mode shares them), then train
with ``--search grid`` (every candidate's whole grid, 5-fold CV: the reference) and with ``--search race``, ingest
the other 20% (25% new images) and train with ``--search refit``. Prints, per run, wall seconds, fits, the chosen
candidate with its CV score ± std (``training.metric``, balanced accuracy by default) and the calibrated winner's
test value of it, then the ratios: grid / race time, refit / grid time (wall seconds, and
CPU seconds of the process and its workers, which whatever else the machine ran meanwhile does not change), and
whether the race's pick is within the noise (one CV standard deviation) of the grid's.

Usage: python benchmarks/train.py [--sets yes_no,4class] [--modes grid,race,refit] [--families ...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.features.store import compute_features
from conveyor.training.train import TrainResult, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"yes_no": DATA / "brain_mri_yes_no", "4class": DATA / "brain_mri_4class_train"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}


def split_source(source: Path, first: Path, later: Path, later_every: int = 5) -> tuple[int, int]:
    """Copy the set's files into two label folders: every ``later_every``-th file (by sorted name) arrives later."""
    counts = [0, 0]
    for label in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in label.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for index, path in enumerate(files):
            target = (later if index % later_every == later_every - 1 else first) / label.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            counts[target.is_relative_to(later)] += 1
    return counts[0], counts[1]


def cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each of its live descendants (the search's workers), read
    from /proc (Linux)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, ppid in parent.items() if ppid in mine} - mine
        grew = bool(found)
        mine |= found
    return {pid: used[pid] for pid in mine if pid in used}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a worker born in between counts whole)."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def row(name: str, seconds: float, result: TrainResult, cpu: float = float("nan")) -> dict[str, Any]:
    best = result.best
    assert best.test is not None
    return {
        "run": name,
        "seconds": seconds,
        "cpu": cpu,
        "fits": result.search.fits,
        "n_train": best.n,
        "pick": best.name,
        "cv": best.cv_score,
        "cv_std": best.cv_score_std,
        "test": getattr(result.calibrated, result.metric),
    }


def bench(set_name: str, modes: list[str], families: list[str] | None) -> list[dict[str, Any]]:
    source = SETS[set_name]
    if not source.is_dir():
        print(f"{set_name}: {source} is absent, skipped")
        return []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        first, later = Path(tmp) / "first", Path(tmp) / "later"
        n_first, n_later = split_source(source, first, later)
        training: dict[str, Any] = {} if families is None else {"families": families}
        settings = Settings(home=Path(tmp) / "ws", training=training)  # type: ignore[arg-type]
        began = time.perf_counter()
        ingest(first, settings)
        compute_features(settings)
        prepared = time.perf_counter() - began
        print(f"{set_name}: {n_first} files first, {n_later} later; ingest + features {prepared:.0f} s", flush=True)
        for mode in [m for m in modes if m != "refit"]:
            began, cpu = time.perf_counter(), cpu_seconds()
            result = train(settings, mode=mode, on_progress=_progress(mode, began))
            rows.append(row(mode, time.perf_counter() - began, result, cpu_used(cpu, cpu_seconds())))
            print(f"  {mode}: {rows[-1]['seconds']:.0f} s, pick {rows[-1]['pick']}", flush=True)
            for r in result.search.rounds:
                print(f"    round {r['round']}: {r['configs']} configs on {r['n']} images x {r['folds']} folds, "
                      f"{r['seconds']:.0f} s", flush=True)  # fmt: skip
            for c in result.candidates:
                if c.stage == "final":
                    cv = f"{c.cv_score:.3f} ± {c.cv_score_std:.3f}"
                    print(f"    finalist {c.name}: CV {cv}, {c.fit_seconds:.0f} s of fits")
        if "refit" in modes:
            began = time.perf_counter()
            ingest(later, settings)
            compute_features(settings)
            print(f"  +{n_later} new images: ingest + features {time.perf_counter() - began:.0f} s", flush=True)
            began, cpu = time.perf_counter(), cpu_seconds()
            result = train(settings, mode="refit")
            rows.append(row("refit (+25% images)", time.perf_counter() - began, result, cpu_used(cpu, cpu_seconds())))
    return rows


def _progress(mode: str, began: float) -> Any:
    """Prints fits done / planned about every 30 s (a long grid can be extrapolated from it)."""
    last = [began]

    def show(done: int, total: int, best: str | None, score: float | None) -> None:
        now = time.perf_counter()
        if now - last[0] >= 30:
            last[0] = now
            print(f"    {mode}: {done}/{total} fits after {now - began:.0f} s (best so far {best})", flush=True)

    return show


def report(set_name: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print(f"\n{set_name}")
    print(
        f"{'run':<22}{'seconds':>9}{'CPU s':>9}{'fits':>7}  {'chosen candidate':<34}{'CV score ± std':>16}{'test':>9}"
    )
    for r in rows:
        print(
            f"{r['run']:<22}{r['seconds']:>9.1f}{r['cpu']:>9.0f}{r['fits']:>7}  {r['pick']:<34}"
            f"{r['cv']:>9.3f} ± {r['cv_std']:.3f}{r['test']:>9.3f}"
        )
    by = {r["run"].split()[0]: r for r in rows}
    if "grid" in by and "race" in by:
        grid, race = by["grid"], by["race"]
        within = race["cv"] >= grid["cv"] - grid["cv_std"]
        print(
            f"grid / race time: {grid['seconds'] / race['seconds']:.1f}x wall, {grid['cpu'] / race['cpu']:.1f}x CPU; "
            f"race's pick CV {race['cv']:.3f} vs grid's "
            f"{grid['cv']:.3f} ± {grid['cv_std']:.3f}: {'within' if within else 'OUTSIDE'} the noise"
        )
    if "refit" in by:
        for base in ("grid", "race"):
            if base in by:
                share = by["refit"]["seconds"] / by[base]["seconds"]
                cpu_share = by["refit"]["cpu"] / by[base]["cpu"]
                print(f"refit / {base} time: {share:.1%} wall, {cpu_share:.1%} CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="yes_no,4class")
    parser.add_argument("--modes", default="grid,race,refit")
    parser.add_argument("--families", default=None, help="comma-separated; default training.families")
    args = parser.parse_args()
    families = args.families.split(",") if args.families else None
    results = {name: bench(name, args.modes.split(","), families) for name in args.sets.split(",")}
    for name, rows in results.items():
        report(name, rows)


if __name__ == "__main__":
    main()
