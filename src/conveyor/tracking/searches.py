"""The record of past searches in MLflow: which candidates a search ranked best, with their parameters, so that a
``refit`` retrain can reuse them and the retrain policy can tell how much the data grew since."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings
from conveyor.tracking.setup import configure_mlflow

__all__ = ["LEADERBOARD", "LEADERBOARD_TAG", "SEARCH_REASON_TAG", "SEARCH_TAG", "PreviousSearch", "last_search"]

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
    ranking: list[dict[str, Any]]  # finalists, best first: extractor, family, params, cv_f1, cv_f1_std


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
    )
