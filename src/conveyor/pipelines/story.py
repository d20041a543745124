"""The demo's story after the first champion: new labelled cases are filed the way the brain-tumour study did, and
the watcher processes each batch (ingest, features, monitor against both dummies, drift, retrain when due).

Batches (generated, deterministic): a batch from the training distribution, a batch with an unseen lesion type
(dark, ring-enhancing), a large batch that makes the retrain policy fire (its size is the policy's
``min_new_labelled``), and a fresh test batch from the training distribution.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.pipelines.watch import BatchResult, watch
from conveyor.tracking.registry import CHAMPION, current_version

__all__ = ["STORY", "StoryBatch", "run_story"]


@dataclass(frozen=True)
class StoryBatch:
    name: str
    drift: str  # none | lesion | scanner
    n_per_class: int | None  # None: half the retrain policy's min_new_labelled (enough to trigger it)
    seed: int


STORY = (
    StoryBatch("same distribution", "none", 15, 101),
    StoryBatch("unseen lesion type", "lesion", 15, 102),
    StoryBatch("large batch", "none", None, 103),
    StoryBatch("fresh test batch", "none", 15, 104),
)


def _file(settings: Settings, batch: StoryBatch, index: int) -> int:
    from conveyor.monitoring.settings import MonitoringSettings

    monitoring = getattr(settings, "monitoring", MonitoringSettings())
    n = batch.n_per_class or max(1, (monitoring.retrain.min_new_labelled + 1) // 2)
    spec = SyntheticSpec(n_per_class=n, seed=batch.seed, drift=batch.drift)  # type: ignore[arg-type]
    paths = generate_dataset(settings.incoming_dir, spec, prefix=f"batch{index}")
    old = time.time() - 3600  # filed long ago: no quiet period to wait for
    for path in paths:
        os.utime(path, (old, old))
    return len(paths)


def _row(batch: StoryBatch, filed: int, result: BatchResult, champion: int | None) -> dict[str, Any]:
    monitor = result.outputs.get("monitor", {})
    performance = monitor.get("performance") or {}
    retrain = monitor.get("retrain", {})
    train = result.outputs.get("train", {})
    return {
        "batch": batch.name,
        "files": filed,
        "status": result.status,
        "error": result.error,
        "model_f1": performance.get("model", {}).get("f1"),
        "dummy_by_reference_f1": performance.get("dummy_by_reference", {}).get("f1"),
        "dummy_by_current_f1": performance.get("dummy_by_current", {}).get("f1"),
        "drift_share": monitor.get("drift_share"),
        "drifted_columns": monitor.get("drifted_columns", []),
        "alerts": [a.get("rule", a) if isinstance(a, dict) else a for a in monitor.get("alerts", [])],
        "retrain": bool(retrain.get("retrain")),
        "retrain_reasons": retrain.get("reasons", []),
        "registered": train.get("registered_version") if isinstance(train, dict) else None,
        "alias": train.get("alias") if isinstance(train, dict) else None,
        "rollout": result.outputs.get("rollout", {}).get("mode"),
        "champion_version": champion,
    }


def run_story(settings: Settings, on_batch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """File each batch into ``incoming/`` and let the watcher process it; one table row per batch."""
    rows = []
    for index, batch in enumerate(STORY, start=1):
        filed = _file(settings, batch, index)
        results = watch(settings, once=True, quiet_seconds=1)
        result = results[-1] if results else BatchResult(batch.name, filed, "failed", {}, "no batch was collected")
        row = _row(batch, filed, result, current_version(settings, CHAMPION))
        rows.append(row)
        if on_batch is not None:
            on_batch(row)
    return rows
