"""Serving speed: the same registered model behind ``conveyor serve`` and behind ``mlflow models serve``.

Trains a small champion on generated demo data (in a temporary workspace), starts each server in turn on
127.0.0.1 (alone on the machine), and sends the same 224x224 JPEGs at concurrency 1, 8 and 32 for a bounded time
each (loopback only), with ``wrk`` (Debian's package; C, so the load generator does not eat the 2 cores a Python
client would). Prints requests per second, p50/p99 latency, errors and each server's resident memory (all its
processes) at start and end, and the throughput ratio against ``mlflow models serve`` as it starts by default (one
worker process). Both servers run with their defaults (``conveyor serve``: a scoring process per core); a row for
``mlflow models serve --workers`` with as many processes shows how much of the difference is processes and how
much is work per request.

Usage: python benchmarks/serve.py [--seconds 8] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
    """Resident memory of a process and all its descendants (worker processes), in MiB (from /proc)."""
    total, pending, seen = 0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pending += [int(p) for p in children.read_text().split()]
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
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


WRK_SCRIPT = """
local bodies = {}
local n = tonumber(os.getenv("BODIES"))
for i = 1, n do
  local f = io.open(os.getenv("BODY_DIR") .. "/" .. i .. ".bin", "rb")
  bodies[i] = f:read("*a")
  f:close()
end
local k = 0
request = function()
  k = k % n + 1
  return wrk.format("POST", nil, {["Content-Type"] = os.getenv("CTYPE")}, bodies[k])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f %.3f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def load(
    url: str, bodies: list[bytes], content_type: str, concurrency: int, seconds: float, tmp: Path
) -> tuple[float, int, float, float]:
    """wrk (C, one thread) sends the bodies in turn over ``concurrency`` connections; (req/s, errors, p50, p99 ms)."""
    folder = tmp / f"bodies-{abs(hash(content_type))}"
    folder.mkdir(exist_ok=True)
    for i, body in enumerate(bodies, start=1):
        (folder / f"{i}.bin").write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BODY_DIR": str(folder), "BODIES": str(len(bodies)), "CTYPE": content_type}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "10s", "-s", str(script), url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(text for text in out.splitlines() if text.startswith("RESULT"))
    requests, errors, duration_us, p50, p99 = line.split()[1:]
    return int(requests) / (int(duration_us) / 1e6), int(errors), float(p50), float(p99)


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "conveyorbenchmarkboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


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
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        cores = len(os.sched_getaffinity(0))
        mlflow_n = f"mlflow models serve -w {cores}"
        model_uri = f"models:/{settings.model_name}@champion"
        mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1"]
        images = jpegs()
        ours_type = multipart(images[0])[1]
        ours_bodies = [multipart(image)[0] for image in images]
        theirs_bodies = [
            json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(i).decode()]]}}).encode()
            for i in images
        ]
        servers = {  # name: (command without the port, ready path, predict path, bodies, content type)
            "conveyor serve": (
                [str(BIN / "conveyor"), "serve", "--no-access-log", "--log-level", "warning", "--port"],
                "/readyz", "/v1/predict", ours_bodies, ours_type,
            ),
            "mlflow models serve": ([*mlflow, "-p"], "/ping", "/invocations", theirs_bodies, "application/json"),
            mlflow_n: ([*mlflow, "-w", str(cores), "-p"], "/ping", "/invocations", theirs_bodies, "application/json"),
        }  # fmt: skip
        rows = []
        for name, (command, ready, path, bodies, content_type) in servers.items():  # one at a time: the machine is
            port = free_port()  # the server's alone
            process = subprocess.Popen(
                [*command, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            try:
                wait_ready(f"http://127.0.0.1:{port}{ready}")
                start_mib = rss_mib(process.pid)
                for level in levels:
                    url = f"http://127.0.0.1:{port}{path}"
                    rate, errors, p50, p99 = load(url, bodies, content_type, level, args.seconds, Path(tmp))
                    rows.append((name, level, rate, p50, p99, errors, start_mib, rss_mib(process.pid)))
            finally:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
    print(f"224x224 JPEGs, loopback, {args.seconds:.0f} s per level, {cores} cores")
    print(f"{'server':<28}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'RSS MiB start/end':>20}")
    for name, level, rate, p50, p99, errors, m0, m1 in rows:
        print(f"{name:<28}{level:>5}{rate:>9.1f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{m0:>11.0f} / {m1:<6.0f}")
    for level in levels:
        rate = {name: r[2] for r in rows for name in servers if r[0] == name and r[1] == level}
        print(
            f"concurrency {level}: conveyor serve / mlflow models serve throughput = "
            f"{rate['conveyor serve'] / rate['mlflow models serve']:.1f}x "
            f"({rate['conveyor serve'] / rate[mlflow_n]:.1f}x against {mlflow_n})"
        )


if __name__ == "__main__":
    main()
