"""Point MLflow at the workspace's store (or a server), once, from an entry point, never at import."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from conveyor.config import Settings
from conveyor.storage import MLFLOW, Storage

__all__ = ["EXPERIMENT", "configure_mlflow", "disable_telemetry", "run_tags"]

EXPERIMENT = "conveyor"


def configure_mlflow(settings: Settings) -> str:
    """Set the tracking and registry URI and make sure the experiment exists; returns its id.

    With the embedded store (a SQLite file), artifacts go to ``mlartifacts/`` in the workspace, or to ``mlflow/`` in
    the store of ``storage.url`` when that is elsewhere (an object store, a shared folder); with a server, to wherever
    the server keeps them (``mlflow server --artifacts-destination <storage.url>/mlflow``). The location is the
    experiment's, fixed when it is created. An S3 store's endpoint and credentials (``storage.options``) are put in
    the environment, where MLflow's S3 client reads them.
    """
    disable_telemetry()
    import mlflow

    from conveyor.logs import quiet_mlflow

    quiet_mlflow()

    uri = settings.resolved_tracking_uri
    # MLflow exports both URIs to the environment (for subprocesses); conveyor reads MLFLOW_TRACKING_URI as the
    # user's choice, so put back whatever the user had, or a second workspace in this process would inherit this one's.
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    storage = Storage.of(settings)
    os.environ.update(storage.mlflow_environment())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    embedded = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = None
    if embedded:
        in_workspace = storage.local and storage.root.resolve() == settings.home.resolve()
        store = settings.home / "mlartifacts" if in_workspace else None
        location = store.resolve().as_uri() if store is not None else _artifact_uri(storage)
    return str(mlflow.create_experiment(EXPERIMENT, artifact_location=location))


def _artifact_uri(storage: Storage) -> str:
    """The embedded store's artifact location in a store other than the workspace."""
    if storage.local:
        return storage.path(MLFLOW).resolve().as_uri()
    return storage.url_of(MLFLOW)


def disable_telemetry() -> None:
    """Keep MLflow from reporting usage (patients' data never leave, and neither should anything else), unless the
    user chose otherwise. Must run before MLflow is first imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in conveyor's output


def run_tags() -> dict[str, str]:
    """Where a run came from: the git commit of the checkout, the Python and platform."""
    tags = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
