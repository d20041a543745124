"""The three pipelines of the brain-tumour system, wired from the stage functions (kept as three DAGs).

1. ``ingest``: take a folder in (validate, store, split), then compute every extractor's missing features.
2. ``train``: make sure the features are complete, then train, compare and register (gate included).
3. ``monitor``: take a new batch in, monitor what was taken in against the champion (the ingest and features
   tasks' results passed on: neither runs twice), when the retrain policy says so (or there is no champion yet)
   train on all data, and when that registers a challenger, start its rollout (``serving.rollout.on_new_challenger``:
   canary by default).

Each task returns a JSON-ready summary, so a run's state on disk says what every step did.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.config import Settings
from conveyor.errors import ConfigError
from conveyor.pipelines.contracts import MonitorOutcome, Retrain, TrainOutcome, dump
from conveyor.pipelines.runner import Pipeline, Task

__all__ = ["PIPELINES", "pipeline"]

Outputs = Mapping[str, dict[str, Any]]


def _path(params: Mapping[str, Any]) -> Path:
    if not params.get("path"):
        raise ConfigError("this pipeline needs a path parameter (the folder or .zip to take in)")
    return Path(str(params["path"]))


def ingest_task(settings: Settings, params: Mapping[str, Any], _up: Outputs) -> dict[str, Any]:
    from conveyor.data.ingest import ingest

    labels = Path(str(params["labels"])) if params.get("labels") else None
    summary = ingest(_path(params), settings, labels_csv=labels).to_dict()
    summary.pop("rejected")  # listed in quarantine/ and in the ingest's own record
    return summary


def features_task(settings: Settings, _params: Mapping[str, Any], _up: Outputs) -> dict[str, Any]:
    from conveyor.features.store import compute_features
    from conveyor.training.segmentation import feature_region

    return compute_features(settings, region=feature_region(settings)).to_dict()


def train_task(settings: Settings, params: Mapping[str, Any], up: Outputs) -> dict[str, Any]:
    """Train on all data. After a monitor, the search is ``training.search.retrain_mode`` (``auto``: refit the last
    search's best candidates unless the data grew enough or drifted); on its own, ``training.search.mode``."""
    from conveyor.training.train import train

    if "monitor" not in up:
        result = train(settings, mode=params.get("search")).to_dict()
    else:
        drift = MonitorOutcome.model_validate(up["monitor"]).drifted
        result = train(settings, mode=settings.training.search.retrain_mode, drift=drift).to_dict()
    return dump(TrainOutcome.model_validate({key: result[key] for key in TrainOutcome.model_fields if key in result}))


def monitor_task(settings: Settings, params: Mapping[str, Any], up: Outputs) -> dict[str, Any]:
    """Monitor what the ingest task took in (its features computed by the features task): neither runs again."""
    from conveyor.data.ingest import IngestSummary
    from conveyor.monitoring.monitor import monitor_batch
    from conveyor.tracking.registry import CHAMPION, current_version

    if current_version(settings, CHAMPION) is None:  # nothing to monitor against: the first model is due
        first = Retrain(retrain=True, reason="no champion yet", reasons=["no champion yet"])
        return dump(MonitorOutcome(skipped="no champion yet", retrain=first))
    summary = monitor_batch(_path(params), settings, ingested=IngestSummary.from_dict(up["ingest"]))
    return dump(
        MonitorOutcome.model_validate({key: summary[key] for key in MonitorOutcome.model_fields if key in summary})
    )


def rollout_task(settings: Settings, _params: Mapping[str, Any], up: Outputs) -> dict[str, Any]:
    """Start the configured rollout of the challenger that training just registered; a rollout of an older
    challenger still in progress is rolled back first (superseded)."""
    from conveyor.serving import rollout
    from conveyor.tracking.registry import actor
    from conveyor.workspace import open_workspace

    mode = settings.serving.rollout.on_new_challenger
    if mode == "none":
        return {"skipped": "serving.rollout.on_new_challenger is none"}
    engine = open_workspace(settings)
    version = TrainOutcome.model_validate(up["train"]).registered_version
    current = rollout.active_rollout(engine)
    if current is not None:
        rollout.rollback(settings, engine, actor(), f"superseded by challenger v{version}")
    return rollout.start(settings, engine, mode, actor()).to_dict()


def _retrain_wanted(outputs: Outputs) -> bool:
    return "monitor" in outputs and MonitorOutcome.model_validate(outputs["monitor"]).retrain.retrain


def _new_challenger(outputs: Outputs) -> bool:
    trained = TrainOutcome.of(outputs.get("train", {"status": "absent"}))
    return trained is not None and trained.alias == "challenger"


PIPELINES: dict[str, Pipeline] = {
    p.name: p
    for p in (
        Pipeline(
            "ingest",
            (Task("ingest", ingest_task), Task("features", features_task, ("ingest",))),
            "take images in and compute their features",
        ),
        Pipeline(
            "train",
            (Task("features", features_task), Task("train", train_task, ("features",))),
            "train, compare and register on all data so far",
        ),
        Pipeline(
            "monitor",
            (
                Task("ingest", ingest_task),
                Task("features", features_task, ("ingest",)),
                Task("monitor", monitor_task, ("ingest", "features")),
                Task("train", train_task, ("monitor",), when=_retrain_wanted),
                Task("rollout", rollout_task, ("train",), when=_new_challenger),
            ),
            "take a new batch in, monitor it against the champion, retrain on all data when the policy says so",
        ),
    )
}


def pipeline(name: str) -> Pipeline:
    """A pipeline by name.

    Raises:
        ConfigError: no such pipeline.
    """
    if name not in PIPELINES:
        raise ConfigError(f"no pipeline {name!r}; there are {sorted(PIPELINES)}")
    return PIPELINES[name]
