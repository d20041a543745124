"""Serving speed: the same registered model behind ``conveyor serve`` and behind ``mlflow models serve``.

Trains a small champion on generated demo data (in a temporary workspace), starts both servers on 127.0.0.1, and
sends the same 224x224 JPEGs at concurrency 1, 8 and 32 for a bounded time each (loopback only). Prints requests
per second, p50/p99 latency, errors and each server's resident memory at start and end, and the throughput ratio.

Usage: python benchmarks/serve.py [--seconds 8] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset, render_slice
from conveyor.training.train import train

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, in MiB (from /proc)."""
    total = 0
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(p) for p in child.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds} s")


def jpegs(n: int = 32) -> list[bytes]:
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(render_slice(np.random.default_rng(i), 224, tumour=i % 2 == 1)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


async def load(send, images: list[bytes], concurrency: int, seconds: float) -> tuple[int, int, list[float]]:  # type: ignore[no-untyped-def]
    """``concurrency`` clients send images back to back for ``seconds``; returns (ok, errors, latencies in ms)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        i = index
        async with httpx.AsyncClient(timeout=30) as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    status = await send(http, images[i % len(images)])
                except httpx.HTTPError:
                    status = 0
                if status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1
                i += concurrency

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return len(latencies), errors, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "ws"
        settings = Settings(
            home=home,
            features={"extractors": ["intensity", "stats"]},
            training={"families": ["logreg"], "extractors": ["stats"]},
        )  # type: ignore[arg-type]
        generate_dataset(Path(tmp) / "src", SyntheticSpec(n_per_class=40, size=160, seed=1))
        ingest(Path(tmp) / "src", settings)
        result = train(settings)
        print(f"champion: version {result.registered_version}, {result.best.name}")
        env = {
            **os.environ,
            "CONVEYOR_HOME": str(home),
            "CONVEYOR_FEATURES__EXTRACTORS": '["intensity", "stats"]',
            "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        ours, theirs = free_port(), free_port()
        servers = {
            "conveyor serve": subprocess.Popen(
                [str(BIN / "conveyor"), "serve", "--port", str(ours), "--no-access-log", "--log-level", "warning"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ),
            "mlflow models serve": subprocess.Popen(
                [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{settings.model_name}@champion",
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(theirs)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ),
        }  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{ours}/readyz")
            wait_ready(f"http://127.0.0.1:{theirs}/ping")
            images = jpegs()

            async def conveyor_send(http: httpx.AsyncClient, image: bytes) -> int:
                response = await http.post(
                    f"http://127.0.0.1:{ours}/v1/predict", files={"file": ("x.jpg", image, "image/jpeg")}
                )
                return response.status_code

            async def mlflow_send(http: httpx.AsyncClient, image: bytes) -> int:
                body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
                response = await http.post(
                    f"http://127.0.0.1:{theirs}/invocations",
                    content=json.dumps(body),
                    headers={"Content-Type": "application/json"},
                )
                return response.status_code

            senders = {"conveyor serve": conveyor_send, "mlflow models serve": mlflow_send}
            rows = []
            for name, process in servers.items():
                start_mib = rss_mib(process.pid)
                for level in levels:
                    ok, errors, latencies = asyncio.run(load(senders[name], images, level, args.seconds))
                    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
                    rows.append((name, level, ok / args.seconds, p50, p99, errors, start_mib, rss_mib(process.pid)))
        finally:
            for process in servers.values():
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
    print(f"224x224 JPEGs, loopback, {args.seconds:.0f} s per level, {os.cpu_count()} cores")
    print(f"{'server':<22}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'RSS MiB start/end':>20}")
    for name, level, rate, p50, p99, errors, m0, m1 in rows:
        print(f"{name:<22}{level:>5}{rate:>9.1f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{m0:>11.0f} / {m1:<6.0f}")
    for level in levels:
        ours_rate = next(r[2] for r in rows if r[0] == "conveyor serve" and r[1] == level)
        theirs_rate = next(r[2] for r in rows if r[0] == "mlflow models serve" and r[1] == level)
        print(f"concurrency {level}: conveyor serve / mlflow models serve throughput = {ours_rate / theirs_rate:.1f}x")


if __name__ == "__main__":
    main()
