"""Settings come from code, the environment, conveyor.yaml and defaults, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.config import Settings


def test_defaults(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert (settings.ingest.test_fraction, settings.preprocess.size) == (0.2, (128, 128))
    assert settings.resolved_db_url == f"sqlite:///{tmp_path.resolve()}/conveyor.db"


def test_yaml_file_in_the_workspace_is_read(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("ingest:\n  min_side: 64\npreprocess:\n  size: [96, 96]\n")
    settings = Settings(home=tmp_path)
    assert (settings.ingest.min_side, settings.preprocess.size) == (64, (96, 96))


def test_environment_overrides_the_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conveyor.yaml").write_text("ingest:\n  min_side: 64\n")
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    monkeypatch.setenv("CONVEYOR_INGEST__MIN_SIDE", "100")
    monkeypatch.setenv("CONVEYOR_DB_URL", "postgresql://u@127.0.0.1:5432/db")
    settings = Settings()
    assert (settings.home, settings.ingest.min_side) == (tmp_path, 100)
    assert settings.resolved_db_url == "postgresql://u@127.0.0.1:5432/db"


def test_a_bad_value_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("ingest:\n  test_fraction: 1.5\n")
    with pytest.raises(ValidationError, match=r"ingest\.test_fraction"):
        Settings(home=tmp_path)


def test_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("ingets:\n  min_side: 3\n")
    with pytest.raises(ValidationError, match="ingets"):
        Settings(home=tmp_path)


@pytest.mark.parametrize("key", ["metric", "gate_metric"])
def test_the_metric_is_read_under_its_new_and_its_old_name(tmp_path: Path, key: str) -> None:
    (tmp_path / "conveyor.yaml").write_text(f"training:\n  {key}: roc_auc\n")
    assert Settings(home=tmp_path).training.metric == "roc_auc"


def test_the_metric_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TRAINING__METRIC", "f1")
    assert Settings(home=tmp_path).training.metric == "f1"


def test_an_unknown_metric_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("training:\n  metric: precision\n")
    with pytest.raises(ValidationError, match=r"training\.metric"):
        Settings(home=tmp_path)


@pytest.mark.parametrize("threshold", ["mean", "median", "0.5*mean", "2 * median", 0.01])
def test_a_selection_threshold_scikit_learn_reads_is_taken(tmp_path: Path, threshold: object) -> None:
    settings = Settings(home=tmp_path, training={"feature_selection": {"threshold": threshold}})  # type: ignore[arg-type]
    assert settings.training.feature_selection.threshold == threshold


def test_a_selection_threshold_scikit_learn_cannot_read_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'average' is not an importance"):
        Settings(home=tmp_path, training={"feature_selection": {"threshold": "average"}})  # type: ignore[arg-type]
