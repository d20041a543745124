"""The tasks' typed outputs: a renamed or missing field fails where it is read, not as a silent None."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.pipelines.contracts import CONTRACTS, MonitorOutcome, Retrain, TrainOutcome, dump, schema

MONITOR = {
    "id": 3,
    "drift_share": 0.4,
    "drifted_columns": ["image.brightness"],
    "performance": {
        "model": {"f1": 0.9, "accuracy": 0.9},
        "dummy_by_reference": {"f1": 0.5},
        "dummy_by_current": {"f1": 0.4},
    },
    "ood_share": 0.1,
    "alerts": [{"rule": "drift_share", "value": 0.4, "threshold": 0.3, "message": "4 of 10 columns drifted"}],
    "retrain": {"retrain": True, "reason": "drift", "reasons": ["drift"], "new_labelled": 20},
    "report": "reports/x/drift_report.html",
}


def test_a_monitor_output_reads_typed_and_keeps_what_it_does_not_name() -> None:
    outcome = MonitorOutcome.model_validate(MONITOR)
    assert (outcome.drifted, outcome.retrain.retrain, outcome.performance.model.f1) == (True, True, 0.9)  # type: ignore[union-attr]
    assert dump(outcome)["retrain"]["new_labelled"] == 20


def test_a_renamed_field_fails_where_it_is_read() -> None:
    renamed = {**MONITOR, "retrain": {"should_retrain": True}}
    with pytest.raises(ValidationError, match=r"retrain\.retrain"):
        MonitorOutcome.model_validate(renamed)


def test_the_first_model_is_asked_for_when_there_is_no_champion() -> None:
    first = MonitorOutcome(skipped="no champion yet", retrain=Retrain(retrain=True, reason="no champion yet"))
    assert MonitorOutcome.model_validate(dump(first)).retrain.retrain is True


def test_a_skipped_train_task_has_no_outcome() -> None:
    assert TrainOutcome.of({"status": "skipped"}) is None
    trained = TrainOutcome.of(
        {
            "dataset_version": "v",
            "search": {"mode": "refit"},
            "best": {},
            "registered_version": 2,
            "alias": "challenger",
        }
    )
    assert trained is not None and (trained.registered_version, trained.alias) == (2, "challenger")


def test_the_exported_schema_names_the_fields_and_the_required_ones() -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    result = CliRunner().invoke(app, ["schema", "ingest", "--json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    fields = ["source", "seen", "stored", "duplicates", "conflicts", "quarantined", "by_reason", "dataset_version"]
    assert list(exported["properties"]) == fields
    assert exported["required"] == fields


def test_an_unknown_schema_is_refused_with_the_names() -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    result = CliRunner().invoke(app, ["schema", "ingests"])
    assert result.exit_code == 2
    assert "no schema named 'ingests'; one of ingest, features, train, monitor" in result.output


@pytest.mark.slow
def test_what_the_commands_print_meets_their_exported_schemas(tmp_path: Path) -> None:
    """What the Airflow DAGs rely on: each command's --json output has every field its schema requires, typed."""
    from typer.testing import CliRunner

    from conveyor.cli import app
    from conveyor.data.synthetic import SyntheticSpec, generate_dataset

    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=20, size=64, seed=3))
    runner = CliRunner()
    env = {"CONVEYOR_TRAINING__FAMILIES": '["logreg"]', "CONVEYOR_FEATURES__EXTRACTORS": '["intensity"]'}
    for command, args in (("ingest", [str(tmp_path / "src")]), ("features", []), ("train", [])):
        result = runner.invoke(app, [command, *args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        exported = schema(command)
        assert set(exported["required"]) <= set(payload)
        CONTRACTS[command].model_validate(payload)
