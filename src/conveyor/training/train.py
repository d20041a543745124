"""Train: every extractor's table (and all of them side by side) crossed with every model family, compared honestly.

For each candidate, a grid search with stratified k-fold cross-validation on the training split picks the
parameters; the candidate is then scored once on the held-out test split (the same split for every candidate), with
bootstrap intervals. The winner is chosen by its cross-validation score, never by the test score, then calibrated
(the confidence it serves must mean what it says) and judged by the gate before it is registered:

* it must beat every naive baseline: the lower end of its test F1 interval above the best baseline's F1;
* if a champion exists, the champion's F1 on this same test split must not exceed the top of the challenger's
  interval (the challenger beats or ties it).

A model that fails is never registered; the refusal goes to the audit log with its reasons.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conveyor.config import Settings
from conveyor.data.versions import dataset_members, latest_version, raw_paths
from conveyor.errors import ConveyorError
from conveyor.features.store import compute_features, configured_extractors, load_matrix
from conveyor.models.families import Family, family
from conveyor.training.baselines import evaluate_baselines
from conveyor.training.evaluate import Metrics, confusion_matrix_png, evaluate, positive_class, roc_curve_png
from conveyor.training.pixels import PixelStore
from conveyor.workspace import open_workspace

__all__ = ["CandidateResult", "TrainResult", "train"]

PIXELS = "pixels"  # the input name of image families in the candidate table


@dataclass
class CandidateResult:
    """One (input, family) pair after its grid search and its test."""

    extractor: str
    family: str
    cv_f1: float
    cv_f1_std: float
    params: dict[str, Any]
    test: Metrics
    fit_seconds: float
    run_id: str | None = None
    estimator: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.family}@{self.extractor}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "extractor": self.extractor,
            "family": self.family,
            "cv_f1": self.cv_f1,
            "cv_f1_std": self.cv_f1_std,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "test": self.test.as_dict(),
            "fit_seconds": round(self.fit_seconds, 3),
            "run_id": self.run_id,
        }


@dataclass
class TrainResult:
    """What one ``conveyor train`` did; ``to_dict`` is the ``--json`` summary."""

    dataset_version: str
    classes: list[str]
    positive: str | None
    candidates: list[CandidateResult]
    baselines: dict[str, Metrics]
    best: CandidateResult
    calibrated: Metrics
    gate: dict[str, Any]
    registered_version: int | None
    alias: str | None
    parent_run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version,
            "classes": self.classes,
            "positive_class": self.positive,
            "candidates": [c.to_dict() for c in self.candidates],
            "baselines": {name: m.as_dict() for name, m in self.baselines.items()},
            "best": {**self.best.to_dict(), "calibrated_test": self.calibrated.as_dict()},
            "gate": self.gate,
            "registered_version": self.registered_version,
            "alias": self.alias,
            "parent_run_id": self.parent_run_id,
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


def train(
    settings: Settings,
    *,
    version: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_candidate: Callable[[CandidateResult], None] | None = None,
) -> TrainResult:
    """Train and compare every candidate on a dataset version (default: the latest: all data so far).

    Raises:
        ConveyorError: fewer than two classes, or too few images per class for the folds.
    """
    import mlflow

    from conveyor.tracking.setup import configure_mlflow, run_tags

    engine = open_workspace(settings)
    cfg = settings.training
    vid = version or latest_version(engine)
    members = dataset_members(engine, vid)
    train_labels = [label for _, label, split in members if split == "train"]
    test_labels = [label for _, label, split in members if split == "test"]
    classes = sorted(set(train_labels) | set(test_labels))
    counts = pd.Series(train_labels).value_counts()
    if len(classes) < 2 or len(counts) < len(classes):
        raise ConveyorError(
            f"dataset {vid}: training needs at least two classes in the train split, got {dict(counts)}"
        )
    folds = min(cfg.cv_folds, int(counts.min()))
    if folds < 2:
        raise ConveyorError(f"dataset {vid}: class {counts.idxmin()!r} has {counts.min()} training image(s); need 2")
    if not test_labels:
        raise ConveyorError(f"dataset {vid}: the test split is empty; ingest more images (test_fraction > 0)")
    positive = positive_class(classes, cfg.positive_class)
    index = {label: i for i, label in enumerate(classes)}
    y_train = np.array([index[label] for label in train_labels])

    families = [family(name) for name in cfg.families]
    for fam in families:  # a family's settings are checked now, not after the other families have trained
        fam.estimator_and_grid(settings)
    extractor_names = cfg.extractors or [e.name for e in configured_extractors(settings)] + ["all"]
    if any(f.input_kind == "features" for f in families):
        compute_features(settings)  # nothing to do when the tables are complete
    plan = [(ex, f) for f in families if f.input_kind == "features" for ex in extractor_names]
    plan += [(PIXELS, f) for f in families if f.input_kind == "image"]
    if on_start is not None:
        on_start(len(plan))

    experiment = configure_mlflow(settings)
    dataset = _mlflow_dataset(members, vid, settings)
    inputs: dict[str, _Inputs] = {}
    candidates: list[CandidateResult] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(experiment_id=experiment, run_name=f"train {vid}", tags=run_tags()) as parent,
    ):
        mlflow.log_input(dataset, context="training")
        mlflow.log_params({"dataset_version": vid, "classes": ",".join(classes), "cv_folds": folds, "seed": cfg.seed})
        mlflow.log_dict(settings.preprocess.model_dump(mode="json"), "config/preprocess.json")
        configs = {e.name: e.config() for e in configured_extractors(settings)}
        mlflow.log_dict(configs, "config/extractors.json")
        mlflow.log_text(_environment(), "environment/packages.txt")
        for ex, fam in plan:
            if ex not in inputs:
                inputs[ex] = _load_inputs(settings, ex, vid, members)
            result = _fit_candidate(ex, fam, inputs[ex], y_train, test_labels, classes, positive, folds, settings)
            with mlflow.start_run(experiment_id=experiment, run_name=result.name, nested=True, tags=run_tags()) as run:
                _log_candidate(result, dataset, test_labels, inputs[ex].X_test, classes, Path(tmp))
                mlflow.log_dict(settings.preprocess.model_dump(mode="json"), "config/preprocess.json")
                used = configs if ex == "all" else {ex: configs[ex]} if ex in configs else {}
                mlflow.log_dict(used, "config/extractors.json")
                result.run_id = run.info.run_id
            candidates.append(result)
            if on_candidate is not None:
                on_candidate(result)
        candidates.sort(key=lambda c: (-c.cv_f1, -c.test.f1))
        best = candidates[0]
        baselines = evaluate_baselines(
            train_labels, test_labels, classes, positive=positive, n_boot=cfg.bootstrap, seed=cfg.seed
        )
        calibrated_estimator = _calibrate(best, inputs[best.extractor].X_train, y_train, folds, settings)
        proba = np.asarray(calibrated_estimator.predict_proba(inputs[best.extractor].X_test))
        calibrated = evaluate(
            test_labels, [classes[i] for i in proba.argmax(axis=1)], proba, classes,
            positive=positive, n_boot=cfg.bootstrap, seed=cfg.seed,
        )  # fmt: skip
        mlflow.log_metrics(calibrated.as_dict("best_test_"))
        for name, metrics in baselines.items():
            mlflow.log_metrics(metrics.as_dict(f"{name}_test_"))
        mlflow.set_tag("best_candidate", best.name)
        gate = _gate(settings, calibrated, baselines, vid, members)
        mlflow.log_dict(gate, "gate.json")
        registered, alias = None, None
        spec = _model_spec(settings, best, classes, positive, vid)
        if gate["passed"]:
            registered, alias = _register(settings, calibrated_estimator, spec, calibrated, gate, best, vid)
        else:
            from conveyor.tracking.registry import audit

            audit(settings, "refused", settings.model_name, "; ".join(gate["reasons"]),
                  {"candidate": best.name, "dataset_version": vid, "metrics": calibrated.as_dict("test_")})  # fmt: skip
        return TrainResult(
            vid, classes, positive, candidates, baselines, best, calibrated, gate, registered, alias, parent.info.run_id
        )


def _environment() -> str:
    """Every installed distribution and its version, one per line: the environment a run happened in."""
    from importlib.metadata import distributions

    return "\n".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())) + "\n"


def _load_inputs(settings: Settings, extractor: str, vid: str, members: list[tuple[str, str, str]]) -> _Inputs:
    if extractor != PIXELS:
        X_train, _ = load_matrix(settings, extractor, version=vid, split="train")
        X_test, _ = load_matrix(settings, extractor, version=vid, split="test")
        return _Inputs(X_train.to_numpy(), X_test.to_numpy())
    # Preprocessed once into the workspace's pixel store and read batch by batch: never the whole split in memory.
    store = PixelStore.of(settings)
    train_shas = [sha for sha, _, split in members if split == "train"]
    test_shas = [sha for sha, _, split in members if split == "test"]

    def locate(missing: list[str]) -> dict[str, Path]:
        return raw_paths(settings, missing)

    return _Inputs(store.rows(train_shas, locate), store.rows(test_shas, locate))


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


def _fit_candidate(
    extractor: str,
    fam: Family,
    data: _Inputs,
    y_train: np.ndarray,
    test_labels: list[str],
    classes: list[str],
    positive: str | None,
    folds: int,
    settings: Settings,
) -> CandidateResult:
    from sklearn.metrics import f1_score, make_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, StratifiedShuffleSplit

    cfg = settings.training
    if positive is not None:
        scorer: Any = make_scorer(f1_score, pos_label=classes.index(positive), zero_division=0)
    else:
        scorer = make_scorer(f1_score, average="macro", zero_division=0)
    if fam.search == "kfold":
        cv: Any = StratifiedKFold(folds, shuffle=True, random_state=cfg.seed)
    else:
        cv = StratifiedShuffleSplit(1, test_size=0.2, random_state=cfg.seed)
    estimator, grid = fam.estimator_and_grid(settings)
    search = GridSearchCV(
        estimator,
        grid,
        cv=cv,
        scoring=scorer,
        n_jobs=-1 if fam.input_kind == "features" else 1,  # the CNN parallelises inside torch
        refit=True,
        error_score="raise",
    )
    start = time.perf_counter()
    search.fit(data.X_train, y_train)
    seconds = time.perf_counter() - start
    proba = _scores(search.best_estimator_, data.X_test, len(classes))
    predicted = [classes[i] for i in proba.argmax(axis=1)]
    metrics = evaluate(test_labels, predicted, proba, classes, positive=positive, n_boot=cfg.bootstrap, seed=cfg.seed)
    best = search.best_index_
    return CandidateResult(
        extractor=extractor,
        family=fam.name,
        cv_f1=float(search.cv_results_["mean_test_score"][best]),
        cv_f1_std=float(search.cv_results_["std_test_score"][best]),
        params=dict(search.best_params_),
        test=metrics,
        fit_seconds=seconds,
        estimator=search.best_estimator_,
    )


def _mlflow_dataset(members: list[tuple[str, str, str]], vid: str, settings: Settings) -> Any:
    import warnings

    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame(members, columns=["sha256", "label", "split"])
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both readings are the folder
        warnings.simplefilter("ignore", UserWarning)
        return from_pandas(
            frame, source=str((settings.home / "raw").resolve()), name=f"conveyor-{vid}", targets="label", digest=vid
        )


def _log_candidate(
    result: CandidateResult, dataset: Any, test_labels: list[str], X_test: Any, classes: list[str], tmp: Path
) -> None:
    import mlflow

    mlflow.log_input(dataset, context="training")
    mlflow.log_params({"family": result.family, "extractor": result.extractor})
    mlflow.log_params({f"param_{k}": _jsonable(v) for k, v in result.params.items()})
    mlflow.log_metrics({"cv_f1": result.cv_f1, "cv_f1_std": result.cv_f1_std, "fit_seconds": result.fit_seconds})
    mlflow.log_metrics(result.test.as_dict("test_"))
    for row in getattr(result.estimator, "history_", []) or []:  # a network's learning curve, per epoch
        step = int(row["epoch"])
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=step)
    proba = _scores(result.estimator, X_test, len(classes))
    predicted = [classes[i] for i in proba.argmax(axis=1)]
    folder = tmp / result.name.replace("@", "_at_")
    folder.mkdir(parents=True, exist_ok=True)
    confusion_matrix_png(test_labels, predicted, classes, folder / "confusion_matrix.png", title=result.name)
    if len(set(test_labels)) > 1:  # a ROC curve needs both kinds of cases
        roc_curve_png(test_labels, proba, classes, folder / "roc_curve.png", title=result.name)
    mlflow.log_artifacts(str(folder), artifact_path="plots")


def _calibrate(best: CandidateResult, X_train: Any, y_train: np.ndarray, folds: int, settings: Settings) -> Any:
    """The winner refitted inside a calibrator, so its probabilities are honest. A network calibrates itself
    (temperature scaling on its validation fold) and is used as it is."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV

    if hasattr(best.estimator, "temperature_"):
        return best.estimator
    # ensemble=False: one classifier refitted on all the training data, calibrated on cross-validated predictions.
    # The default ensemble of one classifier per fold made every served prediction pay scikit-learn's input checks
    # five times (13 of 15 ms per request).
    calibrated = CalibratedClassifierCV(
        clone(best.estimator), method=settings.training.calibration, cv=folds, ensemble=False
    )
    return calibrated.fit(X_train, y_train)


def _gate(
    settings: Settings,
    challenger: Metrics,
    baselines: dict[str, Metrics],
    vid: str,
    members: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """Whether the new best may be registered, with the numbers and reasons (on ``training.gate_metric``)."""
    from conveyor.tracking.registry import CHAMPION, current_version

    metric = settings.training.gate_metric
    value = _metric(challenger, metric)
    interval = challenger.intervals.get(metric)
    low, high = (interval.low, interval.high) if interval is not None else (value, value)
    reasons: list[str] = []
    best_baseline = max(baselines, key=lambda name: _metric(baselines[name], metric))
    baseline_value = _metric(baselines[best_baseline], metric)
    if not low > baseline_value:
        reasons.append(
            f"test {metric} interval [{low:.3f}, {high:.3f}] does not clear {best_baseline} {metric} "
            f"{baseline_value:.3f}"
        )
    champion_version = current_version(settings, CHAMPION)
    champion_value = None
    if champion_version is not None:
        champion_value = _metric(_champion_metrics(settings, champion_version, members), metric)
        if champion_value > high:
            reasons.append(
                f"champion v{champion_version} scores {metric} {champion_value:.3f} on this test split, above the "
                f"challenger's interval [{low:.3f}, {high:.3f}]"
            )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "metric": metric,
        "value": value,
        "interval": [low, high],
        "best_baseline": best_baseline,
        "best_baseline_value": baseline_value,
        "champion_version": champion_version,
        "champion_value": champion_value,
        "dataset_version": vid,
    }


def _metric(metrics: Metrics, name: str) -> float:
    value = getattr(metrics, name)
    return float("nan") if value is None else float(value)


def _champion_metrics(settings: Settings, version: int, members: list[tuple[str, str, str]]) -> Metrics:
    """The champion's metrics on the current test split, scored through its own registered pyfunc model."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    test = [(sha, label) for sha, label, split in members if split == "test"]
    raw = raw_paths(settings, [sha for sha, _ in test])
    out = model.predict(pd.DataFrame({"image": [raw[sha].read_bytes() for sha, _ in test]}))
    served = [c.removeprefix("proba_") for c in out.columns if c.startswith("proba_")]
    classes = sorted({label for _, label in test} | set(served))
    proba = np.column_stack([out[f"proba_{c}"] if c in served else np.zeros(len(out)) for c in classes])
    positive = positive_class(classes, settings.training.positive_class)
    return evaluate([label for _, label in test], list(out["label"]), proba, classes, positive=positive, n_boot=100)


def _model_spec(
    settings: Settings, best: CandidateResult, classes: list[str], positive: str | None, vid: str
) -> dict[str, Any]:
    extractors = configured_extractors(settings)
    if best.extractor == PIXELS:
        chosen: list[Any] = []
    elif best.extractor == "all":
        chosen = extractors
    else:
        chosen = [e for e in extractors if e.name == best.extractor]
    return {
        "input_kind": "image" if best.extractor == PIXELS else "features",
        "preprocess": settings.preprocess.model_dump(mode="json"),
        "extractors": [[e.name, e.config()["params"]] for e in chosen],  # JSON-ready parameters
        "classes": classes,
        "positive": positive,
        "family": best.family,
        "extractor": best.extractor,
        "dataset_version": vid,
    }


def _register(
    settings: Settings,
    estimator: Any,
    spec: dict[str, Any],
    metrics: Metrics,
    gate: dict[str, Any],
    best: CandidateResult,
    vid: str,
) -> tuple[int, str]:
    """Log the pyfunc model in the parent run, register it, and give it its alias (champion if it is the first)."""
    import joblib
    import mlflow
    import mlflow.pyfunc

    import conveyor
    from conveyor.tracking.pyfunc import ConveyorModel
    from conveyor.tracking.registry import CHALLENGER, CHAMPION, set_alias

    with tempfile.TemporaryDirectory() as tmp:
        classifier = Path(tmp) / "classifier.joblib"
        joblib.dump(estimator, classifier)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        example = pd.DataFrame({"image": [_example_image(settings)]})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ConveyorModel(),
            artifacts={"classifier": str(classifier), "spec": str(spec_path)},
            code_paths=[str(Path(conveyor.__file__).parent)],
            signature=_signature(spec["classes"]),
            input_example=example,
            registered_model_name=settings.model_name,
            await_registration_for=60,
        )
    version = int(info.registered_model_version)
    from conveyor.tracking.registry import current_version

    alias = CHAMPION if current_version(settings, CHAMPION) is None else CHALLENGER
    reason = "first model to pass the gate" if alias == CHAMPION else "passed the gate against the champion"
    details = {"candidate": best.name, "dataset_version": vid, "metrics": metrics.as_dict("test_"), "gate": gate}
    set_alias(settings, alias, version, reason, details)
    return version, alias


def _signature(classes: list[str]) -> Any:
    """Input: ``image`` (bytes; base64 in JSON) or ``path``, each optional; output: label, confidence, probabilities."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    input_columns: list[Any] = [ColSpec("binary", "image", required=False), ColSpec("string", "path", required=False)]
    output_columns: list[Any] = [ColSpec("string", "label"), ColSpec("double", "confidence")]
    output_columns += [ColSpec("double", f"proba_{name}") for name in classes]
    inputs, outputs = Schema(input_columns), Schema(output_columns)
    return ModelSignature(inputs=inputs, outputs=outputs)


def _example_image(settings: Settings) -> bytes:
    """The bytes of one stored image, as the input example of the model's signature."""
    for path in sorted((settings.home / "raw").rglob("*.*"))[:1]:
        return path.read_bytes()
    raise ConveyorError("no stored image to use as the model's input example")
