"""deploy/compose.yaml: valid YAML, and the services point conveyor and Airflow at each other consistently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "postgres",
        "mlflow",
        "conveyor-init",
        "conveyor-api",
        "dask-scheduler",
        "dask-worker",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
    }


@pytest.mark.parametrize("service", ["conveyor-api", "airflow-scheduler"])
def test_conveyor_settings_point_at_the_services(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service]["environment"]

    assert env["CONVEYOR_HOME"] == "/workspace"
    assert env["CONVEYOR_DB_URL"].startswith("postgresql+psycopg://conveyor:")
    assert env["CONVEYOR_DB_URL"].endswith("@postgres:5432/conveyor")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["CONVEYOR_COMPUTE__SCHEDULER"] == "${CONVEYOR_SCHEDULER:-tcp://dask-scheduler:8786}"
    assert "workspace:/workspace" in compose["services"][service]["volumes"]


def test_the_dask_workers_see_the_workspace_where_conveyor_does(compose: dict[str, Any]) -> None:
    worker = compose["services"]["dask-worker"]
    assert "workspace:/workspace" in worker["volumes"] and worker["environment"]["CONVEYOR_HOME"] == "/workspace"
    assert worker["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]


@pytest.mark.parametrize("service", ["conveyor-api", "airflow-scheduler", "dask-worker", "mlflow"])
def test_every_reader_of_the_store_gets_the_same_bucket_and_keys(compose: dict[str, Any], service: str) -> None:
    """storage.url is empty (the workspace volume) unless deploy/.env names a bucket; conveyor, its workers and the
    MLflow server (whose artifact destination may be the same bucket) reach it with the same endpoint and keys."""
    env = compose["services"][service]["environment"]
    assert env["AWS_ENDPOINT_URL_S3"] == "${S3_ENDPOINT_URL:-}"
    assert env["AWS_ACCESS_KEY_ID"] == "${S3_ACCESS_KEY_ID:-}"
    assert env["AWS_SECRET_ACCESS_KEY"] == "${S3_SECRET_ACCESS_KEY:-}"
    if service == "mlflow":
        assert (
            "--artifacts-destination=${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}"
            in compose["services"]["mlflow"]["command"]
        )
    else:
        assert env["CONVEYOR_STORAGE__URL"] == "${CONVEYOR_STORAGE_URL:-}"


def test_airflow_runs_conveyor_from_its_own_venv_with_the_dag_folder_mounted(compose: dict[str, Any]) -> None:
    scheduler = compose["services"]["airflow-scheduler"]

    assert scheduler["environment"]["CONVEYOR_BIN"] == "/opt/conveyor-venv/bin/conveyor"
    assert scheduler["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "./airflow/dags:/opt/airflow/dags:ro" in scheduler["volumes"]
    assert (DEPLOY / "airflow" / "dags" / "conveyor_dags.py").is_file()


@pytest.mark.parametrize("path", ["Dockerfile", "airflow/Dockerfile", "postgres/init.sql", "README.md"])
def test_files_compose_refers_to_exist(path: str) -> None:
    assert (DEPLOY / path).is_file()
