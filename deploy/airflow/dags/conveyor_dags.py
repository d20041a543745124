"""conveyor's three pipelines as Apache Airflow 3 DAGs: ``conveyor_ingest``, ``conveyor_train``, ``conveyor_monitor``.

Airflow pins an older FastAPI than conveyor, so the two live in separate virtual environments and these DAGs never
import conveyor: every task runs conveyor's CLI with ``--json`` (the executable named by ``CONVEYOR_BIN``, default
``conveyor`` on the PATH), passes the worker's environment through (``CONVEYOR_HOME``, ``CONVEYOR_DB_URL``,
``MLFLOW_TRACKING_URI``, ...), reads the one JSON object it prints, and fails with the CLI's own error message when it
exits non-zero. A ConveyorError (exit status 1: bad input, no champion, ...) fails the task without retries, since
running it again gives the same answer; any other exit status (killed, out of memory) is retried. What a task keeps
in XCom is what the command's exported JSON schema lists (``conveyor schema NAME``), and a task whose output lacks a
field the schema requires fails.

* ``conveyor_ingest``: manual, param ``path`` (a folder of ``<label>/`` folders, or a zip): ``ingest``, ``features``.
* ``conveyor_train``: manual or triggered by the monitor -> ``train``; the registered version is in its XCom.
* ``conveyor_monitor``: always waiting (``@continuous``, one run at a time) on a sensor (``conveyor watch --check``)
  that fires when files have landed in ``$CONVEYOR_HOME/incoming/<label>/`` and stayed unchanged for the quiet time
  (``--quiet-seconds``: ``CONVEYOR_QUIET_SECONDS`` when set, else the CLI's default), then runs
  ``conveyor watch --once``: the same code as ``conveyor watch`` takes them into a batch under
  ``incoming/.batches/`` and runs the monitor pipeline on it (ingest, features, monitor, a retrain when the policy
  says so, the new challenger's rollout). A manual run with ``path`` runs ``conveyor run monitor --path``.

This module only defines DAGs: nothing is read, run or connected when Airflow parses it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, PokeReturnValue, dag, task
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

START = datetime(2025, 1, 1)
TAGS = ["conveyor"]


class ConveyorCommandError(AirflowFailException):
    """conveyor exited with status 1 (a ConveyorError): a clear message, and retrying would not help."""


def conveyor_bin() -> str:
    """The conveyor executable: ``CONVEYOR_BIN``, or ``conveyor`` on the PATH."""
    return os.environ.get("CONVEYOR_BIN") or "conveyor"


def conveyor_home() -> Path:
    """The workspace, as conveyor resolves it: ``CONVEYOR_HOME``, default ``./workspace``."""
    return Path(os.environ.get("CONVEYOR_HOME") or "workspace").resolve()


def run_conveyor(*args: str) -> dict[str, Any]:
    """Run ``conveyor ARGS --json`` with this process's environment and return the JSON object it printed.

    stderr (warnings, MLflow's messages) is copied into the task log line by line as it comes.

    Raises:
        ConveyorCommandError: exit status 1; the message is the CLI's ``error``.
        RuntimeError: any other non-zero exit status, or no JSON object on stdout.
    """
    command = [conveyor_bin(), *args, "--json"]
    log.info("running %s", " ".join(command))
    with tempfile.TemporaryFile("w+", encoding="utf-8") as stdout:
        try:
            process = subprocess.Popen(
                command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=os.environ.copy(), errors="replace"
            )
        except FileNotFoundError as exc:
            raise AirflowFailException(
                f"conveyor executable {command[0]!r} not found: set CONVEYOR_BIN to the path of conveyor's CLI "
                "(in conveyor's own virtual environment)"
            ) from exc
        tail: list[str] = []
        assert process.stderr is not None
        for line in process.stderr:
            log.info("conveyor: %s", line.rstrip())
            tail = [*tail[-19:], line.rstrip()]
        rc = process.wait()
        stdout.seek(0)
        out = stdout.read()
    payload = _last_json_object(out)
    if rc != 0:
        message = (payload or {}).get("error") or "\n".join(tail[-5:]) or out.strip()[-500:] or "no output"
        text = f"conveyor {' '.join(args)} failed (exit status {rc}): {message}"
        if rc == 1:
            raise ConveyorCommandError(text)
        raise RuntimeError(text)
    if payload is None:
        raise RuntimeError(f"conveyor {' '.join(args)} printed no JSON object on stdout: {out.strip()[-500:]!r}")
    log.info("conveyor %s: %s", args[0], json.dumps(payload, default=str)[:20000])
    return payload


def _last_json_object(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that parses as a JSON object (conveyor prints exactly one; be lenient anyway)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def contract(command: str) -> dict[str, Any]:
    """The JSON schema of ``conveyor COMMAND --json``'s output, as conveyor exports it (``conveyor schema COMMAND``):
    these DAGs hold no list of conveyor's fields of their own."""
    return run_conveyor("schema", command)


def run_contracted(command: str, *args: str) -> dict[str, Any]:
    """Run ``conveyor COMMAND ARGS --json`` and keep, for XCom, the fields its exported schema lists (the full JSON
    is in the task log; XCom lives in Airflow's database).

    Raises:
        AirflowFailException: the output lacks a field the schema requires (conveyor and these DAGs disagree).
    """
    schema = contract(command)
    payload = run_conveyor(command, *args)
    missing = [key for key in schema.get("required", []) if key not in payload]
    if missing:
        raise AirflowFailException(
            f"conveyor {command}'s output lacks {', '.join(missing)}, required by its schema "
            f"(conveyor schema {command})"
        )
    return {key: payload[key] for key in schema["properties"] if key in payload}


# ------------------------------------------------------------------------------------------------ drop folder


def quiet_args() -> list[str]:
    """``--quiet-seconds`` from ``CONVEYOR_QUIET_SECONDS`` when it is set; else the CLI's own default."""
    value = os.environ.get("CONVEYOR_QUIET_SECONDS")
    return [] if value is None else ["--quiet-seconds", str(float(value))]


# ------------------------------------------------------------------------------------------------------ DAGs

_DEFAULT_ARGS: dict[str, Any] = {"owner": "conveyor", "retries": 1, "retry_delay": timedelta(minutes=1)}


@dag(
    dag_id="conveyor_ingest",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=TAGS,
    default_args=_DEFAULT_ARGS,
    params={
        "path": Param(
            type="string",
            minLength=1,
            description="Folder of <label>/ (or train|test/<label>/) folders, or a .zip of one, on the worker.",
        ),
        "labels": Param(None, type=["null", "string"], description="Optional CSV path,label[,split]."),
    },
    doc_md="Ingest the images at `path` (validate, store once, dedupe, quarantine, split), then compute features.",
)
def conveyor_ingest() -> None:
    @task
    def ingest(params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert params is not None
        args = ["ingest", str(params["path"])]
        if params.get("labels"):
            args += ["--labels", str(params["labels"])]
        return run_contracted(*args)

    @task(execution_timeout=timedelta(hours=6))
    def features(ingested: dict[str, Any]) -> dict[str, Any]:
        return run_contracted("features")

    features(ingest())


@dag(
    dag_id="conveyor_train",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=TAGS,
    default_args=_DEFAULT_ARGS,
    params={"version": Param(None, type=["null", "string"], description="Dataset version; default the latest.")},
    doc_md="Train every extractor x family candidate, compare with the baselines, register the best if it passes "
    "the gate. XCom `registered_version` is the new model version (null when the gate refused it).",
)
def conveyor_train() -> None:
    @task(execution_timeout=timedelta(hours=12))
    def train(params: dict[str, Any] | None = None) -> dict[str, Any]:
        args = ["train"]
        if params and params.get("version"):
            args += ["--version", str(params["version"])]
        result = run_contracted(*args)
        log.info("registered version: %s (alias %s)", result.get("registered_version"), result.get("alias"))
        return result

    train()


@dag(
    dag_id="conveyor_monitor",
    schedule="@continuous",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=TAGS,
    default_args=_DEFAULT_ARGS,
    params={
        "path": Param(
            None,
            type=["null", "string"],
            description="Monitor this folder instead of waiting for the drop folder (a manual run).",
        )
    },
    doc_md="Wait for files in `incoming/<label>/`, then `conveyor watch --once`: take them as one batch and run the "
    "monitor pipeline on it (drift, model vs dummy baselines, OOD, alerts; a retrain when the policy says so, and the "
    "new challenger's rollout). XCom `process` holds each batch's status and pipeline outputs.",
)
def conveyor_monitor() -> None:
    @task.sensor(poke_interval=30, timeout=6 * 3600, mode="reschedule", soft_fail=True, retries=0)
    def wait_for_files(params: dict[str, Any] | None = None) -> PokeReturnValue:
        if params and params.get("path"):
            return PokeReturnValue(is_done=True)
        ready = int(run_conveyor("watch", "--check", *quiet_args())["ready"])
        log.info("%d file(s) ready in %s", ready, conveyor_home() / "incoming")
        return PokeReturnValue(is_done=ready > 0, xcom_value=ready)

    @task(execution_timeout=timedelta(hours=12))
    def process(params: dict[str, Any] | None = None) -> dict[str, Any]:
        if params and params.get("path"):
            state = run_conveyor("run", "monitor", "--path", str(params["path"]))
            return {"batches": [{"batch": str(params["path"]), "status": state.get("status"), "tasks": state["tasks"]}]}
        result = run_conveyor("watch", "--once", *quiet_args())
        for batch in result["batches"]:
            log.info("batch %s: %s files, %s", batch["batch"], batch["files"], batch["status"])
        return result

    wait_for_files() >> process()


conveyor_ingest()
conveyor_train()
conveyor_monitor()
