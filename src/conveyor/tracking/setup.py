"""Point MLflow at the workspace's store (or a server), once, from an entry point, never at import."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from conveyor.config import Settings

__all__ = ["EXPERIMENT", "configure_mlflow", "disable_telemetry", "run_tags"]

EXPERIMENT = "conveyor"


def configure_mlflow(settings: Settings) -> str:
    """Set the tracking and registry URI and make sure the experiment exists; returns its id.

    With the embedded store (a SQLite file), artifacts go to ``mlartifacts/`` in the workspace; with a server, to
    wherever the server keeps them.
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
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    embedded = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = (settings.home / "mlartifacts").resolve().as_uri() if embedded else None
    return str(mlflow.create_experiment(EXPERIMENT, artifact_location=location))


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
