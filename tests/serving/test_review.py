"""The review queue: unsure answers wait for a clinician, most uncertain first; a decision is feedback, a file in the
drop folder and an audit entry; the page needs the admin token; bad input gets 4xx with a detail."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conveyor.serving import create_app
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import AuditEntry, Feedback, ReviewItem
from tests.serving.conftest import TOKEN, admin, png, settings_for
from tests.serving.test_browser import browser_on, needs_chromium

# With about six calibration images a class, no class can be ruled out at 0.9: every answer abstains.


def _client(home: Path, **serving: object) -> TestClient:
    return TestClient(create_app(settings_for(home, **serving)))


def _predict(client: TestClient, data: bytes) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/predict", files={"file": ("s.png", data, "image/png")})
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_an_answer_that_abstains_is_queued_with_its_set(home: Path) -> None:
    with _client(home) as client:
        answer = _predict(client, png(1))
        queue = client.get("/v1/review", headers=admin()).json()
    assert queue["open"] == 1
    (item,) = queue["items"]
    assert (item["request_id"], item["reason"], item["label"]) == (answer["request_id"], "abstain", answer["label"])
    assert item["prediction_set"] == answer["prediction_set"]


def test_a_sure_answer_is_not_queued(home: Path) -> None:
    with _client(home, coverage=0.7, unsure_below=0.0) as client:
        answers = [_predict(client, png(seed, tumour=True)) for seed in range(6)]
        queue = client.get("/v1/review", headers=admin()).json()
    assert any(not a["abstain"] for a in answers)
    assert queue["open"] == sum(a["abstain"] for a in answers)


def test_an_unsure_answer_without_a_set_is_queued_for_its_confidence(home: Path) -> None:
    with _client(home, coverage=0.7, unsure_below=1.0) as client:
        answer = next(a for a in (_predict(client, png(s, tumour=True)) for s in range(6)) if not a["abstain"])
        queue = client.get("/v1/review", headers=admin()).json()
    reasons = {item["request_id"]: item["reason"] for item in queue["items"]}
    assert reasons[answer["request_id"]] == "low_confidence"


def test_the_same_image_waits_once(home: Path) -> None:
    with _client(home) as client:
        _predict(client, png(2))
        _predict(client, png(2))
        assert client.get("/v1/review", headers=admin()).json()["open"] == 1


def test_the_most_uncertain_case_comes_first(home: Path) -> None:
    with _client(home) as client:
        confidences = [_predict(client, png(seed))["confidence"] for seed in range(4)]
        items = client.get("/v1/review", headers=admin()).json()["items"]
    assert [i["confidence"] for i in items] == sorted(confidences)


def test_a_full_queue_takes_no_more(home: Path) -> None:
    with _client(home, review_max_open=1) as client:
        _predict(client, png(3))
        _predict(client, png(4))
        assert client.get("/v1/review", headers=admin()).json()["open"] == 1


def test_the_queue_needs_the_admin_token(home: Path) -> None:
    with _client(home) as client:
        response = client.get("/v1/review")
    assert (response.status_code, response.json()["reason"]) == (401, "unauthorized")


def _queued(client: TestClient, seed: int = 5) -> tuple[int, dict]:  # type: ignore[type-arg]
    answer = _predict(client, png(seed))
    items = client.get("/v1/review", headers=admin()).json()["items"]
    return next(i["id"] for i in items if i["request_id"] == answer["request_id"]), answer


def test_a_label_is_feedback_a_file_in_the_drop_folder_and_an_audit_entry(home: Path) -> None:
    with _client(home) as client:
        item_id, answer = _queued(client)
        response = client.post(f"/v1/review/{item_id}", json={"label": "tumour"}, headers=admin())
        left = client.get("/v1/review", headers=admin()).json()["open"]
    assert response.status_code == 200
    filed = f"incoming/tumour/review-{answer['request_id']}.png"
    assert response.json() == {"item_id": item_id, "request_id": answer["request_id"], "status": "labelled",
                               "label": "tumour", "filed_as": filed}  # fmt: skip
    assert (home / filed).read_bytes() == png(5) and left == 0
    with session_scope(get_engine(settings_for(home).resolved_db_url)) as session:
        feedback = session.scalars(select(Feedback).where(Feedback.request_id == answer["request_id"])).one()
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "review_labelled")).one()
        assert (feedback.label, feedback.who) == ("tumour", "admin-api")
        assert (entry.actor, entry.reason, entry.details["predicted"]) == ("admin-api", "tumour", answer["label"])


def test_a_dismissed_case_leaves_no_label_and_no_file(home: Path) -> None:
    with _client(home) as client:
        item_id, answer = _queued(client)
        response = client.post(f"/v1/review/{item_id}", json={"label": None}, headers=admin())
    assert (response.json()["status"], response.json()["filed_as"]) == ("dismissed", None)
    assert not (home / "incoming" / "tumour").exists() and not (home / "incoming" / "no_tumour").exists()
    with session_scope(get_engine(settings_for(home).resolved_db_url)) as session:
        assert session.scalars(select(Feedback).where(Feedback.request_id == answer["request_id"])).first() is None


def test_a_case_decided_twice_is_409(home: Path) -> None:
    with _client(home) as client:
        item_id, _ = _queued(client)
        client.post(f"/v1/review/{item_id}", json={"label": "tumour"}, headers=admin())
        again = client.post(f"/v1/review/{item_id}", json={"label": "no_tumour"}, headers=admin())
    assert again.status_code == 409 and again.json()["detail"].startswith(f"review item {item_id} was labelled already")


def test_a_label_that_is_no_class_is_422(home: Path) -> None:
    with _client(home) as client:
        item_id, _ = _queued(client)
        response = client.post(f"/v1/review/{item_id}", json={"label": "../../etc"}, headers=admin())
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "label '../../etc' is not a class of model version 1; expected one of ['no_tumour', 'tumour']"
    )


def test_an_unknown_item_is_404(home: Path) -> None:
    with _client(home) as client:
        response = client.post("/v1/review/999", json={"label": "tumour"}, headers=admin())
    assert (response.status_code, response.json()["detail"]) == (404, "no review item 999")


def _signed_in(client: TestClient, name: str = "Dr Grey") -> None:
    response = client.post("/review/login", data={"token": TOKEN, "name": name}, follow_redirects=False)
    assert response.status_code == 303 and "conveyor_review" in response.cookies


def test_the_page_asks_for_the_token_first(home: Path) -> None:
    with _client(home) as client:
        _predict(client, png(6))
        page = client.get("/review")
    assert page.status_code == 200 and 'id="login"' in page.text and "case-" not in page.text


def test_a_wrong_token_is_refused_with_401(home: Path) -> None:
    with _client(home) as client:
        response = client.post("/review/login", data={"token": "guess", "name": "Dr Grey"})
    assert response.status_code == 401 and "that is not the admin token" in response.text


def test_a_forged_session_cookie_is_not_signed_in(home: Path) -> None:
    with _client(home) as client:
        client.cookies.set("conveyor_review", "Dr Grey|" + "0" * 64)
        page = client.get("/review")
        post = client.post("/review/items/1", data={"label": "tumour"})
    assert 'id="login"' in page.text
    assert (post.status_code, post.json()["detail"]) == (401, "sign in at /review with the admin token first")


def test_a_signed_in_reviewer_sees_the_queue_and_the_image(home: Path) -> None:
    with _client(home) as client:
        item_id, answer = _queued(client)
        _signed_in(client)
        page = client.get("/review")
        image = client.get(f"/review/items/{item_id}/image")
    assert f'id="case-{item_id}"' in page.text and answer["request_id"] in page.text
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_a_decision_on_the_page_is_audited_under_the_reviewers_name(home: Path) -> None:
    with _client(home) as client:
        item_id, answer = _queued(client)
        _signed_in(client, "Dr Grey")
        response = client.post(f"/review/items/{item_id}", data={"label": "no_tumour"}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/review")
    with session_scope(get_engine(settings_for(home).resolved_db_url)) as session:
        feedback = session.scalars(select(Feedback).where(Feedback.request_id == answer["request_id"])).one()
        item = session.get(ReviewItem, item_id)
        assert (feedback.who, item.decided_by, item.decided_label) == ("Dr Grey", "Dr Grey", "no_tumour")  # type: ignore[union-attr]


def test_a_page_decision_without_a_choice_is_422(home: Path) -> None:
    with _client(home) as client:
        item_id, _ = _queued(client)
        _signed_in(client)
        response = client.post(f"/review/items/{item_id}", data={})
    assert (response.status_code, response.json()["detail"]) == (422, "pick a label, or dismiss the case")


@pytest.mark.parametrize("name", ["", "x" * 65, "<script>"])
def test_a_reviewer_name_out_of_bounds_is_refused(home: Path, name: str) -> None:
    with _client(home) as client:
        response = client.post("/review/login", data={"token": TOKEN, "name": name}, follow_redirects=False)
    assert response.status_code == 422


@needs_chromium
def test_an_unsure_upload_is_reviewed_in_a_browser_and_joins_the_line(home: Path, tmp_path: Path) -> None:
    """A real browser: an upload the model abstains on appears in /review; the clinician picks its label; the image
    is then ingested with that label by the drop folder's watcher, and monitoring of the served log joins the label."""
    pytest.importorskip("playwright")
    from datetime import UTC, datetime, timedelta

    from conveyor.monitoring.predictions import default_prediction_log, monitor_log
    from conveyor.pipelines.watch import collect_batch, process_batch
    from conveyor.store.models import Image

    image = tmp_path / "unsure.png"
    image.write_bytes(png(9))
    settings = settings_for(home)
    with browser_on(settings) as (page, port):
        page.goto(f"http://127.0.0.1:{port}/", timeout=15_000)
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_function("document.getElementById('abstain').style.display === 'block'", timeout=15_000)
        page.goto(f"http://127.0.0.1:{port}/review", timeout=15_000)
        page.fill("#name", "Dr Grey")
        page.fill("#token", TOKEN)
        page.click("#sign-in")
        page.wait_for_selector(".case", timeout=15_000)
        assert page.text_content("#open-count") == "1"
        page.click(".case button[data-label='tumour']")
        page.wait_for_selector("#empty", timeout=15_000)
    batch = collect_batch(settings, quiet_seconds=0)
    assert batch is not None and process_batch(settings, batch).status == "success"
    import hashlib

    sha = hashlib.sha256(png(9)).hexdigest()
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert session.get(Image, sha).label == "tumour"  # type: ignore[union-attr]
    now = datetime.now(UTC)
    summary = monitor_log(settings, default_prediction_log(settings), now - timedelta(hours=1), now + timedelta(1))
    assert summary["n_labelled"] == 1


def test_the_database_keeps_one_open_item_per_image(home: Path) -> None:
    """What the check before queueing cannot do across server processes, the partial unique index does."""
    from sqlalchemy.exc import IntegrityError

    def item(request_id: str, status: str = "open") -> ReviewItem:
        return ReviewItem(
            request_id=request_id, input_sha256="a" * 64, format="png", path="review/x.png", model_version=1,
            label="tumour", confidence=0.5, probabilities={"tumour": 0.5, "no_tumour": 0.5}, prediction_set=None,
            reason="low_confidence", uncertainty=0.5, status=status,
        )  # fmt: skip

    engine = get_engine(settings_for(home).resolved_db_url)
    with session_scope(engine) as session:
        session.add_all([item("r1", "labelled"), item("r2")])
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(item("r3"))
