"""conveyor train: candidates, MLflow runs, the gate, a pyfunc model that predicts on raw bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.data.versions import dataset_members
from conveyor.features.extractors import EXTRACTORS
from conveyor.store.db import get_engine
from conveyor.tracking.registry import history
from conveyor.tracking.setup import configure_mlflow
from conveyor.training.train import TrainResult, train
from conveyor.workspace import open_workspace


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
        "stack@all",  # the two families' finalists, stacked on the table that holds both
    ]
    finalists = [c.cv_score for c in result.candidates if c.stage == "final"]
    assert finalists == sorted(finalists, reverse=True)


def test_selection_and_gate_use_the_one_configured_metric(trained: tuple[Settings, TrainResult]) -> None:
    _, result = trained
    assert (result.metric, result.gate.metric) == ("balanced_accuracy", "balanced_accuracy")
    assert result.gate.value == result.calibrated.balanced_accuracy
    assert result.to_dict()["best"]["cv_score"] == result.best.cv_score


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
    assert len(children) == 5
    assert set(children["params.family"]) == {"logreg", "random_forest", "stack"}
    assert children["metrics.cv_balanced_accuracy"].notna().all()
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


@pytest.fixture(scope="module")
def searched_then_refitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult, TrainResult]:
    """A race over four candidates (two finalists), then a refit after 25% more images."""
    root = tmp_path_factory.mktemp("refit")
    search = {"finalists": 2, "refit_candidates": 2, "min_samples": 20}
    settings = small_settings(root / "ws", families=["logreg", "svm"], extractors=["intensity", "stats"], search=search)
    settings = settings.model_copy(
        update={"features": settings.features.model_copy(update={"extractors": ["intensity", "stats"]})}
    )
    generate_dataset(root / "first", SyntheticSpec(n_per_class=40, size=96, seed=5))
    ingest(root / "first", settings)
    race = train(settings, mode="race")
    generate_dataset(root / "later", SyntheticSpec(n_per_class=10, size=96, seed=6))
    ingest(root / "later", settings)
    return settings, race, train(settings, mode="auto")


def test_a_race_keeps_every_candidate_in_the_table(searched_then_refitted: Any) -> None:
    _, race, _ = searched_then_refitted
    assert sorted(c.name for c in race.candidates) == ["logreg@intensity", "logreg@stats", "svm@intensity", "svm@stats"]
    finalists = [c for c in race.candidates if c.stage == "final"]
    assert len(finalists) == 2 and all(c.test is not None for c in finalists)
    assert all(c.test is None for c in race.candidates if c.stage != "final")
    assert [c.cv_score for c in finalists] == sorted((c.cv_score for c in finalists), reverse=True)


def test_auto_refits_after_a_small_growth_with_the_exact_parameters(searched_then_refitted: Any) -> None:
    _, race, refit = searched_then_refitted
    assert refit.search.mode == "refit"
    assert "under the 50% that calls for a new search" in refit.search.reason
    chosen = {c.name: c.params for c in race.candidates if c.stage == "final"}
    assert {c.name: c.params for c in refit.candidates} == chosen
    assert refit.search.fits == 2 * 3  # two candidates x three folds, nothing else


def test_each_run_records_its_search_mode_and_reason_in_mlflow(searched_then_refitted: Any) -> None:
    import mlflow

    from conveyor.tracking.searches import last_search

    settings, race, refit = searched_then_refitted
    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    tags = {r.search.mode: client.get_run(str(r.parent_run_id)).data.tags for r in (race, refit)}
    assert (tags["race"]["conveyor.search"], tags["refit"]["conveyor.search"]) == ("race", "refit")
    assert tags["refit"]["conveyor.search_reason"] == refit.search.reason
    previous = last_search(settings)  # a refit never replaces the search it reused
    assert previous is not None and previous.mode == "race" and previous.run_id != refit.parent_run_id


def test_the_calibrated_champion_comes_from_out_of_fold_scores(searched_then_refitted: Any) -> None:
    from conveyor.training.calibration import OutOfFoldCalibrated

    settings, race, _ = searched_then_refitted
    model = load_champion(settings).unwrap_python_model()
    assert isinstance(model.classifier, OutOfFoldCalibrated)
    assert model.classifier.estimator.get_params()["clf__C"] == race.best.params["clf__C"]


def test_a_drifted_batch_makes_the_pipeline_search_anew(searched_then_refitted: Any) -> None:
    from conveyor.pipelines.definitions import train_task

    settings, _, _ = searched_then_refitted
    monitor = {"alerts": [{"rule": "drift_share", "message": "drift"}], "retrain": {"retrain": True, "reason": "drift"}}
    output = train_task(settings, {}, {"monitor": monitor})
    assert output["search"]["mode"] == "race"
    assert output["search"]["reason"] == "the monitor saw drift: the best candidate may have changed"


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_rerun_marks_the_runs_of_a_killed_train_failed(tmp_path: Path) -> None:
    import socket

    import mlflow

    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=20, size=96, seed=8))
    ingest(tmp_path / "src", settings)
    experiment = configure_mlflow(settings)
    client = mlflow.MlflowClient()
    tags = {"conveyor.pid": str(_dead_pid()), "conveyor.host": socket.gethostname()}
    orphan = client.create_run(experiment, tags=tags, run_name="train (killed)").info.run_id
    elsewhere = client.create_run(experiment, tags={**tags, "conveyor.host": "another-host"}).info.run_id
    train(settings)
    assert client.get_run(orphan).info.status == "FAILED"
    assert client.get_run(elsewhere).info.status == "RUNNING"  # another machine's process: not ours to judge


def test_a_registration_cut_off_before_its_audit_is_completed_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conveyor.tracking.registry as registry
    from conveyor.tracking.registry import list_versions

    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=5))
    ingest(tmp_path / "src", settings)

    def killed(*_args: object, **_kwargs: object) -> None:
        raise SystemExit("killed between registering and auditing")

    with monkeypatch.context() as patched:
        patched.setattr(registry, "set_alias", killed)
        with pytest.raises(SystemExit):
            train(settings)
    assert [(v.version, v.aliases) for v in list_versions(settings)] == [(1, [])]
    result = train(settings)
    assert (result.registered_version, result.alias) == (1, "champion")
    assert [(v.version, v.aliases) for v in list_versions(settings)] == [(1, ["champion"])]
    [record] = history(settings, settings.model_name)
    assert (record.action, record.details["version"]) == ("set_champion", 1)
    assert record.reason == "registered by an interrupted run; completed"


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _is_loky(pid: int) -> bool:
    try:
        return b"loky" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.slow
def test_the_search_workers_of_a_killed_train_exit_with_it(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=60, size=96, seed=9))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_"))}
    env.update(CONVEYOR_HOME=str(tmp_path / "ws"), CONVEYOR_PREPROCESS__SIZE="[64, 64]")
    # every extractor: a search long enough to be killed mid-fit (the default two finish in seconds)
    env["CONVEYOR_FEATURES__EXTRACTORS"] = json.dumps(sorted(EXTRACTORS))
    run = [sys.executable, "-m", "conveyor"]
    subprocess.run([*run, "ingest", str(tmp_path / "src")], env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([*run, "features"], env=env, check=True, capture_output=True, timeout=300)
    train_process = subprocess.Popen([*run, "train"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    fitting: set[int] = set()
    while len(fitting) < 2 and time.monotonic() < deadline:  # the search's workers have imported and are fitting
        time.sleep(0.5)
        workers = {p for p in _children(train_process.pid) if _is_loky(p)}
        fitting = {p for p in workers if _cpu_seconds(p) > 6.0}
    assert len(fitting) >= 2, "the search never started fitting"
    train_process.send_signal(signal.SIGKILL)
    train_process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(p) for p in workers):
        time.sleep(0.5)
    alive = [p for p in workers if _running(p)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def test_the_gate_scores_the_champion_from_the_feature_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its test split's features are stored: no image is read again, and the metrics equal those from the bytes."""
    import shutil

    import conveyor.training.train as train_module

    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=30, size=96, seed=8))
    ingest(tmp_path / "src", settings)
    assert train(settings).registered_version == 1
    members = dataset_members(get_engine(settings.resolved_db_url))
    configure_mlflow(settings)

    def no_image_reads(*_args: Any) -> Any:
        raise AssertionError("an image was read again")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "raw_images", no_image_reads)
        from_store = train_module._champion_metrics(settings, 1, members)
    shutil.rmtree(settings.home / "features")  # nothing stored: every test image from its bytes
    from_bytes = train_module._champion_metrics(settings, 1, members)
    assert from_store.n == from_bytes.n == sum(split == "test" for _, _, split in members)
    assert (from_store.f1, from_store.accuracy) == pytest.approx((from_bytes.f1, from_bytes.accuracy))


def test_cv_folds_keep_each_patient_whole(tmp_path: Path) -> None:
    """80 generated images filed as 20 patients of 4: the folds run over the 16 training patients, not 64 images."""
    settings = small_settings(tmp_path / "ws")
    paths = generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    rows = [
        f"{p.relative_to(tmp_path / 'src').as_posix()},{p.parent.name},P{i // 4}" for i, p in enumerate(sorted(paths))
    ]
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,group\n" + "\n".join(rows) + "\n")
    ingest(tmp_path / "src", settings, labels_csv=csv)
    result = train(settings)
    assert result.search.cv_groups == 16
    assert result.to_dict()["search"]["cv_groups"] == 16


def test_without_groups_or_near_duplicates_the_folds_are_plain(trained: tuple[Settings, TrainResult]) -> None:
    _, result = trained
    assert result.search.cv_groups is None


def test_the_registered_feature_model_has_its_importance_on_record(trained: tuple[Settings, TrainResult]) -> None:
    from conveyor.tracking.explain import importance_of

    settings, result = trained
    found = importance_of(settings, 1)
    assert (found["metric"], found["candidate"]) == ("balanced_accuracy", result.best.name)
    assert found["baseline"] == pytest.approx(result.calibrated.balanced_accuracy)
    expected_groups = {"intensity"} if result.best.extractor == "intensity" else {"intensity", "stats"}
    assert {g["group"] for g in found["groups"]} == expected_groups
    assert Path(found["plot"]).is_file()


def test_explaining_a_version_that_does_not_exist_says_so(trained: tuple[Settings, TrainResult]) -> None:
    from conveyor.errors import NotFoundError
    from conveyor.tracking.explain import importance_of

    settings, _ = trained
    with pytest.raises(NotFoundError, match="has no version 9"):
        importance_of(settings, 9)


def test_feature_selection_adds_a_selecting_variant_of_each_family(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "ws", feature_selection={"keep": "top_k", "k": 5}, search={"mode": "grid"})
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=30, size=96, seed=4))
    ingest(tmp_path / "src", settings)
    result = train(settings)
    assert sorted(c.name for c in result.candidates) == ["logreg+select@intensity", "logreg@intensity"]
    selected = next(c for c in result.candidates if c.family == "logreg+select")
    assert selected.test is not None and set(selected.params) == {"model__clf__C"}


def test_clips_are_scored_per_clip_as_well_as_per_frame(tmp_path: Path) -> None:
    from tests.helpers import blob_clip, write

    settings = small_settings(tmp_path / "ws")
    for i in range(8):
        write(tmp_path / "src" / "fall" / f"c{i}.mp4", blob_clip(True, seed=i))
        write(tmp_path / "src" / "upright" / f"c{i}.mp4", blob_clip(False, seed=100 + i))
    ingest(tmp_path / "src", settings)
    result = train(settings)
    assert result.clip_test is not None
    assert result.clip_test.n == 4  # a fifth of each class's 8 clips, whole
    assert result.calibrated.n == sum(1 for _, _, split in dataset_members(open_workspace(settings)) if split == "test")
    assert result.to_dict()["clip_test"]["n"] == 4.0


def test_still_images_have_no_clip_score(trained: tuple[Settings, TrainResult]) -> None:
    _, result = trained
    assert result.clip_test is None and result.to_dict()["clip_test"] is None


def test_each_finalist_reports_its_cv_test_gap(trained: tuple[Settings, TrainResult]) -> None:
    _, result = trained
    for row, candidate in zip(result.to_dict()["candidates"], result.candidates, strict=True):
        if candidate.test is None:
            assert row["cv_test_gap"] is None
        else:
            assert row["cv_test_gap"] == candidate.test.balanced_accuracy - candidate.cv_score
