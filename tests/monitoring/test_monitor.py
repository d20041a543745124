"""conveyor monitor on the demo data: in-distribution, scanner drift, unseen lesion; history, CLI, errors, log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from conveyor.config import Settings
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import NotFoundError, SourceError
from conveyor.monitoring.commands import monitor
from conveyor.monitoring.monitor import monitor_batch, monitoring_history
from conveyor.monitoring.predictions import ListPredictionLog, PredictionRecord, monitor_log
from tests.monitoring.conftest import small_settings, with_monitoring
from tests.monitoring.test_units import _Recorder, webhook  # noqa: F401  (fixture)

RULES = {"alerts": {"drift_share": 0.5, "metric_drop": 0.15, "ood_share": 0.2}, "report_max_columns": 12}


@pytest.fixture(scope="module")
def runs(champion_home: tuple[Settings, Path]) -> dict[str, Any]:
    """One monitoring run per demo batch, in order (10 images per class each)."""
    settings, root = champion_home
    settings = with_monitoring(settings, **RULES)
    out: dict[str, Any] = {}
    for drift, seed in (("none", 11), ("scanner", 12), ("lesion", 13)):
        folder = root / f"batch-{drift}"
        generate_dataset(folder, SyntheticSpec(n_per_class=10, size=96, seed=seed, drift=drift), prefix=drift)
        out[drift] = monitor_batch(folder, settings)
    return out


def test_a_batch_from_the_training_distribution_shows_no_drift_and_beats_the_dummies(runs: dict[str, Any]) -> None:
    summary = runs["none"]
    assert (summary["n_current"], summary["n_labelled"], summary["n_reference"]) == (20, 20, 64)
    assert summary["drift_share"] == 0.0
    assert summary["drifted_columns"] == []
    assert summary["ood_share"] == 0.0
    perf = summary["performance"]
    assert perf["model"]["f1"] > max(perf["dummy_by_reference"]["f1"], perf["dummy_by_current"]["f1"]) + 0.3
    assert perf["beats_dummies"] is True
    assert set(perf["per_class"]) == {"no_tumour", "tumour"}
    assert summary["alerts"] == []
    assert summary["retrain"]["retrain"] is False
    assert summary["ingest"]["stored"] == 20


def test_a_scanner_change_is_flagged_with_the_columns_that_moved(runs: dict[str, Any]) -> None:
    summary = runs["scanner"]
    assert summary["drift_share"] > 0.5
    assert {"image.width", "image.height", "mean", "p50"} <= set(summary["drifted_columns"])
    assert "image.aspect" not in summary["drifted_columns"]  # square images on both scanners
    assert summary["ood_share"] == 1.0
    assert len(summary["ood"]["inputs"]) == 20
    assert {a["rule"] for a in summary["alerts"]} >= {"drift_share", "ood_share"}
    assert summary["retrain"]["retrain"] is True  # drift with 40 new labelled images (policy: 10)
    assert "columns drifted" in summary["retrain"]["reason"]


def test_an_unseen_lesion_type_shows_the_performance_drop(runs: dict[str, Any]) -> None:
    summary, baseline = runs["lesion"], runs["none"]
    score = summary["performance"]["model"]["balanced_accuracy"]
    assert (summary["metric"], summary["score"]) == ("balanced_accuracy", score)
    assert score < baseline["performance"]["model"]["balanced_accuracy"]
    assert summary["champion_test_score"] - score >= 0.15
    assert [a["rule"] for a in summary["alerts"]] == ["metric_drop"]
    assert summary["drift_share"] < runs["scanner"]["drift_share"]
    reason = summary["retrain"]["reason"]
    assert summary["retrain"]["retrain"] is True and "below the champion's test balanced_accuracy" in reason


def test_each_run_has_its_reports_on_disk_and_in_mlflow(runs: dict[str, Any], champion_home: Any) -> None:
    from mlflow import MlflowClient

    from conveyor.tracking.setup import configure_mlflow

    settings, _ = champion_home
    configure_mlflow(settings)
    for summary in runs.values():
        folder = Path(summary["report_dir"])
        assert folder.parent == settings.reports_dir / "monitor"
        assert {p.name for p in folder.iterdir()} == {
            "drift_report.html",
            "drift.png",
            "performance.png",
            "ood.csv",
            "summary.json",
        }
        html = (folder / "drift_report.html").read_text()
        assert html.lstrip().lower().startswith("<!doctype html>") and "Drifted" in html
        assert json.loads((folder / "summary.json").read_text())["id"] == summary["id"]
        artifacts = {a.path for a in MlflowClient().list_artifacts(summary["mlflow_run_id"], "monitoring")}
        assert {"monitoring/drift_report.html", "monitoring/summary.json", "monitoring/performance.png"} <= artifacts
        metrics = MlflowClient().get_run(summary["mlflow_run_id"]).data.metrics
        assert metrics["model_f1"] == pytest.approx(summary["performance"]["model"]["f1"])


def test_history_lists_the_runs_in_order(runs: dict[str, Any], champion_home: Any) -> None:
    settings, _ = champion_home
    rows = [r for r in monitoring_history(settings) if r.id in {s["id"] for s in runs.values()}]
    assert [Path(r.source).name for r in rows] == ["batch-none", "batch-scanner", "batch-lesion"]
    assert rows[0].alerts == []
    assert [r.retrain for r in rows] == [False, True, True]
    assert rows[2].f1 == pytest.approx(runs["lesion"]["performance"]["model"]["f1"])


def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[CliRunner, typer.Typer]:
    import conveyor.config

    monkeypatch.setattr(conveyor.config, "get_settings", lambda: settings)
    app = typer.Typer()
    app.command()(monitor)
    return CliRunner(), app


def test_cli_history_json_and_table(runs: dict[str, Any], champion_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = champion_home
    runner, app = cli(settings, monkeypatch)
    result = runner.invoke(app, ["--history", "--json"])
    assert result.exit_code == 0, result.output
    history = json.loads(result.stdout)["history"]
    assert [h["retrain"] for h in history if h["id"] in {s["id"] for s in runs.values()}] == [False, True, True]
    table = runner.invoke(app, ["--history"])
    assert table.exit_code == 0 and "monitoring history" in table.stdout


def test_cli_errors_exit_1_with_a_json_error(
    champion_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = champion_home
    runner, app = cli(settings, monkeypatch)
    result = runner.invoke(app, [str(tmp_path / "missing"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout.splitlines()[0]) == {
        "error": f"{tmp_path / 'missing'}: no such file or folder to monitor",
        "type": "SourceError",
    }
    assert runner.invoke(app, ["--json"]).exit_code == 1


def test_an_empty_folder_is_refused(champion_home: Any, tmp_path: Path) -> None:
    settings, _ = champion_home
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty"):
        monitor_batch(tmp_path / "empty", settings)


def test_no_champion_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "batch" / "tumour").mkdir(parents=True)
    (tmp_path / "batch" / "tumour" / "a.png").write_bytes(b"x")
    with pytest.raises(NotFoundError, match="no champion to monitor"):
        monitor_batch(tmp_path / "batch", small_settings(tmp_path / "fresh"))


def test_an_unlabelled_folder_is_scored_not_ingested(runs: Any, champion_home: Any, tmp_path: Path) -> None:
    from conveyor.store.db import get_engine, session_scope
    from conveyor.store.models import Image

    settings, _ = champion_home
    generate_dataset(tmp_path / "gen", SyntheticSpec(n_per_class=4, size=96, seed=21))
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (tmp_path / "gen").rglob("*.png"):
        path.rename(flat / f"{path.parent.name}-{path.name}")
    (flat / "notes.txt").write_text("not an image")
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        before = session.query(Image).count()
    summary = monitor_batch(flat, with_monitoring(settings, **RULES))
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert session.query(Image).count() == before
    assert (summary["n_current"], summary["n_labelled"], summary["performance"]) == (8, 0, None)
    assert summary["unlabelled"] is True
    assert [s["path"] for s in summary["skipped"]] == ["notes.txt"]
    assert summary["drift_share"] == 0.0
    assert sum(summary["prediction_drift"]["predicted_classes"].values()) == 8


def test_a_prediction_log_window_with_late_feedback(runs: Any, champion_home: Any, webhook: Any) -> None:  # noqa: F811
    settings, root = champion_home
    url, received = webhook
    files = sorted((root / "batch-lesion").rglob("*.png"))
    now = datetime.now(UTC)
    records = [
        PredictionRecord(
            f"p{i}",
            now - timedelta(minutes=30 - i),
            {"no_tumour": 0.9, "tumour": 0.1},
            1,
            feedback=path.parent.name if i % 2 == 0 else None,
            path=str(path),
        )
        for i, path in enumerate(files)
    ]
    records.append(PredictionRecord("old", now - timedelta(days=2), {"no_tumour": 0.1, "tumour": 0.9}, 1))
    log = ListPredictionLog(records)
    summary = monitor_log(with_monitoring(settings, webhook_url=url, **RULES), log, now - timedelta(hours=1), now)
    assert (summary["kind"], summary["n_current"], summary["n_labelled"]) == ("log", 20, 10)
    assert summary["with_feedback"] == 10
    assert summary["prediction_drift"]["predicted_classes"] == {"no_tumour": 20}  # the log's answers, not re-scored
    assert "prediction.class" in summary["prediction_drift"]["drifted_columns"]
    assert summary["performance"]["model"]["recall"] == 0.0  # it never said tumour
    assert "metric_drop" in {a["rule"] for a in summary["alerts"]}
    [post] = received
    assert post["body"]["event"] == "conveyor.monitoring.alert"
    assert post["body"]["id"] == summary["id"] and summary["webhook"]["sent"] is True
    assert [a["rule"] for a in post["body"]["alerts"]] == [a["rule"] for a in summary["alerts"]]


def test_a_log_without_files_gives_prediction_drift_only(runs: Any, champion_home: Any) -> None:
    settings, _ = champion_home
    now = datetime.now(UTC)
    log = ListPredictionLog(
        [PredictionRecord(f"q{i}", now - timedelta(minutes=i + 1), {"no_tumour": 0.3, "tumour": 0.7}) for i in range(6)]
    )
    summary = monitor_log(with_monitoring(settings, **RULES), log, now - timedelta(hours=1), now)
    assert (summary["drift_share"], summary["ood_share"], summary["performance"]) == (None, None, None)
    assert summary["prediction_drift"]["mean_confidence"] == pytest.approx(0.7)


def test_an_empty_log_window_is_an_error(champion_home: Any) -> None:
    from conveyor.errors import ConveyorError

    settings, _ = champion_home
    now = datetime.now(UTC)
    with pytest.raises(ConveyorError, match="no prediction was served"):
        monitor_log(settings, ListPredictionLog(), now - timedelta(hours=1), now)


def test_the_report_names_batch_files_by_their_real_paths(runs: dict[str, Any]) -> None:
    """The workspace stores the paths as salted hashes; the report, made from the batch at hand, shows them."""
    names = sorted(entry["input"] for entry in runs["scanner"]["ood"]["inputs"])
    assert names[0] == "no_tumour/scanner_12_0000.png"
    assert len(names) == 20


def test_the_webhook_is_posted_after_the_run_is_committed(runs: Any, champion_home: Any) -> None:
    """A receiver that reads the run back when called sees it (no transaction is held open while it answers), and
    the stored run records the delivery."""
    import sqlite3
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    settings, root = champion_home
    seen: list[Any] = []
    database = settings.home / "conveyor.db"

    class ReadsBack(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with sqlite3.connect(database, timeout=1) as db:
                seen.append(db.execute("SELECT kind FROM monitoring_runs WHERE id = ?", (body["id"],)).fetchone())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), ReadsBack)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        summary = monitor_batch(root / "batch-lesion", with_monitoring(settings, webhook_url=url, **RULES))
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("batch",)]
    with sqlite3.connect(database) as db:
        [(stored,)] = db.execute("SELECT summary FROM monitoring_runs WHERE id = ?", (summary["id"],)).fetchall()
    assert json.loads(stored)["webhook"] == {"url": url, "sent": True, "status": 204}


def test_every_run_meets_the_report_contract_and_a_renamed_field_does_not(runs: dict[str, Any]) -> None:
    from pydantic import ValidationError

    from conveyor.monitoring.report import MonitorReport

    report = MonitorReport.model_validate(runs["lesion"])
    assert (report.kind, report.n_current, report.retrain.retrain) == (
        "batch",
        20,
        runs["lesion"]["retrain"]["retrain"],
    )
    assert (
        report.performance is not None and report.performance.model.f1 == runs["lesion"]["performance"]["model"]["f1"]
    )
    renamed = {**runs["lesion"], "drift_fraction": runs["lesion"]["drift_share"]}
    del renamed["drift_share"]
    with pytest.raises(ValidationError, match="drift_share"):
        MonitorReport.model_validate(renamed)
