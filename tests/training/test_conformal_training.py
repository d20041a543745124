"""Training holds out a calibration part of the training split, calibrates the winner's prediction sets on it, reports
their coverage on the test split, and registers the calibration with the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.data.versions import dataset_members
from conveyor.tracking.integrity import load_verified
from conveyor.training.train import TrainResult, train
from conveyor.workspace import open_workspace
from tests.training.test_train import small_settings


def _settings(home: Path, **conformal: object) -> Settings:
    return small_settings(home, conformal={"min_per_class": 5, **conformal})


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    root = tmp_path_factory.mktemp("conformal")
    settings = _settings(root / "ws")
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=5))
    ingest(root / "src", settings)
    return settings, train(settings)


def _train_counts(settings: Settings, version: str) -> dict[str, int]:
    members = dataset_members(open_workspace(settings), version)
    labels = [label for _, label, split in members if split == "train"]
    return {label: labels.count(label) for label in sorted(set(labels))}


def test_a_fifth_of_each_class_is_held_out_of_the_search(calibrated) -> None:  # type: ignore[no-untyped-def]
    settings, result = calibrated
    counts = _train_counts(settings, result.dataset_version)
    held = result.conformal["n_calibration"]
    assert held == {label: round(0.2 * n) for label, n in counts.items()}
    assert result.best.n + sum(held.values()) == sum(counts.values())


def test_the_test_split_is_reported_at_each_coverage(calibrated) -> None:  # type: ignore[no-untyped-def]
    settings, result = calibrated
    members = dataset_members(open_workspace(settings), result.dataset_version)
    test = [label for _, label, split in members if split == "test"]
    levels = result.conformal["levels"]
    assert sorted(levels) == ["0.8", "0.9", "0.95"]
    for found in levels.values():
        assert {name: c["n"] for name, c in found["per_class"].items()} == {c: test.count(c) for c in sorted(set(test))}
        assert found["n"] == len(test) and 0.0 <= found["singleton_share"] <= 1.0


def test_the_registered_model_carries_its_calibration(calibrated) -> None:  # type: ignore[no-untyped-def]
    settings, result = calibrated
    model = load_verified(settings, result.registered_version).unwrap_python_model()
    assert model.conformal.counts() == result.conformal["n_calibration"]
    sets = model.prediction_sets(np.array([[0.5, 0.5], [0.999, 0.001]]), 0.8)
    assert len(sets) == 2 and all(set(s) <= {"no_tumour", "tumour"} for s in sets)


def test_the_sets_are_the_test_reports_sets(calibrated) -> None:  # type: ignore[no-untyped-def]
    """The coverage the report gives is recomputed from the registered model's own answers on the test images."""
    settings, result = calibrated
    model = load_verified(settings, result.registered_version).unwrap_python_model()
    members = dataset_members(open_workspace(settings), result.dataset_version)
    test = [(sha, label) for sha, label, split in members if split == "test"]
    raws = {sha: next((settings.home / "raw" / sha[:2]).glob(f"{sha}.*")) for sha, _ in test}
    proba = model.predict_images([model.image(raws[sha].read_bytes()) for sha, _ in test])
    sets = model.prediction_sets(proba, 0.9)
    covered = np.mean([label in found for (_, label), found in zip(test, sets, strict=True)])
    assert covered == pytest.approx(result.conformal["levels"]["0.9"]["coverage"])


def test_without_enough_images_per_class_there_are_no_sets_and_the_reason(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "ws")  # min_per_class 10: 0.2 of ~32 is 6
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=64, seed=2))
    ingest(tmp_path / "src", settings)
    result = train(settings)
    assert result.conformal == {
        "calibrated": False,
        "reason": "no prediction sets: 0.2 of the training images of ['no_tumour', 'tumour'] is under "
        "training.conformal.min_per_class (10)",
    }
    model = load_verified(settings, result.registered_version).unwrap_python_model()  # type: ignore[arg-type]
    assert model.prediction_sets(np.array([[0.5, 0.5]]), 0.9) is None


def test_monitoring_reports_the_sets_coverage_on_a_labelled_batch(calibrated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from conveyor.monitoring.monitor import monitor_batch

    settings, _ = calibrated
    generate_dataset(tmp_path / "batch", SyntheticSpec(n_per_class=10, size=96, seed=77))
    summary = monitor_batch(tmp_path / "batch", settings)
    found = summary["conformal"]
    assert (found["target"], found["n"]) == (0.9, 20)
    assert {name: c["n"] for name, c in found["per_class"].items()} == {"no_tumour": 10, "tumour": 10}
    fired = "coverage" in [a["rule"] for a in summary["alerts"]]
    assert fired == (found["high"] < 0.9)


REAL_SET = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_mri_yes_no"


@pytest.mark.skipif(not REAL_SET.is_dir(), reason=f"the real yes/no MRI set is not at {REAL_SET}")
def test_on_real_mri_each_class_is_covered_within_its_interval(tmp_path: Path) -> None:
    """The real yes/no set (228 distinct slices): at 0.80, 0.90 and 0.95, every class's coverage on the test split is
    not significantly under the target (its 95% binomial interval reaches it)."""
    settings = Settings(
        home=tmp_path / "ws",
        features={"extractors": ["stats", "intensity"]},  # type: ignore[arg-type]
        training={"families": ["logreg"], "extractors": ["all"], "bootstrap": 200},  # type: ignore[arg-type]
    )
    ingest(REAL_SET, settings)
    report = train(settings).conformal
    assert report is not None and report["calibrated"] and set(report["n_calibration"]) == {"no", "yes"}
    for level, found in report["levels"].items():
        for name, c in found["per_class"].items():
            assert c["met"], (level, name, c)


def test_classes_with_too_few_calibration_cases_for_a_coverage_are_flagged(calibrated) -> None:  # type: ignore[no-untyped-def]
    _, result = calibrated
    held = result.conformal["n_calibration"]
    for level, found in result.conformal["levels"].items():
        expected = {name: n < float(level) / (1 - float(level)) for name, n in held.items()}
        assert {name: c["always_in_set"] for name, c in found["per_class"].items()} == expected


def test_the_train_command_says_which_classes_are_in_every_set(calibrated, capsys) -> None:  # type: ignore[no-untyped-def]
    from conveyor.cli import _print_conformal

    _, result = calibrated
    _print_conformal(result.conformal)
    printed = capsys.readouterr().out
    assert "in every set" in printed and "19 are needed at 0.95" in printed
