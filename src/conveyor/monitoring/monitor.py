"""The monitoring stage: compare new data with the champion's training data, judge, record and report.

One run: load the champion and its reference (the train split of its dataset version: stored features and image
statistics, never recomputed), take the current data (a batch of files, or a window of the prediction log), then

* data drift per column of the champion's feature table and of image statistics (Evidently's tests), and its share;
* prediction drift (predicted classes and confidence) against the champion's predictions on its training data;
* performance on the labelled inputs: the model against Dummy (by reference) and Dummy (by current);
* the out-of-distribution share (:mod:`conveyor.monitoring.ood`), with the inputs listed;
* alert rules, the webhook, the retrain decision;

and write it all under ``reports/monitor/<time>-<kind>/`` (``summary.json``, ``drift_report.html``, PNG plots,
``ood.csv``), to an MLflow run, and to the ``monitoring_runs`` table (the history).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select, update

from conveyor.config import Settings
from conveyor.data.ingest import IngestSummary, ingest
from conveyor.data.versions import raw_images, subgroups_of
from conveyor.errors import InvalidImageError, SourceError
from conveyor.monitoring.alerts import Alert, evaluate_rules, post_webhook
from conveyor.monitoring.drift import DriftResult, drift_report_html, drift_table
from conveyor.monitoring.inputs import (
    IMAGE_STAT_KINDS,
    Champion,
    Current,
    Reference,
    compute_features_of,
    image_stats_from_db,
    image_stats_of,
    load_champion,
    load_reference,
    monitored_extractors,
    predict,
    read_features,
    read_image_file,
)
from conveyor.monitoring.ood import OODDetector
from conveyor.monitoring.performance import compare_with_dummies
from conveyor.monitoring.policy import RetrainDecision, decide_retrain
from conveyor.monitoring.report import MonitorReport
from conveyor.store.db import session_scope
from conveyor.store.history import HistoryRow, runs_history
from conveyor.store.models import MonitoringRun
from conveyor.training.subgroups import SubgroupReport, subgroup_report
from conveyor.workspace import atomic_write, open_workspace

__all__ = ["HistoryRow", "analyse", "monitor_batch", "monitoring_history", "new_labelled_count"]

_OOD_LISTED = 50


# ------------------------------------------------------------------------------------------------------- inputs


def _is_labelled_tree(path: Path) -> bool:
    """A zip, or a folder with files inside sub-folders (class folders), is labelled; a flat folder is not."""
    if path.is_file():
        return True
    return any(p.is_file() for child in path.iterdir() if child.is_dir() for p in child.rglob("*"))


def _batch_current(
    settings: Settings, engine: Engine, champion: Champion, path: Path, ingested: IngestSummary | None
) -> Current:
    """A labelled tree, ingested (stored once, features computed once and kept in the store): by the pipeline's own
    tasks when it passes their result, else here."""
    from conveyor.data.privacy import path_names
    from conveyor.data.sources import open_source
    from conveyor.features.store import compute_features
    from conveyor.store.models import IngestFile
    from conveyor.training.segmentation import feature_region

    summary = ingested
    if summary is None:
        summary = ingest(path, settings)
    key = summary.source_key
    stored_as = path_names(settings)
    source = open_source(path)  # a listing, not a read: the report names the files by their real paths
    try:
        real_path = {stored_as.stored(f.relpath): f.relpath for f in source.files}
    finally:
        source.close()
    with session_scope(engine) as session:
        rows = session.execute(
            select(IngestFile.relpath, IngestFile.sha256, IngestFile.label).where(
                IngestFile.source_key == key, IngestFile.outcome != "quarantined"
            )
        ).all()
    if not rows:
        raise SourceError(f"{path}: no usable image in the batch ({summary.quarantined} quarantined)")
    rows = sorted(rows, key=lambda r: real_path.get(r.relpath, r.relpath))
    names = [real_path.get(r.relpath, r.relpath) for r in rows]
    shas, labels = [r.sha256 for r in rows], [r.label for r in rows]
    extractors = monitored_extractors(settings, champion)
    features = None
    blobs = None
    if extractors:
        if ingested is None:
            compute_features(settings, region=feature_region(settings))  # only the new images lack features
        stored, missing = read_features(settings, champion, extractors, shas)
        if missing:  # the workspace's configured tables differ from the champion's: compute with its pipeline
            computed = compute_features_of(champion, extractors, raw_images(settings, missing).read_all(missing))
            computed.index = pd.Index(missing)
            stored = pd.concat([stored, computed])
        features = stored.reindex(shas).reset_index(drop=True)
    if champion.spec.input_kind != "features":
        blobs = raw_images(settings, shas).read_all(shas)
    proba = predict(champion, features, blobs)
    stats = image_stats_from_db(engine, shas).reset_index(drop=True)
    groups = subgroups_of(engine, shas)
    extra = {"ingest": {k: getattr(summary, k) for k in ("seen", "stored", "duplicates", "conflicts", "quarantined")}}
    return Current(
        "batch",
        str(path),
        names,
        proba,
        list(labels),
        features,
        stats,
        summary.dataset_version,
        champion.version,
        extra,
        [groups.get(sha) for sha in shas],
    )


def _flat_current(settings: Settings, champion: Champion, path: Path) -> Current:
    """A flat folder of unlabelled images, read and scored directly with the champion's pipeline.

    Not ingested: ingest would quarantine unlabelled files as ``no_label``. Their features are computed here and not
    kept (without a label they cannot join the training data); files that are not usable images are listed.
    """
    from conveyor.data.decode import DecodeLimits

    limits = DecodeLimits.of(settings)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    names: list[str] = []
    inspections: list[Any] = []
    blobs: list[bytes] = []
    skipped: list[dict[str, str]] = []
    for file in files:
        try:
            inspection, data = read_image_file(file, limits)
        except InvalidImageError as exc:
            skipped.append({"path": file.name, "reason": exc.reason, "detail": exc.detail})
            continue
        names.append(file.name)
        inspections.append(inspection)
        blobs.append(data)
    if not names:
        raise SourceError(f"{path}: no usable image among {len(files)} files")
    extractors = monitored_extractors(settings, champion)
    features = compute_features_of(champion, extractors, blobs) if extractors else None
    proba = predict(champion, features, blobs)
    return Current(
        "batch",
        str(path),
        names,
        proba,
        [None] * len(names),
        features,
        image_stats_of(inspections),
        None,
        champion.version,
        {"skipped": skipped, "unlabelled": True},
    )


# ------------------------------------------------------------------------------------------------------ analysis


@dataclass
class _Analysis:
    drift: DriftResult
    prediction_drift: DriftResult
    reference_frame: pd.DataFrame
    current_frame: pd.DataFrame
    performance: Any
    ood: dict[str, Any]
    conformal: dict[str, Any] | None = None  # the prediction sets on the labelled inputs, for a calibrated champion
    subgroups: SubgroupReport | None = None  # the champion per subgroup of the labelled inputs


def _analyse(settings: Settings, champion: Champion, reference: Reference, current: Current) -> _Analysis:
    ms = settings.monitoring
    kinds: dict[str, Any] = {}
    groups: dict[str, str] = {}
    ref_parts, cur_parts = [], []
    if reference.features is not None and current.features is not None:
        ref_parts.append(reference.features.reset_index(drop=True))
        cur_parts.append(current.features.reset_index(drop=True))
        for column in reference.features.columns:
            kinds[column], groups[column] = "numerical", "features"
    if current.image_stats is not None:
        # A measure unknown for some reference image (stored before conveyor measured it) is not compared.
        known = [c for c in IMAGE_STAT_KINDS if reference.image_stats[c].notna().all() and len(reference.image_stats)]
        ref_stats = reference.image_stats[known].reset_index(drop=True).add_prefix("image.")
        ref_parts.append(ref_stats)
        cur_parts.append(current.image_stats[known].reset_index(drop=True).add_prefix("image."))
        for column in known:
            kinds[f"image.{column}"], groups[f"image.{column}"] = IMAGE_STAT_KINDS[column], "image"
    # No feature or image column (a prediction log without the input files): prediction drift only.
    ref_frame = pd.concat(ref_parts, axis=1) if ref_parts else pd.DataFrame(index=range(len(reference.shas)))
    cur_frame = pd.concat(cur_parts, axis=1) if cur_parts else pd.DataFrame(index=range(len(current.names)))
    drift = drift_table(ref_frame, cur_frame, kinds, groups=groups, threshold=ms.column_threshold)

    classes = champion.classes
    predicted = [classes[i] for i in current.proba.argmax(axis=1)]
    ref_pred = (
        pd.Series([classes[i] for i in reference.proba.argmax(axis=1)])
        if reference.proba is not None
        else pd.Series(reference.labels)
    )
    pred_ref = pd.DataFrame({"prediction.class": ref_pred})
    pred_cur = pd.DataFrame({"prediction.class": predicted, "prediction.confidence": current.proba.max(axis=1)})
    pred_kinds: dict[str, Any] = {"prediction.class": "categorical"}
    if reference.proba is not None:
        pred_ref["prediction.confidence"] = reference.proba.max(axis=1)
        pred_kinds["prediction.confidence"] = "numerical"
    prediction_drift = drift_table(pred_ref, pred_cur, pred_kinds, groups=dict.fromkeys(pred_kinds, "prediction"))
    ref_frame = pd.concat([ref_frame, pred_ref], axis=1)
    cur_frame = pd.concat([cur_frame, pred_cur], axis=1)

    performance = None
    labelled = current.labelled
    if labelled:
        positive = champion.spec.positive
        performance = compare_with_dummies(
            reference.labels,
            [str(current.labels[i]) for i in labelled],
            current.proba[labelled],
            classes,
            positive=positive,
            metric=settings.training.metric,
            n_boot=ms.bootstrap,
            seed=ms.seed,
        )

    ood: dict[str, Any] = {"share": None, "threshold": None, "n": 0, "inputs": [], "space": None}
    if reference.features is not None and current.features is not None and len(reference.features.columns):
        detector = OODDetector(ms.ood_quantile).fit(reference.features.to_numpy())
        distances = detector.distances(current.features.to_numpy())
        flagged = np.flatnonzero(distances > detector.threshold_)
        ood = {
            "share": float(len(flagged) / len(distances)),
            "threshold": detector.threshold_,
            "quantile": ms.ood_quantile,
            "n": len(flagged),
            "space": "features",
            "inputs": [
                {"input": current.names[i], "distance": float(distances[i])}
                for i in flagged[np.argsort(-distances[flagged])]
            ],
            "distances": distances.tolist(),
        }
    return _Analysis(
        drift, prediction_drift, ref_frame, cur_frame, performance, ood, _conformal(settings, champion, current),
        _subgroups(settings, champion, current),
    )  # fmt: skip


def _subgroups(settings: Settings, champion: Champion, current: Current) -> SubgroupReport | None:
    """The champion on each subgroup of the labelled inputs, beside the whole of them (scored as ``performance``
    scores them); None without labels or without any input's subgroup values."""
    labelled = current.labelled
    if not labelled or current.subgroups is None or not any(current.subgroups[i] for i in labelled):
        return None
    ms = settings.monitoring
    return subgroup_report(
        [str(current.labels[i]) for i in labelled], current.proba[labelled], champion.classes,
        [current.subgroups[i] for i in labelled], metric=settings.training.metric, positive=champion.spec.positive,
        min_cases=settings.training.subgroups.min_cases, n_boot=ms.bootstrap, seed=ms.seed,
    )  # fmt: skip


def _conformal(settings: Settings, champion: Champion, current: Current) -> dict[str, Any] | None:
    """The champion's prediction sets at ``serving.coverage`` on the labelled inputs of a class it knows (a label it
    has never seen has no set to be in); None without labels or without a calibration."""
    conformal = getattr(champion.model, "conformal", None)
    index = {label: i for i, label in enumerate(champion.classes)}
    known = [i for i in current.labelled if str(current.labels[i]) in index]
    if conformal is None or not known:
        return None
    y = [index[str(current.labels[i])] for i in known]
    return conformal.evaluate(current.proba[known], y, settings.serving.coverage)


def new_labelled_count(engine: Engine, reference_version: str) -> int:
    """Labelled images in the latest dataset version that the champion's dataset version does not have."""
    from conveyor.data.versions import dataset_members

    reference = {sha for sha, _, _ in dataset_members(engine, reference_version)}
    return sum(1 for sha, _, _ in dataset_members(engine) if sha not in reference)


# -------------------------------------------------------------------------------------------------------- output


def _plots(folder: Path, analysis: _Analysis) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ranked = (analysis.drift.ranked() + analysis.prediction_drift.columns)[:25]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(ranked) + 1.5))
    names = [c.column for c in ranked][::-1]
    scores = [c.score for c in ranked][::-1]
    ax.barh(names, scores, color=["tab:red" if c.drifted else "tab:gray" for c in ranked][::-1])
    ax.set_xlabel("drift score (p-value: drift below threshold; distance: drift at or above)")
    ax.set_title(f"drift: {len(analysis.drift.drifted_columns)} of {analysis.drift.n_columns} columns")
    fig.tight_layout()
    fig.savefig(folder / "drift.png", dpi=80)
    plt.close(fig)
    written.append("drift.png")
    if analysis.performance is not None:
        metrics = ("f1", "precision", "recall", "accuracy")
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.27
        for offset, name in enumerate(("model", "dummy_by_reference", "dummy_by_current")):
            m = analysis.performance.metrics[name]
            ax.bar(np.arange(len(metrics)) + offset * width, [getattr(m, k) for k in metrics], width, label=name)
        ax.set_xticks(np.arange(len(metrics)) + width, metrics)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("model vs dummy baselines on the labelled batch")
        fig.tight_layout()
        fig.savefig(folder / "performance.png", dpi=80)
        plt.close(fig)
        written.append("performance.png")
    return written


def _log_mlflow(settings: Settings, folder: Path, summary: dict[str, Any], analysis: _Analysis) -> str:
    import mlflow

    from conveyor.tracking.setup import configure_mlflow, run_tags

    experiment = configure_mlflow(settings)
    name = Path(summary["source"]).name or summary["source"]
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"monitor {name}", tags={**run_tags(), "conveyor.stage": "monitor"}
    ) as run:
        mlflow.log_params(
            {
                k: summary[k]
                for k in (
                    "kind",
                    "source",
                    "model_version",
                    "reference_version",
                    "dataset_version",
                    "n_current",
                    "n_labelled",
                )
            }
        )
        metrics = {
            "n_drifted": len(summary["drifted_columns"]),
            "retrain": float(summary["retrain"]["retrain"]),
            "alerts": float(len(summary["alerts"])),
        }
        for key in ("drift_share", "ood_share"):
            if summary[key] is not None:
                metrics[key] = summary[key]
        if analysis.performance is not None:
            for who, m in analysis.performance.metrics.items():
                metrics.update(m.as_dict(f"{who}_"))
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder), "monitoring")
        return str(run.info.run_id)


@dataclass(frozen=True)
class Judgement:
    """What monitoring concludes about a batch or a log window, before anything is written or sent."""

    analysis: _Analysis
    metric: str  # training.metric: the one the alert compares
    score: float | None  # the champion's value of it on the labelled inputs
    drift_share: float | None
    alerts: list[Alert]
    decision: RetrainDecision

    @property
    def f1(self) -> float | None:
        perf = self.analysis.performance
        return perf.metrics["model"].f1 if perf is not None else None


def judge(
    settings: Settings, champion: Champion, reference: Reference, current: Current, new_labelled: int
) -> Judgement:
    """Drift, performance against the dummies, OOD, the alert rules and the retrain decision: pure (no file, database,
    MLflow or network), so a rule can be changed and tested on its own."""
    ms = settings.monitoring
    analysis = _analyse(settings, champion, reference, current)
    perf = analysis.performance
    metric = settings.training.metric
    score = getattr(perf.metrics["model"], metric) if perf is not None else None
    drift_share = analysis.drift.share if analysis.drift.n_columns else None
    alerts = evaluate_rules(
        ms.alerts,
        drift_share=drift_share,
        drifted_columns=analysis.drift.drifted_columns,
        metric=metric,
        score=score,
        champion_score=champion.test_score(metric),
        ood_share=analysis.ood["share"],
        coverage=analysis.conformal,
        subgroups=analysis.subgroups,
    )
    decision = decide_retrain(ms.retrain, alerts, new_labelled)
    return Judgement(analysis, metric, score, drift_share, alerts, decision)


def analyse(settings: Settings, current: Current, *, champion: Champion | None = None) -> dict[str, Any]:
    """Judge ``current`` against the champion's reference (:func:`judge`), then the sinks: the reports on disk, the
    MLflow run, the database row, and the webhook after the commit; the JSON summary.

    This is the shared back half of :func:`monitor_batch` and :func:`conveyor.monitoring.predictions.monitor_log`.
    """
    ms = settings.monitoring
    engine = open_workspace(settings)
    champion = champion or load_champion(settings)
    reference = load_reference(settings, engine, champion)
    judgement = judge(settings, champion, reference, current, new_labelled_count(engine, reference.version))
    analysis, perf, f1, drift_share = (
        judgement.analysis,
        judgement.analysis.performance,
        judgement.f1,
        judgement.drift_share,
    )
    alerts, decision = judgement.alerts, judgement.decision

    at = datetime.now(UTC)
    folder = settings.reports_dir / "monitor" / f"{at.strftime('%Y%m%dT%H%M%S')}-{current.kind}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True, exist_ok=True)
    combined = DriftResult(analysis.drift.columns + analysis.prediction_drift.columns)
    report = drift_report_html(
        analysis.reference_frame,
        analysis.current_frame,
        combined,
        folder / "drift_report.html",
        max_columns=ms.report_max_columns,
        max_reference_rows=ms.report_max_reference_rows,
        seed=ms.seed,
    )
    plots = _plots(folder, analysis)
    ood = {k: v for k, v in analysis.ood.items() if k != "distances"}
    if analysis.ood.get("distances") is not None:
        pd.DataFrame(
            {
                "input": current.names,
                "distance": analysis.ood["distances"],
                "ood": np.asarray(analysis.ood["distances"]) > analysis.ood["threshold"],
            }
        ).to_csv(folder / "ood.csv", index=False)
    ood["inputs"] = ood["inputs"][:_OOD_LISTED]
    summary: dict[str, Any] = {
        "at": at.isoformat(),
        "kind": current.kind,
        "source": current.source,
        "model_version": champion.version,
        "served_model_version": current.model_version,
        "reference_version": reference.version,
        "dataset_version": current.dataset_version,
        "n_reference": len(reference.shas),
        "n_current": len(current.names),
        "n_labelled": len(current.labelled),
        "drift_share": analysis.drift.share if analysis.drift.n_columns else None,
        "drifted_columns": analysis.drift.drifted_columns,
        "drift": {"by_group": analysis.drift.by_group(), "columns": [c.to_dict() for c in analysis.drift.columns]},
        "prediction_drift": {
            "drifted_columns": analysis.prediction_drift.drifted_columns,
            "columns": [c.to_dict() for c in analysis.prediction_drift.columns],
            "predicted_classes": pd.Series([champion.classes[i] for i in current.proba.argmax(axis=1)])
            .value_counts()
            .sort_index()
            .to_dict(),
            "mean_confidence": float(current.proba.max(axis=1).mean()),
        },
        "performance": perf.to_dict() if perf is not None else None,
        "metric": judgement.metric,
        "score": judgement.score,
        "champion_test_score": champion.test_score(judgement.metric),
        "champion_test_f1": champion.test_score("f1"),
        "ood_share": analysis.ood["share"],
        "ood": ood,
        "conformal": analysis.conformal,
        "subgroups": analysis.subgroups.to_dict() if analysis.subgroups is not None else None,
        "alerts": [a.to_dict() for a in alerts],
        "retrain": decision.to_dict(),
        "report_dir": str(folder),
        "report": str(folder / "drift_report.html"),
        "report_columns": report,
        "plots": [str(folder / p) for p in plots],
        **current.extra,
    }
    summary["mlflow_run_id"] = _log_mlflow(settings, folder, summary, analysis)
    with session_scope(engine) as session:
        row = MonitoringRun(
            at=at,
            kind=current.kind,
            source=current.source,
            reference_version=reference.version,
            dataset_version=current.dataset_version,
            model_version=champion.version,
            n_current=len(current.names),
            n_labelled=len(current.labelled),
            drift_share=drift_share,
            f1=f1,
            ood_share=analysis.ood["share"],
            summary={},
            report_path=str(folder / "drift_report.html"),
            mlflow_run_id=summary["mlflow_run_id"],
            alerts=summary["alerts"],
            retrain=decision.retrain,
            retrain_reason=decision.reason,
        )
        session.add(row)
        session.flush()
        summary["id"] = row.id
        row.summary = json.loads(json.dumps(summary, default=str))
    if alerts and ms.webhook_url:  # after the commit: a slow or dead receiver holds no transaction open
        payload = {"event": "conveyor.monitoring.alert", "model": settings.model_name, **_compact(summary)}
        summary["webhook"] = post_webhook(ms.webhook_url, payload, ms.webhook_timeout_s)
        with session_scope(engine) as session:
            session.execute(
                update(MonitoringRun)
                .where(MonitoringRun.id == summary["id"])
                .values(summary=json.loads(json.dumps(summary, default=str)))
            )
    MonitorReport.model_validate(summary)  # what this run produced is what its readers are promised
    atomic_write(folder / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    _log_summary_artifact(settings, summary)
    return summary


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "at",
        "kind",
        "source",
        "model_version",
        "drift_share",
        "drifted_columns",
        "ood_share",
        "alerts",
        "retrain",
        "report",
        "mlflow_run_id",
    )
    out = {k: summary.get(k) for k in keys}
    perf = summary.get("performance")
    out["performance"] = {k: perf[k] for k in ("model", "dummy_by_reference", "dummy_by_current")} if perf else None
    return out


def _log_summary_artifact(settings: Settings, summary: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    MlflowClient().log_dict(
        summary["mlflow_run_id"], json.loads(json.dumps(summary, default=str)), "monitoring/summary.json"
    )


def monitor_batch(
    path: Path,
    settings: Settings,
    *,
    ingested: IngestSummary | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Monitor a batch of new images at ``path`` against the champion's training data.

    A folder of class folders (``<label>/``; or a zip) is labelled: it is ingested as by ``conveyor ingest`` (stored
    once, its features computed once and kept, so it joins the next training run), and the champion is scored on it
    against both dummies. ``ingested``: the result of the ingest (and features) a pipeline already ran on ``path``;
    neither runs again. A flat folder is unlabelled: its files are read and scored directly with the champion's
    pipeline, not ingested (ingest would quarantine them as ``no_label``); drift, prediction drift and OOD still run.

    Returns:
        The JSON summary (see :func:`analyse`).

    Raises:
        SourceError: ``path`` does not exist, or holds no usable image.
        NotFoundError: no champion, or its training data's features are missing.
    """
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder to monitor")
    if path.is_dir() and not any(path.iterdir()):
        raise SourceError(f"{path}: the folder is empty")
    settings_engine = open_workspace(settings)
    champion = load_champion(settings)
    if on_stage is not None:
        on_stage("reading the batch")
    if _is_labelled_tree(path):
        current = _batch_current(settings, settings_engine, champion, path, ingested)
    else:
        current = _flat_current(settings, champion, path)
    if on_stage is not None:
        on_stage("comparing")
    return analyse(settings, current, champion=champion)


# ------------------------------------------------------------------------------------------------------- history


def monitoring_history(settings: Settings, limit: int | None = 50) -> list[HistoryRow]:
    """The monitoring runs of the workspace, oldest first (the last ``limit`` of them)."""
    return runs_history(open_workspace(settings), limit)
