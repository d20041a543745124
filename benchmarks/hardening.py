"""The hardening campaign, run again: hostile inputs, kills, a scoring process killed under load, schemathesis.

1. Bad inputs: the hostile folder and zip of ``tests/data/test_bad_corpus.py`` plus mutated real images (bytes
   flipped, cut short, headers garbled: PNG, JPEG and DICOM). Tried / ended with a clear reason (a known code and a
   sentence) / crashes (an exception out of ingest) / lost (inputs without a ledger row).
2. Kills: ``conveyor ingest`` and ``conveyor features`` killed with SIGKILL at random moments, then run again to the
   end. Trials / inputs lost / doubled (ledger rows or feature rows more than once).
3. Load with one scoring process killed: ``conveyor serve`` (a scoring process per core) under steady requests, one
   scoring process killed with SIGKILL mid-way. Answers, answers lost (not 200), the longest gap between two answers.
4. schemathesis against the live server's OpenAPI document, valid and invalid requests, every check: 5xx answers and
   schema mismatches.

Usage: python benchmarks/hardening.py [--mutations 150] [--kills 6] [--seconds 12] [--examples 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the corpus builders of the tests: the campaign feeds the same hostile inputs

from benchmarks.serve import free_port, multipart, wait_ready  # noqa: E402
from tests.data.test_bad_corpus import build_hostile_folder, build_hostile_zip  # noqa: E402
from tests.helpers import encode, gradient, png_bytes, pydicom_file  # noqa: E402

from conveyor.config import Settings  # noqa: E402
from conveyor.data.decode import REASONS  # noqa: E402
from conveyor.data.ingest import ingest  # noqa: E402
from conveyor.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402
from conveyor.store.db import get_engine, session_scope  # noqa: E402
from conveyor.store.models import Image, IngestFile  # noqa: E402

BIN = Path(sys.executable).parent


def mutations(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` damaged copies of real images: random bytes flipped, cut at a random point, or the header garbled."""
    rng = random.Random(seed)
    originals = {
        "png": png_bytes(96, 96, seed=1),
        "jpg": encode(gradient(96, 96, seed=2), "JPEG"),
        "dcm": pydicom_file("CT_small.dcm"),
        "mr.dcm": pydicom_file("MR_small.dcm"),
    }
    out = []
    for index in range(n):
        ext, data = rng.choice(sorted(originals.items()))
        damaged = bytearray(data)
        kind = rng.choice(["flip", "cut", "header"])
        if kind == "flip":
            for _ in range(rng.randint(1, 20)):
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            damaged = damaged[: rng.randrange(1, len(damaged))]
        else:
            start = rng.randrange(0, min(400, len(damaged)))
            damaged[start : start + 64] = rng.randbytes(64)
        out.append((f"{kind}-{index:04d}.{ext}", bytes(damaged)))
    return out


def bad_inputs(tmp: Path, n_mutations: int) -> dict[str, int]:
    settings = Settings(home=tmp / "ws-bad", ingest={"min_side": 32, "label_pattern": "[a-z_]+"})  # type: ignore[arg-type]
    sources = [build_hostile_folder(tmp / "hostile"), build_hostile_zip(tmp / "hostile.zip")]
    mutated = tmp / "mutated"
    for name, data in mutations(n_mutations):
        (mutated / "damaged").mkdir(parents=True, exist_ok=True)
        (mutated / "damaged" / name).write_bytes(data)
    sources.append(mutated)
    tally = {"tried": 0, "clear reason": 0, "stored": 0, "crashes": 0, "lost": 0}
    for source in sources:
        try:
            summary = ingest(source, settings)
        except Exception as exc:  # a crash: the campaign counts it and goes on
            print(f"  CRASH on {source}: {type(exc).__name__}: {exc}")
            tally["crashes"] += 1
            continue
        tally["tried"] += summary.seen
        tally["stored"] += summary.stored + summary.duplicates + summary.conflicts
        tally["clear reason"] += sum(1 for r in summary.rejected if r["reason"] in REASONS and r["detail"])
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        rows = session.scalar(select(func.count()).select_from(IngestFile)) or 0
    tally["lost"] = tally["tried"] - rows
    return tally


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CONVEYOR_HOME": str(home),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def kills(tmp: Path, trials: int) -> dict[str, int]:
    """Kill ingest and features at random moments, then finish; count what is lost or doubled."""
    source = tmp / "kill-src"
    paths = generate_dataset(source, SyntheticSpec(n_per_class=300, size=96, seed=7))
    home = tmp / "ws-kill"
    settings = Settings(home=home)
    rng = random.Random(1)
    killed = 0
    for command in (["ingest", str(source)], ["features"]):
        for _ in range(trials):
            process = subprocess.Popen(
                [str(BIN / "conveyor"), *command, "--json"], env=_env(home), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            time.sleep(rng.uniform(0.5, 3.0))
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                killed += 1
            process.wait()
        finished = subprocess.run(
            [str(BIN / "conveyor"), *command, "--json"], env=_env(home), capture_output=True, text=True, check=False
        )
        assert finished.returncode == 0, finished.stdout + finished.stderr
    from conveyor.features.store import configured_extractors, read_table, table_for

    with session_scope(get_engine(settings.resolved_db_url)) as session:
        rows = session.scalar(select(func.count()).select_from(IngestFile)) or 0
        distinct = session.scalar(select(func.count(func.distinct(IngestFile.relpath)))) or 0
        images = session.scalar(select(func.count()).select_from(Image)) or 0
    doubled = rows - distinct
    for extractor in configured_extractors(settings):
        table = read_table(table_for(settings, extractor).path)
        doubled += int(table.index.duplicated().sum())
        missing = images - len(table)
        if missing:
            print(f"  features {extractor}: {missing} images without features after the final run")
    leftovers = len(list(home.rglob("*.tmp")))
    return {
        "trials": 2 * trials, "killed": killed, "inputs": len(paths), "lost": len(paths) - distinct,
        "doubled": doubled, "partial files left": leftovers,
    }  # fmt: skip


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def _scoring_processes(server: int) -> list[int]:
    pids = []
    for pid in _children(server):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            pids.append(pid)
    return pids


def trained_workspace(tmp: Path) -> Settings:
    from conveyor.training.train import train

    settings = Settings(
        home=tmp / "ws-serve",
        features={"extractors": ["intensity", "stats"]},
        training={"families": ["logreg"], "extractors": ["stats"]},
    )  # type: ignore[arg-type]
    generate_dataset(tmp / "serve-src", SyntheticSpec(n_per_class=40, size=96, seed=1))
    ingest(tmp / "serve-src", settings)
    train(settings)
    return settings


def load_with_a_kill(settings: Settings, seconds: float) -> dict[str, Any]:
    port = free_port()
    env = _env(settings.home, CONVEYOR_FEATURES__EXTRACTORS='["intensity", "stats"]', OMP_NUM_THREADS="1")
    env["MLFLOW_TRACKING_URI"] = settings.resolved_tracking_uri
    server = subprocess.Popen(
        [str(BIN / "conveyor"), "serve", "--no-access-log", "--log-level", "warning", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        body, content_type = multipart(png_bytes(96, 96, seed=3))
        results: list[tuple[float, int]] = []
        stop = time.monotonic() + seconds

        def client() -> None:
            while time.monotonic() < stop:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/predict", data=body, headers={"Content-Type": content_type}
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except OSError:
                    status = 0  # connection dropped
                results.append((time.monotonic(), status))

        threads = [threading.Thread(target=client) for _ in range(4)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(seconds / 3)
        victims = _scoring_processes(server.pid)
        os.kill(victims[0], signal.SIGKILL)
        for thread in threads:
            thread.join()
        ok = sorted(t for t, status in results if status == 200)
        gaps = [b - a for a, b in zip([began, *ok], ok, strict=False)]
        return {
            "scoring processes": len(victims), "answers": len(results), "lost": sum(s != 200 for _, s in results),
            "statuses": sorted({s for _, s in results}), "longest gap s": round(max(gaps), 2),
        }  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def schemathesis_run(settings: Settings, examples: int) -> dict[str, int]:
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    from conveyor.serving import create_app

    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tally = {"requests": 0, "5xx": 0, "mismatches": 0}
    kinds: set[str] = set()
    for operation in schema.get_all_operations():
        op = operation.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @hsettings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                tally["requests"] += 1
                try:
                    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
                    tally["5xx"] += response.status_code >= 500
                except Exception as exc:
                    text = str(exc)
                    tally["5xx" if "Server error" in text else "mismatches"] += 1
                    kinds.add(f"{case.method} {case.path}: {text.splitlines()[2:3]}")

            with contextlib.suppress(Exception):  # an operation without invalid requests to generate
                check()
    for kind in sorted(kinds):
        print(f"  schemathesis: {kind}")
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=150)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--examples", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("bad inputs:", json.dumps(bad_inputs(root, args.mutations)), flush=True)
        print("kills:", json.dumps(kills(root, args.kills)), flush=True)
        settings = trained_workspace(root)
        print("load, one scoring process killed:", json.dumps(load_with_a_kill(settings, args.seconds)), flush=True)
        print("schemathesis:", json.dumps(schemathesis_run(settings, args.examples)), flush=True)


if __name__ == "__main__":
    main()
