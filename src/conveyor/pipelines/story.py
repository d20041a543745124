"""The demo's story after the first champion: new labelled cases are filed the way the brain-tumour study did, and
the watcher processes each batch (ingest, features, monitor against both dummies, drift, retrain when due).

Batches (generated, deterministic): a batch from the training distribution, a batch with an unseen lesion type
(dark, ring-enhancing), a large batch that makes the retrain policy fire (its size is the policy's
``min_new_labelled``), and a fresh test batch from the training distribution.

When a retrain registered a challenger and its rollout started, clinicians use the served model: new cases are
sent to the prediction API (the real FastAPI app, in process) and each answer gets the case's true label through
the feedback API, until the rollout policy has promoted the challenger or rolled it back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.pipelines.contracts import MonitorOutcome, TrainOutcome
from conveyor.pipelines.watch import BatchResult, watch
from conveyor.tracking.registry import CHAMPION, current_version

__all__ = ["STORY", "StoryBatch", "clinician_feedback", "demo_settings", "run_story"]


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


DEMO_CLINICIANS = ("dr-ada", "dr-bo", "dr-cy")


def demo_settings(settings: Settings) -> Settings:
    """The settings the demo runs with: the canary's stages at 10% / 50% / 100% with 15 labels per arm, so that a
    rollout is decided by a few hundred requests (production's 1% first stage with 30 labels per arm needs about
    3,000), and a feedback token for each of three clinicians (made for this run, never written down: the demo's
    clinicians are played in process). Every other setting is the user's."""
    import secrets

    rollout = settings.serving.rollout.model_copy(update={"canary_stages": (0.1, 0.5, 1.0), "min_feedback": 15})
    tokens = {**settings.serving.feedback_tokens, **{who: secrets.token_urlsafe(32) for who in DEMO_CLINICIANS}}
    serving = settings.serving.model_copy(update={"rollout": rollout, "feedback_tokens": tokens})
    return settings.model_copy(update={"serving": serving})


def _file(settings: Settings, batch: StoryBatch, index: int) -> int:
    n = batch.n_per_class or max(1, (settings.monitoring.retrain.min_new_labelled + 1) // 2)
    spec = SyntheticSpec(n_per_class=n, seed=batch.seed, drift=batch.drift)  # type: ignore[arg-type]
    paths = generate_dataset(settings.incoming_dir, spec, prefix=f"batch{index}")
    old = time.time() - 3600  # filed long ago: no quiet period to wait for
    for path in paths:
        os.utime(path, (old, old))
    return len(paths)


def _row(batch: StoryBatch, filed: int, result: BatchResult, champion: int | None, metric: str) -> dict[str, Any]:
    monitor = MonitorOutcome.model_validate(result.outputs["monitor"]) if "monitor" in result.outputs else None
    performance = monitor.performance if monitor is not None else None
    train = TrainOutcome.of(result.outputs.get("train", {"status": "absent"}))
    return {
        "batch": batch.name,
        "files": filed,
        "status": result.status,
        "error": result.error,
        "metric": metric,
        "model_score": getattr(performance.model, metric) if performance else None,
        "dummy_by_reference_score": getattr(performance.dummy_by_reference, metric) if performance else None,
        "dummy_by_current_score": getattr(performance.dummy_by_current, metric) if performance else None,
        "model_f1": performance.model.f1 if performance else None,
        "dummy_by_reference_f1": performance.dummy_by_reference.f1 if performance else None,
        "dummy_by_current_f1": performance.dummy_by_current.f1 if performance else None,
        "drift_share": monitor.drift_share if monitor else None,
        "drifted_columns": monitor.drifted_columns if monitor else [],
        "alerts": [a.rule for a in monitor.alerts] if monitor else [],
        "retrain": bool(monitor and monitor.retrain.retrain),
        "retrain_reasons": monitor.retrain.reasons if monitor else [],
        "registered": train.registered_version if train else None,
        "search": train.search.get("mode") if train else None,
        "alias": train.alias if train else None,
        "rollout": _started(result.outputs.get("rollout", {})),
        "champion_version": champion,
    }


def _started(rollout: dict[str, Any]) -> str | None:
    if not rollout.get("mode"):
        return None
    share = rollout.get("share")
    return f"{rollout['mode']} started" + (f" at {share:.0%}" if share else "")


def run_story(settings: Settings, on_batch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """File each batch into ``incoming/`` and let the watcher process it; one table row per batch, then one for the
    clinicians' feedback that decides a rollout, when one is running."""
    from conveyor.serving.rollout import active_rollout
    from conveyor.workspace import open_workspace

    rows = []
    for index, batch in enumerate(STORY, start=1):
        filed = _file(settings, batch, index)
        results = watch(settings, once=True, quiet_seconds=1)
        result = results[-1] if results else BatchResult(batch.name, filed, "failed", {}, "no batch was collected")
        row = _row(batch, filed, result, current_version(settings, CHAMPION), settings.training.metric)
        rows.append(row)
        if on_batch is not None:
            on_batch(row)
        if active_rollout(open_workspace(settings)) is not None:
            rows.append(clinician_feedback(settings, seed=200 + index))
            if on_batch is not None:
                on_batch(rows[-1])
    return rows


def clinician_feedback(settings: Settings, *, seed: int, max_requests: int = 2000) -> dict[str, Any]:
    """Predict new cases through the API and label each answer through the feedback API until the rollout ends.

    The cases come from the generator (the training distribution), with their true labels; each
    ``POST /v1/feedback`` may let the rollout policy decide its stage (advance, promote or roll back), and the story
    records every decision.
    """
    import tempfile
    from pathlib import Path

    from fastapi.testclient import TestClient

    from conveyor.serving.app import create_app
    from conveyor.serving.rollout import active_rollout
    from conveyor.workspace import open_workspace

    engine = open_workspace(settings)
    state = active_rollout(engine)
    decisions: list[str] = []
    sent = 0
    counts = {"champion": 0, "challenger": 0}
    app = create_app(settings)
    with TestClient(app) as client, tempfile.TemporaryDirectory() as tmp:
        round_seed = seed
        while active_rollout(engine) is not None and sent < max_requests:
            cases = generate_dataset(Path(tmp) / str(round_seed), SyntheticSpec(n_per_class=25, seed=round_seed))
            round_seed += 1000
            for start in range(0, len(cases), settings.serving.max_batch):
                if active_rollout(engine) is None or sent >= max_requests:
                    break
                chunk = cases[start : start + settings.serving.max_batch]
                # One batch request, then a label per answer: the clinicians read a worklist, then file their reads.
                files = [("files", (path.name, path.read_bytes())) for path in chunk]
                answers = client.post("/v1/predict/batch", files=files)
                if answers.status_code != 200:
                    continue
                for path, item in zip(chunk, answers.json()["items"], strict=True):
                    if active_rollout(engine) is None:
                        break
                    sent += 1
                    if item["status"] != 200:
                        continue
                    body = item["prediction"]
                    arm = body.get("arm") or "champion"
                    counts[arm] = counts.get(arm, 0) + 1
                    who = DEMO_CLINICIANS[sent % len(DEMO_CLINICIANS)]
                    verdict = client.post(
                        "/v1/feedback",
                        json={"request_id": body["request_id"], "label": path.parent.name},
                        headers={"Authorization": f"Bearer {settings.serving.feedback_tokens[who]}"},
                    )
                    made = verdict.json().get("rollout") if verdict.status_code == 200 else None
                    if made:
                        decision, rollout = made["decision"], made["rollout"]
                        if decision["action"] == "advance" and rollout["status"] == "active":
                            decisions.append(f"{rollout['share']:.0%}")
                        else:
                            decisions.append(f"{rollout['status']} v{rollout['challenger_version']}")
    ended = active_rollout(engine)
    return {
        "batch": "clinician feedback",
        "files": sent,
        "status": "success" if ended is None else "undecided",
        "error": None if ended is None else f"the rollout was still undecided after {sent} requests",
        "metric": settings.training.metric,
        "model_score": None,
        "dummy_by_reference_score": None,
        "dummy_by_current_score": None,
        "model_f1": None,
        "dummy_by_reference_f1": None,
        "dummy_by_current_f1": None,
        "drift_share": None,
        "drifted_columns": [],
        "alerts": [],
        "retrain": False,
        "retrain_reasons": [],
        "registered": None,
        "alias": None,
        "search": None,
        "rollout": f"{state.mode if state else '-'} {state.share if state else 0:.0%} -> "
        + " -> ".join(decisions or ["undecided"])
        + f" ({counts.get('challenger', 0)} of {sent} answered by the challenger)",
        "answered_by": counts,
        "champion_version": current_version(settings, CHAMPION),
    }
