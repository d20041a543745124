"""The operations page: the served models with their scores, the rollout, the monitoring history (numbers, plot,
reports), the review queue's size and the audit log; signed in like /review; /v1/ops for API clients."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from conveyor.serving import create_app
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import MonitoringRun
from tests.serving.conftest import TOKEN, admin, settings_for


def _signed_in(client: TestClient) -> None:
    response = client.post(
        "/review/login", data={"token": TOKEN, "name": "Ops", "then": "/ops"}, follow_redirects=False
    )
    assert (response.status_code, response.headers["location"]) == (303, "/ops")


def _monitoring_run(home: Path, report: Path | None) -> int:
    """A monitoring run as the monitor writes one (its summary's scores are what the page plots)."""
    dummy = {"balanced_accuracy": 0.5}
    summary = {
        "metric": "balanced_accuracy", "score": 0.81,
        "performance": {"dummy_by_reference": dummy, "dummy_by_current": dummy},
        "conformal": {"coverage": 0.86, "target": 0.9},
    }  # fmt: skip
    with session_scope(get_engine(settings_for(home).resolved_db_url)) as session:
        row = MonitoringRun(
            kind="batch", source="incoming/.batches/b1", model_version=1, n_current=40, n_labelled=40, drift_share=0.25,
            f1=0.8, ood_share=0.0, summary=summary, report_path=None if report is None else str(report),
            mlflow_run_id="abcdef0123456789", alerts=[{"rule": "coverage"}], retrain=True, retrain_reason="coverage",
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.id


def test_the_page_asks_for_the_admin_token_first(client: TestClient) -> None:
    page = client.get("/ops")
    assert page.status_code == 200 and 'value="/ops"' in page.text and 'id="models"' not in page.text


def test_the_page_shows_both_models_the_queue_and_the_audit_log(client: TestClient) -> None:
    _signed_in(client)
    page = client.get("/ops").text
    assert 'data-alias="champion"><td>champion</td><td>v1</td><td>yes' in page
    assert 'data-alias="challenger"><td>challenger</td><td>v2</td>' in page
    assert '<span id="review-open">0</span>' in page and "set_champion" in page
    assert "No monitoring run yet." in page and "No rollout has run." in page


def test_a_monitoring_run_is_plotted_and_listed_with_its_report(home: Path) -> None:
    report = home / "reports" / "monitor" / "r1" / "drift_report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>evidently</html>")
    run = _monitoring_run(home, report)
    with TestClient(create_app(settings_for(home, mlflow_ui_url="http://mlflow:5000"))) as client:
        _signed_in(client)
        page = client.get("/ops").text
        served = client.get(f"/ops/reports/{run}")
    assert 'id="history-plot" src="data:image/png;base64,' in page
    assert f'href="/ops/reports/{run}"' in page and "/runs/abcdef0123456789" in page
    assert '<td class="alert">coverage</td>' in page
    assert served.status_code == 200 and served.text == "<html>evidently</html>"


def test_a_report_outside_the_reports_folder_is_not_served(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.html"
    secret.write_text("no")
    run = _monitoring_run(home, secret)
    with TestClient(create_app(settings_for(home))) as client:
        _signed_in(client)
        response = client.get(f"/ops/reports/{run}")
    assert (response.status_code, response.json()["detail"]) == (
        404,
        f"monitoring run {run} has no report on this server",
    )


def test_a_report_needs_the_session(client: TestClient) -> None:
    assert client.get("/ops/reports/1").status_code == 401


def test_the_json_has_the_history_scores(home: Path) -> None:
    _monitoring_run(home, None)
    with TestClient(create_app(settings_for(home))) as client:
        body = client.get("/v1/ops", headers=admin()).json()
        unauthorised = client.get("/v1/ops")
    assert [m["version"] for m in body["models"]] == [1, 2]
    (run,) = body["history"]
    assert (run["score"], run["coverage"], run["coverage_target"]) == (0.81, 0.86, 0.9)
    assert run["dummies"] == {"dummy_by_reference": 0.5, "dummy_by_current": 0.5}
    assert unauthorised.status_code == 401
