"""conveyor train: candidates, MLflow runs, the gate, a pyfunc model that predicts on raw bytes."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.data.versions import dataset_members
from conveyor.store.db import get_engine
from conveyor.tracking.registry import history
from conveyor.tracking.setup import configure_mlflow
from conveyor.training.train import TrainResult, train


def small_settings(home: Path, **training: object) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (64, 64)},  # type: ignore[arg-type]
        features={"extractors": ["intensity", "stats"]},  # type: ignore[arg-type]
        training={"families": ["logreg"], "extractors": ["intensity"], "cv_folds": 3, "bootstrap": 200, **training},  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    """A workspace with demo data and one training run (read-only for the tests that use it)."""
    root = tmp_path_factory.mktemp("trained")
    settings = small_settings(root / "ws", families=["logreg", "random_forest"], extractors=["intensity", "all"])
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    ingest(root / "src", settings)
    return settings, train(settings)


def load_champion(settings: Settings):  # type: ignore[no-untyped-def]
    import mlflow.pyfunc

    configure_mlflow(settings)
    return mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")


def test_every_candidate_is_in_the_table(trained: tuple[Settings, TrainResult]) -> None:
    _, result = trained
    assert sorted(c.name for c in result.candidates) == [
        "logreg@all",
        "logreg@intensity",
        "random_forest@all",
        "random_forest@intensity",
    ]
    assert [c.cv_f1 for c in result.candidates] == sorted((c.cv_f1 for c in result.candidates), reverse=True)


def test_the_first_model_passing_the_gate_becomes_champion(trained: tuple[Settings, TrainResult]) -> None:
    settings, result = trained
    assert result.gate.passed is True
    assert (result.registered_version, result.alias) == (1, "champion")
    [record] = history(settings, settings.model_name)
    assert (record.action, record.details["version"], record.details["candidate"]) == (
        "set_champion",
        1,
        result.best.name,
    )
    assert record.details["metrics"]["test_f1"] == pytest.approx(result.calibrated.f1)


def test_runs_are_tracked_in_mlflow(trained: tuple[Settings, TrainResult]) -> None:
    import mlflow

    settings, result = trained
    experiment = configure_mlflow(settings)
    children = mlflow.search_runs(
        experiment_ids=[experiment], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert len(children) == 4
    assert set(children["params.family"]) == {"logreg", "random_forest"}
    assert children["metrics.cv_f1"].notna().all()
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(result.best.run_id, "plots")}
    assert artifacts == {"plots/confusion_matrix.png", "plots/roc_curve.png"}
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["dataset_version"] == result.dataset_version
    assert parent.inputs.dataset_inputs[0].dataset.digest == result.dataset_version


def test_champion_predicts_on_raw_bytes(trained: tuple[Settings, TrainResult]) -> None:
    settings, result = trained
    model = load_champion(settings)
    engine = get_engine(settings.resolved_db_url)
    test = [(sha, label) for sha, label, split in dataset_members(engine, result.dataset_version) if split == "test"]
    blobs = [next((settings.home / "raw" / sha[:2]).glob(f"{sha}.*")).read_bytes() for sha, _ in test]
    out = model.predict(pd.DataFrame({"image": blobs}))
    assert list(out.columns) == ["label", "confidence", "proba_no_tumour", "proba_tumour"]
    np.testing.assert_allclose(out[["proba_no_tumour", "proba_tumour"]].sum(axis=1), 1.0)
    accuracy = float(np.mean(out["label"].to_numpy() == np.array([label for _, label in test])))
    assert accuracy == pytest.approx(result.calibrated.accuracy)  # the served model is the evaluated model


def test_champion_accepts_base64_text(trained: tuple[Settings, TrainResult]) -> None:
    settings, _ = trained
    model = load_champion(settings)
    blob = next((settings.home / "raw").rglob("*.png")).read_bytes()
    by_bytes = model.predict(pd.DataFrame({"image": [blob]}))
    by_text = model.predict(pd.DataFrame({"image": [base64.b64encode(blob).decode()]}))
    pd.testing.assert_frame_equal(by_bytes, by_text)


def test_champion_refuses_a_text_file_with_a_reason(trained: tuple[Settings, TrainResult]) -> None:
    from mlflow.exceptions import MlflowException

    settings, _ = trained
    model = load_champion(settings)
    with pytest.raises(MlflowException, match="not_an_image"):
        model.predict(pd.DataFrame({"image": [b"just some text"]}))


def test_json_summary_has_the_documented_keys(trained: tuple[Settings, TrainResult]) -> None:
    _, result = trained
    summary = result.to_dict()
    assert {"dataset_version", "candidates", "best", "registered_version", "alias"} <= summary.keys()
    assert summary["best"]["name"] == result.best.name
    assert summary["baselines"].keys() == {"dummy_by_reference", "dummy_by_current", "majority"}


def test_a_model_that_cannot_beat_the_dummies_is_refused(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "ws")
    rng = np.random.default_rng(0)
    paths = generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=20, size=96, seed=4))
    shuffled = tmp_path / "shuffled"
    for path in paths:  # labels drawn at random: nothing to learn
        label = "a" if rng.random() < 0.5 else "b"
        (shuffled / label).mkdir(parents=True, exist_ok=True)
        (shuffled / label / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    ingest(shuffled, settings)
    result = train(settings)
    assert result.gate.passed is False
    assert "does not clear" in result.gate.reasons[0]
    assert (result.registered_version, result.alias) == (None, None)
    [record] = history(settings, settings.model_name)
    assert record.action == "refused"
