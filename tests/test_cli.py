"""The CLI: every command listed, --json prints one object, errors exit 1 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from tests.helpers import png_bytes, write

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "ingest", "datasets", "demo"):
        assert command in result.output


def test_ingest_json_prints_one_summary_object(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a" / "x.png", png_bytes(seed=1))
    write(tmp_path / "src" / "b" / "y.png", png_bytes(seed=2))
    result = runner.invoke(app, ["ingest", str(tmp_path / "src"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    keys = {"seen", "stored", "duplicates", "conflicts", "quarantined", "by_reason", "by_class", "dataset_version"}
    assert keys <= summary.keys()
    assert (summary["seen"], summary["stored"]) == (2, 2)


def test_ingest_of_a_missing_folder_fails_with_a_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": f"{tmp_path / 'nope'}: no such file or folder", "type": "SourceError"}


def _one_line(text: str) -> str:
    return " ".join(text.split())  # the terminal wraps long messages


def test_an_invalid_setting_in_a_variable_is_named_with_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TRAINING__CNN__NETWORKS", "0")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 2
    assert _one_line(result.stderr) == (
        "error: invalid settings (conveyor.yaml or CONVEYOR_* variables): "
        "training.cnn.networks: Input should be greater than or equal to 1 (got '0')"
    )


def test_a_malformed_json_variable_is_refused_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TRAINING__FAMILIES", "[cnn")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 2
    assert 'error parsing value for field "training" from source "EnvSettingsSource"' in _one_line(result.stderr)


def test_a_malformed_conveyor_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    write(tmp_path / "ws" / "conveyor.yaml", b"training:\n  cnn: [unclosed\n")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 2
    squeezed = "".join(result.stderr.split())  # the terminal wraps anywhere in a long path
    assert squeezed.startswith("error:invalidsettings(conveyor.yamlorCONVEYOR_*variables):whileparsingaflowsequence")
    assert f'in"{tmp_path / "ws" / "conveyor.yaml"}",line2,column8' in squeezed


def test_second_ingest_says_nothing_new(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a" / "x.png", png_bytes(seed=1))
    runner.invoke(app, ["ingest", str(tmp_path / "src")])
    result = runner.invoke(app, ["ingest", str(tmp_path / "src")])
    assert result.exit_code == 0
    assert "nothing new: all 1 files were ingested before" in result.output


def test_datasets_lists_versions(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a" / "x.png", png_bytes(seed=1))
    version = json.loads(runner.invoke(app, ["ingest", str(tmp_path / "src"), "--json"]).stdout)["dataset_version"]
    listed = json.loads(runner.invoke(app, ["datasets", "--json"]).stdout)
    assert [v["id"] for v in listed["versions"]] == [version]


@pytest.mark.slow
def test_demo_runs_the_whole_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_FEATURES__EXTRACTORS", '["intensity"]')
    monkeypatch.setenv("CONVEYOR_TRAINING__FAMILIES", '["logreg"]')
    monkeypatch.setenv("CONVEYOR_PREPROCESS__SIZE", "[64, 64]")
    monkeypatch.setenv("CONVEYOR_MONITORING__RETRAIN__MIN_NEW_LABELLED", "40")
    result = runner.invoke(app, ["demo", "--n-per-class", "40", "--no-serve", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["ingest"]["seen"], summary["ingest"]["stored"], summary["ingest"]["quarantined"]) == (80, 80, 0)
    assert summary["features"]["tables"]["intensity"]["rows"] == 80
    assert summary["ingest"]["masks"] == 80
    assert summary["segmentation"]["registered_version"] == 1  # the U-Net on the generated lesion masks
    assert sorted(c["name"] for c in summary["train"]["candidates"]) == ["logreg@all", "logreg@intensity"]
    assert (summary["train"]["registered_version"], summary["train"]["alias"]) == (1, "champion")
    rows = summary["batches"]
    filed = {r["batch"]: r for r in rows if r["batch"] != "clinician feedback"}
    assert list(filed) == ["same distribution", "unseen lesion type", "large batch", "fresh test batch"]
    assert all(r["status"] == "success" for r in rows)
    same, lesion, large = filed["same distribution"], filed["unseen lesion type"], filed["large batch"]
    assert (same["drift_share"], same["retrain"]) == (0.0, False)
    assert same["model_f1"] > max(same["dummy_by_reference_f1"], same["dummy_by_current_f1"])
    assert same["metric"] == "balanced_accuracy"
    assert same["model_score"] > max(same["dummy_by_reference_score"], same["dummy_by_current_score"])
    assert lesion["drift_share"] > 0.2
    assert (large["files"], large["retrain"], large["alias"]) == (40, True, "challenger")
    # Every challenger a retrain registered is rolled out, and the clinicians' feedback right after decides it.
    champion = 1
    for index, row in enumerate(rows):
        if row.get("alias") == "challenger":
            assert row["rollout"] == "canary started at 10%"
            feedback = rows[index + 1]
            assert feedback["batch"] == "clinician feedback"
            promoted = feedback["rollout"].startswith(f"canary 10% -> 50% -> 100% -> promoted v{row['registered']}")
            champion = row["registered"] if promoted else champion
            assert promoted or " rolled_back v" in feedback["rollout"]
            assert feedback["champion_version"] == champion
    assert rows[-1]["champion_version"] == champion > 1


def test_conflict_is_listed_then_resolved_into_a_new_dataset_version(tmp_path: Path) -> None:
    write(tmp_path / "src" / "yes" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "yes" / "b.png", png_bytes(seed=2))
    write(tmp_path / "src" / "no" / "a copy.png", png_bytes(seed=1))
    before = json.loads(runner.invoke(app, ["ingest", str(tmp_path / "src"), "--json"]).stdout)["dataset_version"]
    [conflict] = json.loads(runner.invoke(app, ["conflicts", "--json"]).stdout)["conflicts"]
    assert (conflict["stored_label"], conflict["other_labels"]) == ("no", ["yes"])
    assert [path[:5] for path in conflict["paths"]] == ["path-", "path-"]  # stored as salted hashes
    [named] = json.loads(runner.invoke(app, ["conflicts", "--source", str(tmp_path / "src"), "--json"]).stdout)[
        "conflicts"
    ]
    assert named["paths"] == ["no/a copy.png", "yes/a.png"]
    result = runner.invoke(app, ["conflicts", "--resolve", conflict["sha256"][:10], "--label", "yes", "--json"])
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)["dataset_version"]
    assert after != before
    assert json.loads(runner.invoke(app, ["conflicts", "--json"]).stdout)["conflicts"] == []
    listed = json.loads(runner.invoke(app, ["datasets", "--json"]).stdout)["versions"]
    assert (listed[-1]["id"], listed[-1]["n_images"], list(listed[-1]["by_class"])) == (after, 2, ["yes"])


def test_resolving_with_a_label_it_was_never_filed_under_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "src" / "yes" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "no" / "a copy.png", png_bytes(seed=1))
    runner.invoke(app, ["ingest", str(tmp_path / "src")])
    [conflict] = json.loads(runner.invoke(app, ["conflicts", "--json"]).stdout)["conflicts"]
    result = runner.invoke(app, ["conflicts", "--resolve", conflict["sha256"], "--label", "maybe", "--json"])
    assert result.exit_code == 1
    assert "resolve it as one of them, not 'maybe'" in json.loads(result.stdout)["error"]


@pytest.mark.slow
def test_train_json_prints_only_the_json_and_library_notices_go_to_the_log(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from conveyor.data.synthetic import SyntheticSpec, generate_dataset

    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=20, size=64, seed=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "MLFLOW_"))}
    env.update(
        CONVEYOR_HOME=str(tmp_path / "ws"),
        CONVEYOR_FEATURES__EXTRACTORS='["intensity"]',
        CONVEYOR_TRAINING__FAMILIES='["logreg"]',
        CONVEYOR_PREPROCESS__SIZE="[64, 64]",
    )

    def conveyor(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "conveyor", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)

    assert conveyor("ingest", str(tmp_path / "src"), "--json").returncode == 0
    trained = conveyor("train", "--json")
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.count("\n") == 1
    assert json.loads(trained.stdout)["registered_version"] == 1
    assert trained.stderr == ""
    log = (tmp_path / "ws" / "logs" / "conveyor.log").read_text()
    assert "Successfully registered model 'conveyor'" in log
    assert "CloudPickle" in log


def test_train_refuses_an_unknown_search_mode(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--search", "fast"])
    assert result.exit_code == 2
    assert "--search must be race, grid, refit or auto, got 'fast'" in result.output


def test_explaining_a_missing_version_fails_with_a_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "--explain", "3", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": "model 'conveyor' has no version 3", "type": "NotFoundError"}
