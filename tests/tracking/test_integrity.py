"""A registered model's artifacts are hashed at registration, and a version whose files changed is never loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.serving.models import load_version
from conveyor.tracking.integrity import ModelIntegrityError, artifact_manifest
from conveyor.tracking.registry import history
from conveyor.training.train import train
from tests.training.test_train import small_settings


@pytest.fixture
def registered(tmp_path: Path) -> Settings:
    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=5))
    ingest(tmp_path / "src", settings)
    assert train(settings).registered_version == 1
    return settings


def classifier_file(settings: Settings) -> Path:
    [found] = (settings.home / "mlartifacts").rglob("classifier.joblib")
    return found


def test_registration_records_every_artifact_hash_in_the_audit_log(registered: Settings) -> None:
    [record] = history(registered, registered.model_name)
    folder = classifier_file(registered).parents[1]  # the model's own folder, with MLmodel at its top
    assert (folder / "MLmodel").is_file()
    # every stored file, and the registered_model_meta MLflow writes beside them when it hands a version out
    assert record.details["artifacts"]["files"] == len(artifact_manifest(folder)) + 1
    assert len(record.details["artifacts"]["digest"]) == 64


def test_an_untouched_version_loads(registered: Settings) -> None:
    assert load_version(registered, 1).version == 1


def test_a_changed_artifact_is_refused_with_an_audit_entry(registered: Settings) -> None:
    target = classifier_file(registered)
    target.write_bytes(target.read_bytes() + b"\x00")
    with pytest.raises(ModelIntegrityError) as refused:
        load_version(registered, 1)
    assert str(refused.value) == (
        "model 'conveyor' version 1: 1 artifact file(s) differ from the registration: "
        "artifacts/classifier.joblib; refusing to load it"
    )
    assert history(registered, registered.model_name)[-1].action == "integrity_failed"


def test_an_added_file_is_refused_too(registered: Settings) -> None:
    (classifier_file(registered).parent / "sitecustomize.py").write_text("import os\n")
    with pytest.raises(ModelIntegrityError, match=r"artifacts/sitecustomize\.py"):
        load_version(registered, 1)


def test_rehash_records_the_current_files_on_purpose(registered: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    target = classifier_file(registered)
    target.write_bytes(target.read_bytes() + b"\x00")
    monkeypatch.setattr("conveyor.cli._settings", lambda: registered)
    result = CliRunner().invoke(app, ["models", "--rehash", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert history(registered, registered.model_name)[-1].action == "rehash"
    assert load_version(registered, 1).version == 1  # the admin vouched for the files as they are now
