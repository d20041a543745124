"""Train: choose the best candidate (feature table or pixels x model family) honestly, calibrate it, gate it, and
register it.

The stages, each in its own module: :mod:`~conveyor.training.search` ranks the candidates by cross-validation on the
training split (``race``, ``grid`` or ``refit``); the finalists are refitted on the whole training split and scored
once on the held-out test split (the same split for every candidate, with bootstrap intervals); the winner, chosen
by its CV score and never by the test score, is calibrated on its out-of-fold scores; :mod:`~conveyor.training.gate`
decides whether it may be registered; :mod:`conveyor.tracking.register` registers it. This module loads the data,
wires those stages and records every step in MLflow.

A model that fails the gate is never registered; the refusal goes to the audit log with its reasons.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from conveyor import compute
from conveyor.config import Settings
from conveyor.data.versions import (
    RawImages,
    clips_of,
    cv_groups,
    dataset_members,
    latest_version,
    raw_images,
    subgroups_of,
)
from conveyor.data.video import clip_probabilities
from conveyor.errors import ConfigError, ConveyorError
from conveyor.features.store import ROI_PREFIX, compute_features, configured_extractors, load_matrix
from conveyor.models.conformal import MondrianConformal
from conveyor.models.families import Family, family, with_selection
from conveyor.models.stacking import PIXEL_INPUT
from conveyor.storage import RAW, Storage
from conveyor.training.baselines import evaluate_baselines
from conveyor.training.evaluate import (
    Metrics,
    Scorer,
    confusion_matrix_png,
    evaluate,
    positive_class,
    roc_curve_png,
)
from conveyor.training.gate import GateDecision, judge_gate
from conveyor.training.pixels import PixelStore
from conveyor.training.search import SearchMode, SearchOutcome, choose_mode, search
from conveyor.training.segmentation import feature_region
from conveyor.training.stacking import MIXED_PREFIX
from conveyor.training.subgroups import SubgroupReport, subgroup_report
from conveyor.workspace import open_workspace

if TYPE_CHECKING:
    from conveyor.tracking.pyfunc import ModelSpec

__all__ = ["CandidateResult", "TrainResult", "train"]

PIXELS = PIXEL_INPUT  # the input name of image families in the candidate table

Progress = Callable[[int, int, str | None, float | None], None]


@dataclass
class CandidateResult:
    """One (input, family) pair after the search; ``test`` only for finalists (the others were raced out).

    ``stage``: ``final`` (scored by ``cv_folds``-fold CV on the whole training split, comparable with the other
    finalists) or ``round K`` (eliminated there, its score from ``folds``-fold CV on ``n`` training images).
    """

    extractor: str
    family: str
    cv_score: float  # training.metric, mean over the folds
    cv_score_std: float
    params: dict[str, Any]
    test: Metrics | None
    fit_seconds: float
    stage: str = "final"
    n: int = 0
    folds: int = 0
    run_id: str | None = None
    estimator: Any = field(default=None, repr=False)
    oof_scores: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.family}@{self.extractor}"

    def cv_test_gap(self, metric: str) -> float | None:
        """Test minus CV score of ``metric``: how far the estimate that chose it was from the held-out truth (None
        for a candidate that left the race before the test split)."""
        return None if self.test is None else float(getattr(self.test, metric)) - self.cv_score

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "extractor": self.extractor,
            "family": self.family,
            "cv_score": self.cv_score,
            "cv_score_std": self.cv_score_std,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "stage": self.stage,
            "cv_n": self.n,
            "cv_folds": self.folds,
            "test": None if self.test is None else self.test.as_dict(),
            "fit_seconds": round(self.fit_seconds, 3),
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class SearchSummary:
    """Which search ran, why, and what it cost."""

    mode: str
    reason: str
    rounds: list[dict[str, Any]]
    fits: int
    seconds: float
    cv_groups: int | None = None  # groups the CV folds kept whole (patients, near-duplicates); None: plain folds

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "rounds": self.rounds, "fits": self.fits,
                "seconds": round(self.seconds, 3), "cv_groups": self.cv_groups}  # fmt: skip


@dataclass
class TrainResult:
    """What one ``conveyor train`` did; ``to_dict`` is the ``--json`` summary."""

    dataset_version: str
    metric: str  # training.metric: what cv_score, the gate and the ranking are about
    classes: list[str]
    positive: str | None
    candidates: list[CandidateResult]
    baselines: dict[str, Metrics]
    best: CandidateResult
    calibrated: Metrics
    gate: GateDecision
    registered_version: int | None
    alias: str | None
    parent_run_id: str | None
    search: SearchSummary
    seconds: float = 0.0
    clip_test: Metrics | None = None  # the calibrated winner per video clip, when the test split holds frames
    conformal: dict[str, Any] | None = None  # the prediction sets on the test split (see _conformal_report)
    subgroups: SubgroupReport | None = None  # the calibrated winner per subgroup of the test split

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version,
            "metric": self.metric,
            "classes": self.classes,
            "positive_class": self.positive,
            "search": self.search.to_dict(),
            "candidates": [{**c.to_dict(), "cv_test_gap": c.cv_test_gap(self.metric)} for c in self.candidates],
            "baselines": {name: m.as_dict() for name, m in self.baselines.items()},
            "best": {**self.best.to_dict(), "calibrated_test": self.calibrated.as_dict()},
            "gate": self.gate.to_dict(),
            "registered_version": self.registered_version,
            "alias": self.alias,
            "parent_run_id": self.parent_run_id,
            "clip_test": None if self.clip_test is None else self.clip_test.as_dict(),
            "conformal": self.conformal,
            "subgroups": None if self.subgroups is None else self.subgroups.to_dict(),
            "seconds": round(self.seconds, 3),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


@dataclass
class _Inputs:
    X_train: Any
    X_test: Any
    columns: list[str] = field(default_factory=list)  # a feature table's column names (none for pixels)
    X_calibration: Any = None  # the held-out calibration part of the training split, if any


@dataclass(frozen=True)
class _Data:
    """The dataset version as training sees it."""

    version: str
    members: list[tuple[str, str, str]]
    classes: list[str]
    positive: str | None
    train_labels: list[str]
    test_labels: list[str]
    y_train: np.ndarray
    folds: int
    # Per training image, its CV group (a patient's images, near-duplicates); None when every image is its own.
    groups: np.ndarray | None = None
    # The part of the training split held out to calibrate the prediction sets (split "calibration" in members).
    calibration_labels: list[str] = field(default_factory=list)
    conformal_note: str = ""  # why there is no calibration part, if there is none


def _dataset(settings: Settings, version: str | None) -> _Data:
    engine = open_workspace(settings)
    vid = version or latest_version(engine)
    members, conformal_note = _hold_out_calibration(settings, dataset_members(engine, vid))
    calibration_labels = [label for _, label, split in members if split == CALIBRATION]
    train_labels = [label for _, label, split in members if split == "train"]
    test_labels = [label for _, label, split in members if split == "test"]
    classes = sorted(set(train_labels) | set(test_labels))
    counts = pd.Series(train_labels).value_counts()
    if len(classes) < 2 or len(counts) < len(classes):
        raise ConveyorError(
            f"dataset {vid}: training needs at least two classes in the train split, got {dict(counts)}"
        )
    folds = min(settings.training.cv_folds, int(counts.min()))
    if folds < 2:
        raise ConveyorError(f"dataset {vid}: class {counts.idxmin()!r} has {counts.min()} training image(s); need 2")
    if not test_labels:
        raise ConveyorError(f"dataset {vid}: the test split is empty; ingest more images (test_fraction > 0)")
    positive = positive_class(classes, settings.training.positive_class)
    index = {label: i for i, label in enumerate(classes)}
    y_train = np.array([index[label] for label in train_labels])
    train_shas = [sha for sha, _, split in members if split == "train"]
    components = cv_groups(engine, train_shas, settings.ingest.near_duplicate_bits)
    n_groups = len(np.unique(components))
    groups = None if n_groups == len(train_shas) else components  # None: nothing to keep together, plain folds
    if n_groups < folds:
        raise ConveyorError(
            f"dataset {vid}: the train split holds {n_groups} patient/near-duplicate group(s); {folds}-fold CV needs "
            f"at least {folds}"
        )
    return _Data(
        vid, members, classes, positive, train_labels, test_labels, y_train, folds, groups, calibration_labels,
        conformal_note,
    )  # fmt: skip


CALIBRATION = "calibration"


def _hold_out_calibration(
    settings: Settings, members: list[tuple[str, str, str]]
) -> tuple[list[tuple[str, str, str]], str]:
    """The members with the calibration part of the training split marked ``calibration`` (about
    ``training.conformal.fraction`` of each class, whole patient and near-duplicate groups), or unchanged with the
    reason when a class would have fewer than ``training.conformal.min_per_class`` calibration images."""
    from conveyor.models.conformal import calibration_part

    cfg = settings.training.conformal
    train = [(sha, label) for sha, label, split in members if split == "train"]
    counts = pd.Series([label for _, label in train]).value_counts()
    if cfg.fraction == 0:
        return members, "no prediction sets: training.conformal.fraction is 0"
    short = {str(c): int(n) for c, n in counts.items() if round(cfg.fraction * n) < cfg.min_per_class}
    if short or counts.empty:
        return members, (
            f"no prediction sets: {cfg.fraction:g} of the training images of {sorted(short)} is under "
            f"training.conformal.min_per_class ({cfg.min_per_class})"
        )
    shas = [sha for sha, _ in train]
    groups = cv_groups(open_workspace(settings), shas, settings.ingest.near_duplicate_bits)
    index = {label: i for i, label in enumerate(sorted(counts.index))}
    held = calibration_part(shas, [index[label] for _, label in train], groups, cfg.fraction)
    chosen = {sha for sha, keep in zip(shas, held, strict=True) if keep}
    return [(sha, label, CALIBRATION if sha in chosen else split) for sha, label, split in members], ""


def train(
    settings: Settings,
    *,
    version: str | None = None,
    mode: str | None = None,
    drift: bool = False,
    on_progress: Progress | None = None,
) -> TrainResult:
    """Search, calibrate, gate and register on a dataset version (default: the latest: all data so far).

    Four steps: which search to run (:func:`_plan`), the candidates it yields (:func:`_candidates`), the winner and
    whether it may be registered (:func:`_decide`), and the record of it all in MLflow, the registry and the audit log
    (:func:`_record`), the only step with side effects beyond the feature and pixel caches.

    Args:
        mode: ``race``, ``grid``, ``refit`` or ``auto`` (default ``training.search.mode``); see
            :mod:`conveyor.training.search` and :func:`~conveyor.training.search.choose_mode`.
        drift: the monitor saw drift (``auto`` then searches anew, when ``training.search.new_search_on_drift``).
        on_progress: called after each fit with (fits done, fits planned, best candidate so far, its score).

    Raises:
        ConveyorError: fewer than two classes, or too few images per class for the folds.
        StorageError: the store of ``storage.url`` (features, images, MLflow's artifacts) cannot be reached.
    """
    began = time.perf_counter()
    Storage.of(settings).check(settings.storage.check_timeout_s)
    data = _dataset(settings, version)
    plan = _plan(settings, data, mode, drift)
    with compute.joblib_backend(settings):  # the fits run on the cluster of compute.scheduler, if one is set
        candidates, summary, inputs = _candidates(settings, data, plan, on_progress)
    decision = _decide(settings, data, candidates, inputs)
    return _record(settings, data, plan, summary, candidates, inputs, decision, began)


@dataclass(frozen=True)
class _Plan:
    """What this training crosses and which search it runs, and why."""

    families: list[Family]
    settings_of: dict[str, tuple[Any, dict[str, list[Any]]]]  # per family: its estimator and grid
    extractors: list[str]
    mode: SearchMode
    reason: str
    previous: Any  # the last search (conveyor.tracking.searches.PreviousSearch), or None
    region: Any = None  # features.roi: the SegmentedRegion its roi-<extractor> tables are computed in, or None

    @property
    def tabular(self) -> list[Family]:
        return [f for f in self.families if f.input_kind == "features"]

    @property
    def imaging(self) -> list[Family]:
        return [f for f in self.families if f.input_kind == "image"]


def _plan(settings: Settings, data: _Data, mode: str | None, drift: bool) -> _Plan:
    """The candidate table and the search mode (``auto`` decided against the last search)."""
    from conveyor.tracking.searches import fail_dead_runs, last_search
    from conveyor.tracking.setup import configure_mlflow

    cfg = settings.training
    families = [family(name) for name in cfg.families]
    selection = cfg.feature_selection
    if selection.keep != "off":  # each tabular family also with its features selected inside the folds
        families += [
            with_selection(f, selection.keep, selection.k, selection.threshold)
            for f in families
            if f.input_kind == "features"
        ]
    settings_of = {fam.name: fam.estimator_and_grid(settings) for fam in families}  # settings checked up front
    whole = [e.name for e in configured_extractors(settings)] + ["all"]
    region = feature_region(settings) if any(f.input_kind == "features" for f in families) else None
    extractors = cfg.extractors or whole + ([ROI_PREFIX + name for name in whole] if region is not None else [])
    if region is None and any(name.startswith(ROI_PREFIX) for name in extractors):
        raise ConfigError(f"training.extractors names a {ROI_PREFIX}table, but features.roi is 'image'")
    configure_mlflow(settings)
    fail_dead_runs(settings)  # a train killed earlier left its runs RUNNING
    previous = last_search(settings)
    tabular = any(f.input_kind == "features" for f in families)
    imaging = any(f.input_kind == "image" for f in families)
    chosen, reason = choose_mode(
        mode or cfg.search.mode,
        previous=None if previous is None else (previous.n_train, previous.extractors, previous.families),
        n_train=len(data.y_train),
        extractors=(extractors if tabular else []) + ([PIXELS] if imaging else []),
        families=[f.name for f in families],
        drift=drift,
        new_search_share=cfg.search.new_search_share,
        new_search_on_drift=cfg.search.new_search_on_drift,
        metric_changed=previous is not None and previous.metric != cfg.metric,
    )
    return _Plan(families, settings_of, extractors, chosen, reason, previous, region)


def _candidates(
    settings: Settings, data: _Data, plan: _Plan, on_progress: Progress | None
) -> tuple[list[CandidateResult], SearchSummary, dict[str, _Inputs]]:
    """Every candidate ranked, best first: the search's finalists (refitted, scored on the test split) and raced-out,
    then the image families; with the search's summary and the inputs they were scored on."""
    cfg = settings.training
    previous = plan.previous
    region_key = None if plan.region is None else plan.region.key
    if plan.tabular:
        compute_features(settings, region=plan.region)  # nothing to do when the tables are complete
    inputs = {
        ex: _load_inputs(settings, ex, data.version, data.members, region_key) for ex in plan.extractors if plan.tabular
    }
    positive_code = None if data.positive is None else data.classes.index(data.positive)
    scorer = Scorer(cfg.metric, len(data.classes), positive_code)
    outcome = search(
        plan.mode,
        {f.name: plan.settings_of[f.name] for f in plan.tabular},
        {ex: inputs[ex].X_train for ex in inputs},
        data.y_train,
        folds=data.folds, scorer=scorer, seed=cfg.seed, factor=cfg.search.factor,
        min_samples=cfg.search.min_samples, race_folds=min(cfg.search.folds, data.folds),
        points_per_candidate=cfg.search.points_per_candidate, finalists=cfg.search.finalists,
        within_se=cfg.search.within_se,
        previous=[] if previous is None else _searched(previous.ranking, plan)[: cfg.search.refit_candidates],
        jobs=cfg.search.jobs, on_progress=on_progress, groups=data.groups,
    ) if plan.tabular else SearchOutcome(plan.mode, [], [], 0, 0.0)  # fmt: skip
    candidates = _finalists(outcome, plan.settings_of, inputs, data, settings)
    stacked = _stacked(candidates, inputs, data, settings, scorer) if cfg.stacking else None
    if stacked is not None:
        candidates.append(stacked)
    if plan.imaging:
        inputs[PIXELS] = _load_inputs(settings, PIXELS, data.version, data.members)
        fixed = {} if previous is None else {(e["extractor"], e["family"]): e["params"] for e in previous.ranking}
        for fam in plan.imaging:
            if plan.mode == "refit" and (PIXELS, fam.name) not in fixed:
                continue
            params = fixed.get((PIXELS, fam.name)) if plan.mode == "refit" else None
            candidates.append(_fit_image_candidate(fam, inputs[PIXELS], data, settings, params, scorer))
        mixed = _mixed_stacked(candidates, inputs, data, settings, scorer) if cfg.stacking else None
        if mixed is not None:
            candidates.append(mixed)
    if not candidates:
        raise ConveyorError("no candidate to train: training.families names no family for the configured inputs")
    candidates.sort(key=lambda c: (c.stage != "final", -c.cv_score, c.cv_score_std))
    rounds = [r.to_dict() for r in outcome.rounds]
    n_groups = None if data.groups is None else len(np.unique(data.groups))
    return candidates, SearchSummary(plan.mode, plan.reason, rounds, outcome.fits, outcome.seconds, n_groups), inputs


@dataclass(frozen=True)
class _Decision:
    """The winner calibrated, its test metrics, the baselines, and the gate's verdict."""

    best: CandidateResult
    estimator: Any  # the calibrated winner, what would be registered
    calibrated: Metrics
    baselines: dict[str, Metrics]
    gate: GateDecision
    clip_test: Metrics | None = None  # the winner per clip (mean of its frames' probabilities), when frames are tested
    conformal: MondrianConformal | None = None  # calibrated on the held-out part: what the model's sets come from
    conformal_report: dict[str, Any] | None = None
    subgroups: SubgroupReport | None = None


def _decide(
    settings: Settings, data: _Data, candidates: list[CandidateResult], inputs: dict[str, _Inputs]
) -> _Decision:
    """The best candidate (by CV, never by the test split) calibrated, scored on the test split beside the naive
    baselines and the champion (through its own registered model), and judged by the gate."""
    from conveyor.tracking.registry import CHAMPION, current_version

    cfg = settings.training
    best = candidates[0]
    baselines = evaluate_baselines(
        data.train_labels, data.test_labels, data.classes, positive=data.positive, n_boot=cfg.bootstrap, seed=cfg.seed
    )
    estimator = _calibrate(best, data.y_train, settings)
    proba = np.asarray(estimator.predict_proba(inputs[best.extractor].X_test))
    calibrated = evaluate(
        data.test_labels, [data.classes[i] for i in proba.argmax(axis=1)], proba, data.classes,
        positive=data.positive, n_boot=cfg.bootstrap, seed=cfg.seed,
    )  # fmt: skip
    champion_version = current_version(settings, CHAMPION)
    champion = None
    if champion_version is not None:
        champion = (champion_version, _champion_metrics(settings, champion_version, data.members))
    gate = judge_gate(cfg.metric, calibrated, baselines, data.version, champion)
    conformal = _fit_conformal(data, estimator, inputs[best.extractor])
    report = _conformal_report(settings, data, conformal, proba)
    return _Decision(
        best, estimator, calibrated, baselines, gate, _clip_metrics(settings, data, proba), conformal, report,
        _subgroups(settings, data, proba),
    )  # fmt: skip


def _subgroups(settings: Settings, data: _Data, proba: np.ndarray) -> SubgroupReport:
    """The calibrated winner on each subgroup of the test split (``images.subgroups``), beside the whole split."""
    cfg = settings.training
    test_shas = [sha for sha, _, split in data.members if split == "test"]
    values = subgroups_of(open_workspace(settings), test_shas)
    return subgroup_report(
        data.test_labels, proba, data.classes, [values.get(sha) for sha in test_shas], metric=cfg.metric,
        positive=data.positive, min_cases=cfg.subgroups.min_cases, n_boot=cfg.bootstrap, seed=cfg.seed,
    )  # fmt: skip


COVERAGE_LEVELS = (0.8, 0.9, 0.95)
"""Coverages the training report gives the test split's prediction sets at (and ``serving.coverage``)."""


def _fit_conformal(data: _Data, estimator: Any, inputs: _Inputs) -> MondrianConformal | None:
    """Mondrian split-conformal calibration of the registered estimator on the held-out part (none: no sets)."""
    if not data.calibration_labels:
        return None
    index = {label: i for i, label in enumerate(data.classes)}
    proba = np.asarray(estimator.predict_proba(inputs.X_calibration), dtype=np.float64)
    return MondrianConformal.fit(proba, [index[label] for label in data.calibration_labels], data.classes)


def _conformal_report(
    settings: Settings, data: _Data, conformal: MondrianConformal | None, proba: np.ndarray
) -> dict[str, Any]:
    """The test split's prediction sets at each reported coverage: coverage per class with its interval, the share
    of singleton sets; or why there are no sets."""
    if conformal is None:
        return {"calibrated": False, "reason": data.conformal_note}
    index = {label: i for i, label in enumerate(data.classes)}
    y_test = [index[label] for label in data.test_labels]
    levels = sorted({*COVERAGE_LEVELS, settings.serving.coverage})
    return {
        "calibrated": True,
        "n_calibration": conformal.counts(),
        "serving_coverage": settings.serving.coverage,
        "levels": {f"{level:g}": conformal.evaluate(proba, y_test, level) for level in levels},
    }


def _clip_metrics(settings: Settings, data: _Data, proba: np.ndarray) -> Metrics | None:
    """The test split scored per video clip (``ingest.video.aggregation`` of its frames' probabilities; its label
    theirs).
    None when no test image is a frame."""
    test_shas = [sha for sha, _, split in data.members if split == "test"]
    clip_of = clips_of(open_workspace(settings), test_shas)
    if not clip_of:
        return None
    rows: dict[str, list[int]] = {}
    for index, sha in enumerate(test_shas):
        if sha in clip_of:
            rows.setdefault(clip_of[sha], []).append(index)
    labels = [data.test_labels[members[0]] for members in rows.values()]
    how = settings.ingest.video.aggregation
    clip_proba = np.stack([clip_probabilities(proba[members], how) for members in rows.values()])
    cfg = settings.training
    return evaluate(
        labels, [data.classes[i] for i in clip_proba.argmax(axis=1)], clip_proba, data.classes,
        positive=data.positive, n_boot=cfg.bootstrap, seed=cfg.seed,
    )  # fmt: skip


def _record(
    settings: Settings,
    data: _Data,
    plan: _Plan,
    summary: SearchSummary,
    candidates: list[CandidateResult],
    inputs: dict[str, _Inputs],
    decision: _Decision,
    began: float,
) -> TrainResult:
    """The MLflow runs (the parent, a nested one per candidate), then the registration of a winner that passed the
    gate, or the refusal in the audit log."""
    import mlflow

    from conveyor.tracking.register import PARAMS_TAG, params_key
    from conveyor.tracking.searches import SEARCH_REASON_TAG, SEARCH_TAG, process_tags
    from conveyor.tracking.setup import configure_mlflow, run_tags

    best, gate = decision.best, decision.gate
    experiment = configure_mlflow(settings)
    best_params = {k: _jsonable(v) for k, v in best.params.items()}
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(
            experiment_id=experiment, run_name=f"train {data.version}", tags={**run_tags(), **process_tags()}
        ) as parent,
    ):
        mlflow.set_tags({SEARCH_TAG: plan.mode, SEARCH_REASON_TAG: plan.reason[:5000], "best_candidate": best.name,
                         PARAMS_TAG: params_key(best_params)})  # fmt: skip
        _log_parent(settings, data, summary, decision, candidates, plan)
        mlflow.log_input(_mlflow_dataset(data.members, data.version, settings), context="training")
        for result in candidates:
            tags = {**run_tags(), **process_tags()}
            with mlflow.start_run(experiment_id=experiment, run_name=result.name, nested=True, tags=tags) as run:
                x_test = inputs[result.extractor].X_test if result.test is not None else None
                _log_candidate(result, data, x_test, Path(tmp), settings)
                result.run_id = run.info.run_id
        registered, alias = None, None
        details = {"candidate": best.name, "dataset_version": data.version, "search": plan.mode,
                   "params": best_params, "metrics": decision.calibrated.as_dict("test_"),
                   "gate": gate.to_dict()}  # fmt: skip
        if gate.passed:
            from conveyor.tracking.register import register_model

            spec = _model_spec(settings, best, data.classes, data.positive, data.version, plan.region)
            region = plan.region if spec.roi is not None else None
            registered, alias = register_model(settings, decision.estimator, spec, details, region, decision.conformal)
            if not _reads_pixels(best.extractor) and settings.training.importance.enabled:
                _log_importance(settings, data, best, decision.estimator, inputs[best.extractor], Path(tmp))
        else:
            from conveyor.tracking.registry import audit

            audit(settings, "refused", settings.model_name, "; ".join(gate.reasons), details)
        return TrainResult(
            data.version, settings.training.metric, data.classes, data.positive, candidates, decision.baselines,
            best, decision.calibrated, gate, registered, alias, parent.info.run_id, summary,
            time.perf_counter() - began, decision.clip_test, decision.conformal_report, decision.subgroups,
        )  # fmt: skip


def _finalists(
    outcome: SearchOutcome,
    settings_of: dict[str, tuple[Any, dict[str, list[Any]]]],
    inputs: dict[str, _Inputs],
    data: _Data,
    settings: Settings,
) -> list[CandidateResult]:
    """The finalists refitted on the whole training split (in parallel) and scored on the test split; the raced-out
    candidates as they left the race."""
    from joblib import Parallel, delayed

    cfg = settings.training
    fitted = Parallel(n_jobs=cfg.search.jobs)(
        delayed(_refit)(settings_of[s.family][0], s.params, inputs[s.extractor].X_train, data.y_train, os.getpid())
        for s in outcome.finalists
    )
    results = []
    for score, (estimator, seconds) in zip(outcome.finalists, fitted, strict=True):
        metrics = _test_metrics(estimator, inputs[score.extractor].X_test, data, settings)
        results.append(
            CandidateResult(
                score.extractor, score.family, score.cv_mean, score.cv_std, score.params, metrics,
                score.fit_seconds + seconds, "final", score.n, score.folds, estimator=estimator,
                oof_scores=score.oof_scores,
            )
        )  # fmt: skip
    for score in outcome.ranking:
        if not score.final:
            results.append(
                CandidateResult(
                    score.extractor, score.family, score.cv_mean, score.cv_std, score.params, None,
                    score.fit_seconds, score.stage, score.n, score.folds,
                )
            )  # fmt: skip
    return results


def _test_metrics(estimator: Any, X_test: Any, data: _Data, settings: Settings) -> Metrics:
    """A fitted candidate on the test split (before calibration: the ranking's scores)."""
    proba = _scores(estimator, X_test, len(data.classes))
    predicted = [data.classes[i] for i in proba.argmax(axis=1)]
    return evaluate(
        data.test_labels, predicted, proba, data.classes, positive=data.positive, n_boot=settings.training.bootstrap,
        seed=settings.training.seed,
    )  # fmt: skip


def _stacked(
    candidates: list[CandidateResult], inputs: dict[str, _Inputs], data: _Data, settings: Settings, scorer: Scorer
) -> CandidateResult | None:
    """The finalists stacked (:mod:`conveyor.training.stacking`), scored on their folds and on the test split; None
    with finalists of fewer than two model families (one family's variants make near-identical errors, so a stack of
    them costs fits and gains nothing), or on tables no one table holds (the whole image and a region)."""
    from conveyor.training.search import cv_splits
    from conveyor.training.stacking import STACK, fit_stack, stack_table

    bases = [c for c in candidates if c.stage == "final" and c.oof_scores is not None and c.estimator is not None]
    table = stack_table([c.extractor for c in bases], list(inputs))
    if len({c.family.split("+")[0] for c in bases}) < 2 or table is None:
        return None
    cfg = settings.training
    splits = cv_splits(data.y_train, np.arange(len(data.y_train)), data.folds, cfg.seed, data.groups)
    found = fit_stack(
        [(c.extractor, c.estimator, c.oof_scores) for c in bases], table, inputs[table].columns, data.y_train, splits,
        scorer, cfg.seed,
    )  # fmt: skip
    metrics = _test_metrics(found.estimator, inputs[table].X_test, data, settings)
    return CandidateResult(
        table, STACK, float(np.mean(found.fold_scores)), float(np.std(found.fold_scores)),
        {"members": [c.name for c in bases]}, metrics, found.seconds + sum(c.fit_seconds for c in bases), "final",
        len(data.y_train), data.folds, estimator=found.estimator, oof_scores=found.oof_scores,
    )  # fmt: skip


def _mixed_stacked(
    candidates: list[CandidateResult], inputs: dict[str, _Inputs], data: _Data, settings: Settings, scorer: Scorer
) -> CandidateResult | None:
    """The best network stacked with the tabular finalists (:func:`conveyor.training.stacking.fit_mixed_stack`),
    its input the pixels and the finalists' table side by side; None without both, on a region's table (the network
    sees the whole image), or with a validation fold too small to score a combiner on."""
    from conveyor.models.stacking import ImagesAndFeatures
    from conveyor.training.stacking import STACK, fit_mixed_stack, stack_table

    tabular = [
        c for c in candidates
        if c.stage == "final" and c.family != STACK and c.oof_scores is not None and c.estimator is not None
    ]  # fmt: skip
    networks = [c for c in candidates if c.extractor == PIXELS and hasattr(c.estimator, "val_proba_")]
    table = stack_table([c.extractor for c in tabular], list(inputs)) if tabular else None
    if not networks or table is None or table.startswith(ROI_PREFIX):
        return None
    network = max(networks, key=lambda c: c.cv_score)
    cfg = settings.training
    found = fit_mixed_stack(
        [(c.extractor, c.estimator, c.oof_scores) for c in tabular], network.estimator, table, inputs[table].columns,
        data.y_train, data.groups, data.folds, scorer, cfg.seed,
    )  # fmt: skip
    if found is None:
        return None
    pixels, features = inputs[PIXELS], inputs[table]
    inputs[found.table] = _Inputs(
        ImagesAndFeatures(pixels.X_train, features.X_train), ImagesAndFeatures(pixels.X_test, features.X_test),
        features.columns, ImagesAndFeatures(pixels.X_calibration, features.X_calibration),
    )  # fmt: skip
    metrics = _test_metrics(found.estimator, inputs[found.table].X_test, data, settings)
    members = [c.name for c in tabular] + [network.name]
    return CandidateResult(
        found.table, STACK, float(np.mean(found.fold_scores)), float(np.std(found.fold_scores)), {"members": members},
        metrics, found.seconds + sum(c.fit_seconds for c in (*tabular, network)), "final",
        len(network.estimator.val_index_), len(found.fold_scores), estimator=found.estimator,
    )  # fmt: skip


def _searched(ranking: list[dict[str, Any]], plan: _Plan) -> list[dict[str, Any]]:
    """The entries of a previous ranking that the search itself fits (a tabular family on a table), best first: a
    stack or a network at the top of it is refitted after the search, not by it."""
    families = {f.name for f in plan.tabular}
    return [e for e in ranking if e["family"] in families and e["extractor"] in plan.extractors]


def _reads_pixels(extractor: str) -> bool:
    """Whether a candidate on ``extractor`` reads the images: a network, or a stack with one."""
    return extractor == PIXELS or extractor.startswith(MIXED_PREFIX)


def _refit(estimator: Any, params: dict[str, Any], X: Any, y: np.ndarray, parent: int) -> tuple[Any, float]:
    """A fresh copy of ``estimator`` with ``params``, fitted on (X, y), and the seconds it took."""
    from sklearn.base import clone

    from conveyor.workspace import exit_with_parent

    exit_with_parent(parent)
    began = time.perf_counter()
    with compute.in_this_process():
        fitted = clone(estimator).set_params(**params).fit(X, y)
    return fitted, time.perf_counter() - began


def _log_parent(
    settings: Settings,
    data: _Data,
    summary: SearchSummary,
    decision: _Decision,
    candidates: list[CandidateResult],
    plan: _Plan,
) -> None:
    """The parent run: data, settings, search, the winner's calibrated metrics, the gate and the leaderboard."""
    import mlflow

    from conveyor.tracking.searches import LEADERBOARD, LEADERBOARD_TAG

    cfg = settings.training
    mlflow.log_params({
        "dataset_version": data.version, "classes": ",".join(data.classes), "cv_folds": data.folds, "seed": cfg.seed,
        "search": summary.mode, "n_train": len(data.y_train), "n_test": len(data.test_labels),
        "cv_groups": summary.cv_groups, "n_calibration": len(data.calibration_labels),
    })  # fmt: skip
    metrics = {**decision.calibrated.as_dict("best_test_"), "search_seconds": summary.seconds,
               "search_fits": summary.fits}  # fmt: skip
    for name, m in decision.baselines.items():
        metrics.update(m.as_dict(f"{name}_test_"))
    if decision.clip_test is not None:
        metrics.update(decision.clip_test.as_dict("best_clip_test_"))
    for level, found in (decision.conformal_report or {}).get("levels", {}).items():
        metrics[f"conformal_{level}_coverage"] = found["coverage"]
        metrics[f"conformal_{level}_singleton_share"] = found["singleton_share"]
    mlflow.log_metrics(metrics)
    if decision.conformal_report is not None:
        mlflow.log_dict(decision.conformal_report, "conformal.json")
    if decision.subgroups is not None:
        mlflow.log_dict(decision.subgroups.to_dict(), "subgroups.json")
    mlflow.log_dict(settings.preprocess.model_dump(mode="json"), "config/preprocess.json")
    mlflow.log_dict({e.name: e.config() for e in configured_extractors(settings)}, "config/extractors.json")
    mlflow.log_dict(cfg.search.model_dump(mode="json"), "config/search.json")
    mlflow.log_text(_environment(), "environment/packages.txt")
    mlflow.log_dict(cfg.feature_selection.model_dump(mode="json"), "config/feature_selection.json")
    mlflow.log_dict(decision.gate.to_dict(), "gate.json")
    inputs = list(plan.extractors) if any(c.extractor != PIXELS for c in candidates) else []
    inputs += [PIXELS] if any(c.extractor == PIXELS for c in candidates) else []
    board = {
        "mode": summary.mode,
        "metric": cfg.metric,
        "reason": summary.reason,
        "dataset_version": data.version,
        "n_train": len(data.y_train),
        "extractors": inputs,
        "families": [f.name for f in plan.families],
        "rounds": summary.rounds,
        "ranking": [
            {"extractor": c.extractor, "family": c.family, "params": {k: _jsonable(v) for k, v in c.params.items()},
             "cv_score": c.cv_score, "cv_score_std": c.cv_score_std}
            for c in candidates if c.stage == "final"
        ],
    }  # fmt: skip
    if summary.mode != "refit":  # a refit's ranking is the one it reused: the search it refitted stays the record
        mlflow.log_dict(board, LEADERBOARD)
        mlflow.set_tag(LEADERBOARD_TAG, "true")
    else:
        mlflow.log_dict(board, "search/refit.json")


def _log_importance(
    settings: Settings, data: _Data, best: CandidateResult, estimator: Any, inputs: _Inputs, tmp: Path
) -> None:
    """The registered model's permutation importance on the test split (per extractor group and per feature), as
    ``importance/`` artifacts of the run that registered it: what ``conveyor models --explain`` shows."""
    import mlflow

    from conveyor.training.importance import importance_png, permutation_importance

    cfg = settings.training
    positive = None if data.positive is None else data.classes.index(data.positive)
    index = {label: i for i, label in enumerate(data.classes)}
    y_test = np.array([index[label] for label in data.test_labels])
    found = permutation_importance(
        estimator.predict_proba, inputs.X_test, y_test, inputs.columns, Scorer(cfg.metric, len(data.classes), positive),
        default_group=best.extractor, repeats=cfg.importance.repeats, max_features=cfg.importance.max_features,
        budget_s=cfg.importance.budget_s, seed=cfg.seed,
    )  # fmt: skip
    folder = tmp / "importance"
    folder.mkdir(parents=True, exist_ok=True)
    found.groups.to_csv(folder / "groups.csv", index=False)
    found.features.to_csv(folder / "features.csv", index=False)
    summary = {"metric": found.metric, "baseline": found.baseline, "repeats": cfg.importance.repeats,
               "not_computed": found.not_computed, "candidate": best.name}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    importance_png(found, folder / "importance.png")
    mlflow.log_artifacts(str(folder), artifact_path="importance")


def _environment() -> str:
    """Every installed distribution and its version, one per line: the environment a run happened in."""
    from importlib.metadata import distributions

    return "\n".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())) + "\n"


def _load_inputs(
    settings: Settings, extractor: str, vid: str, members: list[tuple[str, str, str]], region_key: str | None = None
) -> _Inputs:
    shas = {part: [sha for sha, _, split in members if split == part] for part in ("train", "test", CALIBRATION)}
    if extractor != PIXELS:
        X, _ = load_matrix(settings, extractor, version=vid, split=None, region_key=region_key)
        return _Inputs(
            X.loc[shas["train"]].to_numpy(), X.loc[shas["test"]].to_numpy(), [str(c) for c in X.columns],
            X.loc[shas[CALIBRATION]].to_numpy(),
        )  # fmt: skip
    # Preprocessed once into the workspace's pixel store and read batch by batch: never the whole split in memory.
    store = PixelStore.of(settings)

    def locate(missing: list[str]) -> RawImages:
        return raw_images(settings, missing)

    rows = {part: store.rows(found, locate) for part, found in shas.items()}
    return _Inputs(rows["train"], rows["test"], [], rows[CALIBRATION])


def _scores(estimator: Any, X: Any, n_classes: int) -> np.ndarray:
    """Class probabilities, or for a model without them its decision function squashed into [0, 1] (used for
    ROC-AUC, which only needs the order; the registered model is calibrated separately)."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(X))
    decision = np.asarray(estimator.decision_function(X))
    if n_classes == 2:
        positive = 1.0 / (1.0 + np.exp(-decision))
        return np.column_stack([1.0 - positive, positive])
    shifted = np.exp(decision - decision.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _fit_image_candidate(
    fam: Family, data: _Inputs, d: _Data, settings: Settings, params: dict[str, Any] | None, scorer: Scorer
) -> CandidateResult:
    """An image family, searched as the family says under the settings (k fits of a network per grid point would not
    fit any budget), or with the given parameters (a refit); torch parallelises inside each fit.

    ``"validation"``: each grid point fitted once on the whole training split, scored on the validation fold it holds
    out itself (patient and near-duplicate groups whole); the best point's model is final. ``"holdout"``: each point
    fitted on four fifths of the groups and scored on the rest, the best refitted on the whole split (one fit more).
    """
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedGroupKFold, StratifiedShuffleSplit

    cfg = settings.training
    estimator, grid = fam.estimator_and_grid(settings)
    if params is not None:
        grid = {name: [value] for name, value in params.items()}
    fit_params = {} if d.groups is None else {"val_groups": d.groups}  # the network's own validation fold, grouped
    start = time.perf_counter()
    if fam.search_under(settings) == "validation":
        best: tuple[float, dict[str, Any], Any] | None = None
        for point in ParameterGrid(grid):
            fitted = clone(estimator).set_params(**point).fit(data.X_train, d.y_train, **fit_params)
            proba = np.asarray(fitted.val_proba_)
            held_out = d.y_train[fitted.val_index_]
            value = scorer(held_out, fitted.classes_[proba.argmax(axis=1)], proba if scorer.needs_scores else None)
            if best is None or value > best[0]:
                best = (value, dict(point), fitted)
        assert best is not None  # ParameterGrid of a non-empty grid (checked by the family's configure)
        cv_score, chosen, final = best
    else:

        def score(estimator: Any, X: Any, y: np.ndarray) -> float:  # GridSearchCV's scorer protocol
            scores = _scores(estimator, X, len(d.classes)) if scorer.needs_scores else None
            return scorer(y, estimator.predict(X), scores)

        cv: Any = StratifiedShuffleSplit(1, test_size=0.2, random_state=cfg.seed)
        if d.groups is not None:  # a fifth of the groups, none of them also in training
            grouped = StratifiedGroupKFold(5, shuffle=True, random_state=cfg.seed)
            cv = [next(grouped.split(np.zeros(len(d.y_train)), d.y_train, d.groups))]
        found = GridSearchCV(estimator, grid, cv=cv, scoring=score, n_jobs=1, refit=True, error_score="raise")
        found.fit(data.X_train, d.y_train, **fit_params)
        cv_score = float(found.cv_results_["mean_test_score"][found.best_index_])
        chosen, final = dict(found.best_params_), found.best_estimator_
    seconds = time.perf_counter() - start
    proba = _scores(final, data.X_test, len(d.classes))
    predicted = [d.classes[i] for i in proba.argmax(axis=1)]
    metrics = evaluate(
        d.test_labels, predicted, proba, d.classes, positive=d.positive, n_boot=cfg.bootstrap, seed=cfg.seed
    )
    return CandidateResult(
        extractor=PIXELS,
        family=fam.name,
        cv_score=float(cv_score),
        cv_score_std=0.0,  # one validation fold: no spread to report
        params=chosen,
        test=metrics,
        fit_seconds=seconds,
        stage="final",
        n=len(d.y_train),
        folds=1,
        estimator=final,
    )


def _mlflow_dataset(members: list[tuple[str, str, str]], vid: str, settings: Settings) -> Any:
    import warnings

    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame(members, columns=["sha256", "label", "split"])
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both readings are the folder
        warnings.simplefilter("ignore", UserWarning)
        return from_pandas(
            frame, source=Storage.of(settings).url_of(RAW), name=f"conveyor-{vid}", targets="label", digest=vid
        )


def _log_candidate(result: CandidateResult, data: _Data, X_test: Any, tmp: Path, settings: Settings) -> None:
    """A candidate's nested run: its parameters and CV score; for a finalist also its test metrics, learning curve
    and plots (a raced-out candidate has no test score: the test split is only for the finalists)."""
    import mlflow
    from mlflow.entities import Metric, Param

    params = {"family": result.family, "extractor": result.extractor, "stage": result.stage, "cv_n": result.n,
              "cv_folds": result.folds, **{f"param_{k}": _jsonable(v) for k, v in result.params.items()}}  # fmt: skip
    metric = settings.training.metric
    metrics = {f"cv_{metric}": result.cv_score, f"cv_{metric}_std": result.cv_score_std,
               "fit_seconds": result.fit_seconds}  # fmt: skip
    if result.test is not None:
        metrics.update(result.test.as_dict("test_"))
    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for row in getattr(result.estimator, "history_", []) or []:  # a network's learning curve, per epoch
        step = int(row["epoch"])
        rows += [Metric(k, float(v), now, step) for k, v in row.items() if k != "epoch"]
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    mlflow.MlflowClient().log_batch(run_id, metrics=rows, params=[Param(k, str(v)) for k, v in params.items()])
    if result.test is None or X_test is None:
        return
    proba = _scores(result.estimator, X_test, len(data.classes))
    predicted = [data.classes[i] for i in proba.argmax(axis=1)]
    folder = tmp / result.name.replace("@", "_at_")
    folder.mkdir(parents=True, exist_ok=True)
    confusion_matrix_png(data.test_labels, predicted, data.classes, folder / "confusion_matrix.png", title=result.name)
    if len(set(data.test_labels)) > 1:  # a ROC curve needs both kinds of cases
        roc_curve_png(data.test_labels, proba, data.classes, folder / "roc_curve.png", title=result.name)
    mlflow.log_artifacts(str(folder), artifact_path="plots")


def _calibrate(best: CandidateResult, y_train: np.ndarray, settings: Settings) -> Any:
    """The winner, refitted on the whole training split, with its confidence calibrated on its out-of-fold scores
    from the search. A network (or a seed ensemble of them) calibrates itself on its validation fold: used as is."""
    from conveyor.training.calibration import OutOfFoldCalibrated

    if hasattr(best.estimator, "val_proba_") or best.oof_scores is None:
        return best.estimator
    method = settings.training.calibration
    return OutOfFoldCalibrated(best.estimator, method=method).fit(best.oof_scores, y_train)


def _champion_metrics(settings: Settings, version: int, members: list[tuple[str, str, str]]) -> Metrics:
    """The champion's metrics on the current test split, through its own registered model: from the feature store
    for a feature model (its tables under its own preprocessing), from the images' bytes for what the store lacks."""
    from conveyor.config import PreprocessSettings
    from conveyor.features.store import stored_features
    from conveyor.tracking.integrity import load_verified

    model = load_verified(settings, version).unwrap_python_model()
    test = [(sha, label) for sha, label, split in members if split == "test"]
    shas = [sha for sha, _ in test]
    rows: dict[str, np.ndarray] = {}
    missing = shas
    if model.spec.input_kind == "features":
        stored, missing = stored_features(
            settings, PreprocessSettings(**model.spec.preprocess), model.spec.extractors, shas, model.spec.region_key
        )
        if len(stored):
            rows.update(zip(stored.index, model.predict_features(stored.to_numpy()), strict=True))
    if missing:
        images = [model.image(data) for data in raw_images(settings, missing).read_all(missing)]
        rows.update(zip(missing, model.predict_images(images), strict=True))
    served = list(model.classes)
    classes = sorted({label for _, label in test} | set(served))
    by_served = np.stack([rows[sha] for sha in shas])
    proba = np.column_stack([by_served[:, served.index(c)] if c in served else np.zeros(len(shas)) for c in classes])
    predicted = [served[i] for i in by_served.argmax(axis=1)]
    positive = positive_class(classes, settings.training.positive_class)
    return evaluate([label for _, label in test], predicted, proba, classes, positive=positive, n_boot=100)


def _model_spec(
    settings: Settings, best: CandidateResult, classes: list[str], positive: str | None, vid: str, region: Any = None
) -> ModelSpec:
    extractors = configured_extractors(settings)
    table = best.extractor.removeprefix(MIXED_PREFIX).removeprefix(ROI_PREFIX)
    roi = None
    if best.extractor.startswith(ROI_PREFIX):
        roi = {"key": region.key, "size": list(region.size)}
    if best.extractor == PIXELS:
        chosen: list[Any] = []
    elif table == "all":
        chosen = extractors
    else:
        chosen = [e for e in extractors if e.name == table]
    from conveyor.tracking.pyfunc import ModelSpec

    return ModelSpec(
        input_kind="image" if best.extractor == PIXELS else "both" if _reads_pixels(best.extractor) else "features",
        preprocess=settings.preprocess.model_dump(mode="json"),
        extractors=[(e.name, e.config()["params"]) for e in chosen],  # JSON-ready parameters
        classes=classes,
        positive=positive,
        family=best.family,
        extractor=best.extractor,
        dataset_version=vid,
        roi=roi,
    )
