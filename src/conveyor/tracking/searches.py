"""The record of past searches and training runs in MLflow: which candidates a search ranked best, with their
parameters (a ``refit`` reuses them; the retrain policy sees how much the data grew since), and which process a run
belongs to (a run left RUNNING by a killed process is marked FAILED by the next one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings
from conveyor.tracking.setup import configure_mlflow

__all__ = [
    "LEADERBOARD",
    "LEADERBOARD_TAG",
    "SEARCH_REASON_TAG",
    "SEARCH_TAG",
    "PreviousSearch",
    "fail_dead_runs",
    "last_search",
    "process_tags",
]

SEARCH_TAG = "conveyor.search"
SEARCH_REASON_TAG = "conveyor.search_reason"
LEADERBOARD_TAG = "conveyor.leaderboard"  # "true" on the runs of a search (race, grid): a refit keeps the old one
LEADERBOARD = "search/leaderboard.json"


@dataclass(frozen=True)
class PreviousSearch:
    """The latest finished search (``race`` or ``grid``) of this workspace."""

    run_id: str
    mode: str
    dataset_version: str
    n_train: int
    extractors: list[str]
    families: list[str]
    ranking: list[dict[str, Any]]  # finalists, best first: extractor, family, params, cv_score, cv_score_std
    metric: str = "f1"  # what it ranked by (searches before training.metric ranked by F1)


def last_search(settings: Settings) -> PreviousSearch | None:
    """The latest finished search's leaderboard, or None when no search has finished (or its record is gone)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = configure_mlflow(settings)
    runs = mlflow.search_runs(
        experiment_ids=[experiment],
        filter_string=f"tags.`{LEADERBOARD_TAG}` = 'true' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return None
    run = runs[0]
    try:
        board = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{LEADERBOARD}")
    except (MlflowException, OSError, ValueError):
        return None
    return PreviousSearch(
        run.info.run_id,
        str(board["mode"]),
        str(board["dataset_version"]),
        int(board["n_train"]),
        list(board["extractors"]),
        list(board["families"]),
        list(board["ranking"]),
        str(board.get("metric", "f1")),
    )


PID_TAG = "conveyor.pid"
HOST_TAG = "conveyor.host"


def process_tags() -> dict[str, str]:
    """Which process a run belongs to, so a later run can tell that it died."""
    import os
    import socket

    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def fail_dead_runs(settings: Settings) -> list[str]:
    """Mark FAILED the runs still RUNNING whose process (on this host) is gone: a ``conveyor train`` killed with -9
    never ends its runs itself. Returns their ids."""
    import os
    import socket

    import mlflow

    experiment = configure_mlflow(settings)
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    failed = []
    running = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        tags = run.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) != host or not (pid or "").isdigit() or int(pid or 0) == os.getpid():
            continue
        try:
            os.kill(int(pid or 0), 0)
            continue  # still alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        client.set_terminated(run.info.run_id, status="FAILED")
        client.set_tag(run.info.run_id, "conveyor.failed_reason", f"process {pid} on {host} died before the run ended")
        failed.append(run.info.run_id)
    return failed
