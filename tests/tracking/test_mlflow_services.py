"""The registered model behind a real `mlflow models serve`, and training against a real `mlflow server` on
PostgreSQL: the embedded defaults are not the only place conveyor works."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.training.train import TrainResult, train
from tests.conftest import _PG_REASON
from tests.training.test_train import small_settings

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def environment(**extra: str) -> dict[str, str]:
    """This environment as an activated virtual environment would have it (mlflow runs uvicorn from PATH)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    root = tmp_path_factory.mktemp("served")
    settings = small_settings(root / "ws")
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=7))
    ingest(root / "src", settings)
    return settings, train(settings)


@pytest.mark.slow
def test_mlflow_models_serve_answers_on_an_image(trained: tuple[Settings, TrainResult], tmp_path: Path) -> None:
    settings, result = trained
    port = free_port()
    env = environment(MLFLOW_TRACKING_URI=settings.resolved_tracking_uri)
    uri = f"models:/{settings.model_name}@champion"
    args = [MLFLOW, "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    process = start(args, env, tmp_path / "serve.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", process)
        image = next((settings.home / "raw").rglob("*.png")).read_bytes()
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            [prediction] = json.loads(response.read())["predictions"]
    finally:
        stop(process)
    assert prediction["label"] in result.classes
    assert prediction["proba_no_tumour"] + prediction["proba_tumour"] == pytest.approx(1.0)


@pytest.fixture
def postgres_database() -> Iterator[str]:
    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    import psycopg

    name = f"conveyor_mlflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.postgres
def test_training_against_an_mlflow_server_on_postgresql(tmp_path: Path, postgres_database: str) -> None:
    from mlflow import MlflowClient

    port = free_port()
    env = environment(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [
        MLFLOW, "server", "--backend-store-uri", postgres_database,
        "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    process = start(args, env, tmp_path / "server.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process)
        server = f"http://127.0.0.1:{port}"
        settings = small_settings(tmp_path / "ws").model_copy(update={"mlflow_tracking_uri": server})
        generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=8))
        ingest(tmp_path / "src", settings)
        result = train(settings)
        version = MlflowClient(tracking_uri=server, registry_uri=server).get_model_version_by_alias(
            settings.model_name, "champion"
        )
    finally:
        stop(process)
    assert (result.registered_version, int(version.version)) == (1, 1)
    assert not (tmp_path / "ws" / "mlflow.db").exists()  # nothing went to the embedded store
    assert any((tmp_path / "artifacts").rglob("MLmodel"))  # the server stored the model's files
