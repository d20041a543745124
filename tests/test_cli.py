"""The CLI: every command listed, --json prints one object, errors exit 1 with a message."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_demo_generates_and_ingests(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--n-per-class", "6", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["ingest"]
    assert (summary["seen"], summary["stored"], summary["quarantined"]) == (12, 12, 0)
    assert summary["by_class"].keys() == {"no_tumour", "tumour"}
