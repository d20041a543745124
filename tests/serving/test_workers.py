"""``conveyor serve --workers 2``: a real server with two scoring processes answers, takes feedback and counts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.conftest import FEEDBACK_TOKENS, clinician, png

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(
    url: str, data: bytes | None = None, content_type: str = "application/json", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"content-type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # a new connection each time
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def body_of(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "label": "tumour"}).encode()


@pytest.fixture
def server(home: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "CONVEYOR_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["CONVEYOR_SERVING__FEEDBACK_TOKENS"] = json.dumps(FEEDBACK_TOKENS)
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "conveyor", "serve", "--port", str(port), "--workers", "2", "--log-level",
               "warning", "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if call(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            time.sleep(0.3)
        else:
            pytest.fail("conveyor serve --workers 2 did not become ready in 90 s")
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def test_a_server_with_scoring_processes_answers_takes_feedback_and_counts(server: str) -> None:
    ids = []
    for seed in range(8):
        status, body = call(f"{server}/v1/predict", png(seed), "application/octet-stream")
        assert status == 200
        ids.append(json.loads(body)["request_id"])
    for request_id in ids:
        status, body = call(
            f"{server}/v1/feedback",
            json.dumps({"request_id": request_id, "label": "tumour"}).encode(),
            headers=clinician(),
        )
        assert status == 200, body
    status, text = call(f"{server}/metrics")
    counts = re.findall(rb'^conveyor_predictions_total\{[^}]*arm="champion"[^}]*\} ([0-9.]+)$', text, re.MULTILINE)
    assert sum(float(c) for c in counts) == 8.0
    feedback = re.findall(rb'^conveyor_http_requests_total\{[^}]*route="/v1/feedback"[^}]*\} ([0-9.]+)$', text, re.M)
    assert sum(float(c) for c in feedback) == 8.0


def test_an_unknown_request_id_is_still_404(server: str) -> None:
    status, body = call(
        f"{server}/v1/feedback",
        json.dumps({"request_id": "no-such-id", "label": "tumour"}).encode(),
        headers=clinician(),
    )
    assert status == 404
    assert json.loads(body)["detail"] == "no prediction with request id 'no-such-id'"
