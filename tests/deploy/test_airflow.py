"""The Airflow DAGs of deploy/airflow/dags, run by a real Apache Airflow 3.3 in its own virtual environment.

The environment is created once and cached under the temp folder, keyed by the Airflow version and Python version
(``$TMPDIR/conveyor-airflow-3.3.x-py3.11``; ``CONVEYOR_AIRFLOW_VENV`` overrides the path); without network access to
PyPI the tests skip, saying so. Airflow never imports conveyor: the tasks run the main environment's ``conveyor`` CLI
(``CONVEYOR_BIN``). The demo workspace is made once per module with ``conveyor demo`` and a small, fast training
grid (logistic regression only) set through the environment, which the DAG tasks inherit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "deploy" / "airflow" / "dags"
RUNNER = Path(__file__).with_name("airflow_run.py")
AIRFLOW_SPEC = "3.3.*"
# psycopg 3 drives both Airflow's sync and async PostgreSQL engines (psycopg2 would need asyncpg for the async one).
AIRFLOW_PACKAGES = [f"apache-airflow=={AIRFLOW_SPEC}", "psycopg[binary]>=3.2"]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONVEYOR_BIN = Path(sys.executable).with_name("conveyor")
# A small, quick training grid: the DAGs' wiring is under test here, not the models.
FAST_TRAINING = {
    "CONVEYOR_TRAINING__FAMILIES": '["logreg"]',
    "CONVEYOR_TRAINING__CV_FOLDS": "3",
    "CONVEYOR_TRAINING__BOOTSTRAP": "100",
    "CONVEYOR_MONITORING__RETRAIN__MIN_NEW_LABELLED": "10",
    "CONVEYOR_QUIET_SECONDS": "0",
}


def _venv_path() -> Path:
    override = os.environ.get("CONVEYOR_AIRFLOW_VENV")
    if override:
        return Path(override)
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(tempfile.gettempdir()) / f"conveyor-airflow-{AIRFLOW_SPEC.replace('*', 'x')}-{py}"


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The Airflow environment's python: made once (built aside, then renamed into place), reused after."""
    venv = _venv_path()
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    building = venv.with_name(f"{venv.name}.building-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True, text=True)
        pip = [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        result = subprocess.run([*pip, *AIRFLOW_PACKAGES], capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            pytest.skip(f"cannot install {' '.join(AIRFLOW_PACKAGES)} (no access to PyPI?): {result.stderr[-400:]}")
        (building / ".complete").write_text(f"built in {time.perf_counter() - started:.0f} s\n")
        with contextlib.suppress(OSError):  # another session finished first: use theirs
            building.rename(venv)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"Airflow environment {venv}: created in {time.perf_counter() - started:.0f} s")
    return python


def _airflow_env(home: Path, workspace: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONVEYOR_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        CONVEYOR_HOME=str(workspace),
        CONVEYOR_BIN=str(CONVEYOR_BIN),
        **FAST_TRAINING,
    )
    env.update(extra)
    return env


def _migrate(python: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(python), "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _run(python: Path, env: dict[str, str], *args: str) -> tuple[dict[str, Any], str]:
    """Run airflow_run.py in the Airflow environment; its JSON result and the whole log."""
    result = subprocess.run(
        [str(python), str(RUNNER), *args], env=env, capture_output=True, text=True, timeout=1200, cwd=ROOT
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), log


def _generate(root: Path, n_per_class: int, seed: int, prefix: str) -> None:
    from conveyor.data.synthetic import SyntheticSpec, generate_dataset

    generate_dataset(root, SyntheticSpec(n_per_class=n_per_class, seed=seed), prefix=prefix)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with demo images ingested, their features computed and a champion registered.

    Built with the stable stage commands (not ``conveyor demo``, whose story also files batches into ``incoming/``).
    """
    root = tmp_path_factory.mktemp("airflow-ws")
    home = root / "ws"
    _generate(root / "original", n_per_class=20, seed=0, prefix="case")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}, **FAST_TRAINING}
    env["CONVEYOR_HOME"] = str(home)
    out: dict[str, Any] = {}
    for args in (["init"], ["ingest", str(root / "original")], ["features"], ["train"]):
        result = subprocess.run(
            [str(CONVEYOR_BIN), *args, "--json"], env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        out = json.loads(result.stdout)
    assert out["registered_version"] == 1, out.get("gate")
    return home


@pytest.fixture(scope="module")
def sqlite_env(airflow_python: Path, workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Airflow with its SQLite metadata DB in a fresh AIRFLOW_HOME, pointed at the demo workspace."""
    env = _airflow_env(tmp_path_factory.mktemp("airflow-home"), workspace)
    _migrate(airflow_python, env)
    return env


def test_dag_folder_imports_with_no_errors(airflow_python: Path, sqlite_env: dict[str, str]) -> None:
    out, _ = _run(airflow_python, sqlite_env, str(DAGS), "import-check")

    assert out == {"import_errors": {}, "dag_ids": ["conveyor_ingest", "conveyor_monitor", "conveyor_train"]}


def test_ingest_dag_ingests_the_path_param_then_computes_features(
    airflow_python: Path, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    _generate(tmp_path / "new", n_per_class=3, seed=90101, prefix="dag")

    out, _ = _run(airflow_python, sqlite_env, str(DAGS), "conveyor_ingest", json.dumps({"path": str(tmp_path / "new")}))

    assert out["state"] == "success"
    assert out["tasks"] == {"ingest": "success", "features": "success"}
    ingested = out["xcom"]["ingest"]
    assert (ingested["seen"], ingested["stored"], ingested["quarantined"]) == (6, 6, 0)
    assert out["xcom"]["features"]["computed"] == 6
    assert out["xcom"]["features"]["failed"] == []


def test_failed_command_fails_the_task_with_the_cli_message(
    airflow_python: Path, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder"

    out, log = _run(airflow_python, sqlite_env, str(DAGS), "conveyor_ingest", json.dumps({"path": str(missing)}))

    assert out["state"] == "failed"
    assert out["tasks"] == {"ingest": "failed", "features": "upstream_failed"}
    assert "conveyor ingest" in log
    assert "failed (exit status 1)" in log
    assert str(missing) in log


def test_monitor_dag_runs_the_watcher_on_the_drop_folder_through_to_the_rollout(
    airflow_python: Path, sqlite_env: dict[str, str], workspace: Path
) -> None:
    incoming = workspace / "incoming"
    _generate(incoming, n_per_class=6, seed=90202, prefix="filed")

    out, _ = _run(airflow_python, sqlite_env, str(DAGS), "conveyor_monitor")

    assert out["state"] == "success"
    assert out["tasks"] == {"wait_for_files": "success", "process": "success"}
    assert out["xcom"]["wait_for_files"] == 12
    [batch] = out["xcom"]["process"]["batches"]
    assert (batch["files"], batch["status"]) == (12, "success")
    assert (incoming / ".processed" / batch["batch"] / "tumour").is_dir()
    left = [p for label in incoming.iterdir() if not label.name.startswith(".") for p in label.rglob("*")]
    assert left == [], "every file was moved out of the drop folder"
    monitor = batch["outputs"]["monitor"]
    assert monitor["retrain"]["retrain"] is True
    assert batch["outputs"]["train"]["registered_version"] == 2
    assert batch["outputs"]["rollout"]["mode"] == "canary"  # the same rollout step as `conveyor watch`


def test_train_dag_registers_a_version_in_its_xcom(airflow_python: Path, sqlite_env: dict[str, str]) -> None:
    out, log = _run(airflow_python, sqlite_env, str(DAGS), "conveyor_train")

    assert out["state"] == "success"
    assert out["tasks"] == {"train": "success"}
    result = out["xcom"]["train"]
    assert result["registered_version"] >= 2
    assert f"registered version: {result['registered_version']}" in log


# ----------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres_db() -> Any:
    """A fresh database on 127.0.0.1:5432 for Airflow's metadata, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"conveyor_airflow_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_dags_run_with_postgresql_as_airflow_metadata_db(
    airflow_python: Path, workspace: Path, postgres_db: str, tmp_path: Path
) -> None:
    env = _airflow_env(
        tmp_path / "airflow-home",
        workspace,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres_db,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=postgres_db,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
    )
    _migrate(airflow_python, env)
    _generate(tmp_path / "new", n_per_class=2, seed=90303, prefix="pg")

    out, _ = _run(airflow_python, env, str(DAGS), "conveyor_ingest", json.dumps({"path": str(tmp_path / "new")}))

    assert out["state"] == "success"
    assert out["xcom"]["ingest"]["stored"] == 4
    assert [r["dag_id"] for r in out["runs"]] == ["conveyor_ingest"]
