"""The prediction API: happy paths, every error code with its detail, the log, feedback, metrics, reload."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.errors import ConfigError
from conveyor.serving import create_app
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import Feedback, Prediction
from conveyor.tracking.registry import promote
from tests.helpers import dicom_without_bits_allocated
from tests.serving.conftest import admin, clinician, png, settings_for


def test_predict_multipart_answers_label_probabilities_and_version(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("slice.png", png(1), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert set(body["probabilities"]) == {"no_tumour", "tumour"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert (body["model"], body["arm"]) == ({"name": "conveyor", "version": 1}, "champion")
    assert body["input"]["format"] == "png" and body["latency_ms"] > 0


def test_predict_raw_body_gives_the_same_answer_as_multipart(client: TestClient) -> None:
    data = png(2)
    raw = client.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"}).json()
    form = client.post("/v1/predict", files={"file": ("x.bin", data, "text/plain")}).json()
    assert raw["probabilities"] == form["probabilities"]
    assert raw["request_id"] != form["request_id"]


def test_batch_reports_each_file_with_its_own_status(client: TestClient) -> None:
    files = [("files", ("a.png", png(3))), ("files", ("b.png", b"hello, not an image")), ("files", ("c.png", png(4)))]
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [(i["filename"], i["status"]) for i in items] == [("a.png", 200), ("b.png", 415), ("c.png", 200)]
    assert items[1]["error"]["reason"] == "not_an_image"


def test_text_file_named_png_is_415(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("scan.png", b"just some text\n" * 10, "image/png")})
    assert response.status_code == 415
    assert response.json() == {
        "detail": "content starts with b'just som', which is not PNG, JPEG, TIFF, BMP or DICOM",
        "reason": "not_an_image",
    }


def test_truncated_png_is_422_and_says_so(client: TestClient) -> None:
    data = png(5)
    response = client.post("/v1/predict", content=data[: len(data) // 2])
    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "truncated"
    assert body["detail"].startswith("PNG data cannot be decoded:")


def test_empty_body_is_422(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"")
    assert (response.status_code, response.json()) == (422, {"detail": "the file has 0 bytes", "reason": "zero_bytes"})


def test_upload_over_the_size_limit_is_413(home) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings_for(home, max_upload_bytes=1000))) as client:
        response = client.post("/v1/predict", content=png(6))
    assert response.status_code == 413
    assert response.json()["reason"] == "too_large"
    assert "over the limit of 1,000 bytes" in response.json()["detail"]


def test_decompression_bomb_is_413_before_decoding(home) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buffer, format="PNG")  # ~2 kB of file, 16 Mpx of pixels
    with TestClient(create_app(settings_for(home, max_pixels=1_000_000))) as client:
        response = client.post("/v1/predict", content=buffer.getvalue())
    assert response.status_code == 413
    assert response.json() == {
        "detail": "4000x4000 = 16,000,000 pixels exceeds the limit of 1,000,000",
        "reason": "too_many_pixels",
    }


def test_server_keeps_serving_after_bad_input(client: TestClient) -> None:
    assert client.post("/v1/predict", content=b"\x89PNG\r\n\x1a\nbroken").status_code == 422
    assert client.post("/v1/predict", content=png(7)).status_code == 200


def test_every_prediction_is_logged_with_image_statistics(client: TestClient, settings: Settings) -> None:
    body = client.post("/v1/predict", content=png(8)).json()
    client.app.state.service.log.flush()  # type: ignore[attr-defined]
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        [row] = session.scalars(select(Prediction).where(Prediction.request_id == body["request_id"])).all()
    assert (row.model_name, row.model_version, row.arm, row.label) == ("conveyor", 1, "champion", body["label"])
    assert (row.width, row.height, row.format) == (64, 64, "png")
    assert row.input_sha256 == body["input"]["sha256"]
    assert 0 < row.brightness < 1 and 0 < row.contrast < 1
    assert row.probabilities == body["probabilities"] and row.error is None


def test_feedback_is_recorded(client: TestClient, settings: Settings) -> None:
    body = client.post("/v1/predict", content=png(9)).json()
    response = client.post(
        "/v1/feedback", json={"request_id": body["request_id"], "label": "tumour"}, headers=clinician()
    )
    assert response.status_code == 200
    assert response.json()["correct"] == (body["label"] == "tumour")
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        [row] = session.scalars(select(Feedback)).all()
    assert (row.request_id, row.label) == (body["request_id"], "tumour")


def test_feedback_for_an_unknown_request_is_404(client: TestClient) -> None:
    response = client.post("/v1/feedback", json={"request_id": "nope", "label": "tumour"}, headers=clinician())
    assert (response.status_code, response.json()["detail"]) == (404, "no prediction with request id 'nope'")


def test_feedback_with_an_unknown_label_is_422(client: TestClient) -> None:
    request_id = client.post("/v1/predict", content=png(10)).json()["request_id"]
    response = client.post("/v1/feedback", json={"request_id": request_id, "label": "cat"}, headers=clinician())
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "label 'cat' is not a class of model version 1; expected one of ['no_tumour', 'tumour']"
    )


def test_metrics_count_requests_errors_and_predictions(client: TestClient) -> None:
    label = client.post("/v1/predict", content=png(11)).json()["label"]
    client.post("/v1/predict", content=b"text")
    text = client.get("/metrics").text
    assert f'conveyor_predictions_total{{arm="champion",label="{label}",model="conveyor",version="1"}} 1.0' in text
    assert 'conveyor_http_requests_total{method="POST",route="/v1/predict",status="415"} 1.0' in text
    assert 'conveyor_http_errors_total{reason="not_an_image",route="/v1/predict",status="415"} 1.0' in text
    assert 'conveyor_http_request_duration_seconds_count{route="/v1/predict"} 2.0' in text


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "model": "conveyor", "champion": 1, "challenger": None}


def test_page_shows_the_upload_form_and_model_version(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert 'id="file"' in response.text and 'id="served-version">1<' in response.text


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing 'Authorization: Bearer <token>' header"),
        ({"Authorization": "Bearer wrong"}, "invalid admin token"),
    ],
)
def test_admin_endpoints_need_the_token(client: TestClient, headers: dict[str, str], detail: str) -> None:
    for method, path in [
        ("post", "/v1/admin/reload"),
        ("get", "/v1/admin/rollout"),
        ("post", "/v1/admin/rollout/start"),
    ]:
        response = getattr(client, method)(path, headers=headers)
        assert (response.status_code, response.json()["detail"]) == (401, detail), path


def test_admin_is_closed_without_a_configured_token(home) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings_for(home, admin_token=None))) as client:
        response = client.post("/v1/admin/reload", headers=admin())
    assert (response.status_code, response.json()["detail"]) == (
        401,
        "admin endpoints are disabled: no serving.admin_token is set",
    )


def test_production_without_token_refuses_to_start(home) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="admin_token is empty: refusing to start"):
        create_app(settings_for(home, production=True, admin_token=None))


def test_reload_picks_up_a_new_champion_without_restart(client: TestClient, settings: Settings) -> None:
    assert client.post("/v1/predict", content=png(12)).json()["model"]["version"] == 1
    promote(settings, 2, reason="test")
    response = client.post("/v1/admin/reload", headers=admin())
    assert response.status_code == 200 and response.json()["champion"] == 2
    assert client.post("/v1/predict", content=png(12)).json()["model"]["version"] == 2


def test_background_poll_picks_up_a_new_champion(home) -> None:  # type: ignore[no-untyped-def]
    import time

    settings = settings_for(home, reload_interval_s=0.2)
    with TestClient(create_app(settings)) as client:
        promote(settings, 2, reason="test")
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["champion"] != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.post("/v1/predict", content=png(13)).json()["model"]["version"] == 2


def test_unexpected_errors_are_500_without_internals(settings: Settings) -> None:
    app = create_app(settings)

    async def broken(data: bytes) -> None:
        raise RuntimeError("secret internals")

    app.state.service.predict = broken
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/predict", content=png(14))
    assert (response.status_code, response.json()["detail"]) == (500, "internal error; it has been logged")


MULTIPART = "multipart/form-data; boundary=XyZ"


def part(name: str, content: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
    return f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"


def test_multipart_fields_that_are_not_files_are_ignored(client: TestClient) -> None:
    body = part("note", b"left lobe") + part("file", png(9), "scan.png") + b"--XyZ--\r\n"
    response = client.post("/v1/predict", content=body, headers={"content-type": MULTIPART})
    assert response.status_code == 200
    assert response.json()["input"]["format"] == "png"


def test_multipart_cut_short_is_422(client: TestClient) -> None:
    body = part("file", png(9), "scan.png")[:-40]
    response = client.post("/v1/predict", content=body, headers={"content-type": MULTIPART})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "the multipart body ends inside a part: it was cut short",
        "reason": "bad_multipart",
    }


def test_multipart_without_a_boundary_is_422(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 422
    assert response.json()["detail"] == "the multipart body cannot be parsed: no boundary in content-type"


def test_multipart_with_no_file_part_is_422(client: TestClient) -> None:
    body = part("note", b"only text") + b"--XyZ--\r\n"
    response = client.post("/v1/predict", content=body, headers={"content-type": MULTIPART})
    assert response.status_code == 422
    assert response.json()["reason"] == "no_file"


def test_two_files_to_the_single_image_endpoint_is_413(client: TestClient) -> None:
    body = part("file", png(1), "a.png") + part("file", png(2), "b.png") + b"--XyZ--\r\n"
    response = client.post("/v1/predict", content=body, headers={"content-type": MULTIPART})
    assert response.status_code == 413
    assert response.json() == {"detail": "more than 1 files sent; at most 1 per request", "reason": "too_many_files"}


def test_a_dicom_without_bits_allocated_is_its_own_422(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("bad.dcm", dicom_without_bits_allocated())})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "DICOM header has pixel data but no BitsAllocated: the pixels cannot be read",
        "reason": "corrupt",
    }


def test_one_poisoned_image_in_a_batch_leaves_the_good_ones_answered(client: TestClient) -> None:
    files = [("files", (f"{i}.png", png(20 + i))) for i in range(3)]
    files.insert(1, ("files", ("bad.dcm", dicom_without_bits_allocated())))
    items = client.post("/v1/predict/batch", files=files).json()["items"]
    assert [i["status"] for i in items] == [200, 422, 200, 200]


def test_concurrent_good_images_beside_poisoned_ones_all_get_200(client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bad = dicom_without_bits_allocated()

    def send(i: int) -> int:
        data = bad if i % 4 == 0 else png(100 + i)
        return client.post("/v1/predict", files={"file": ("x", data)}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(40)))
    assert [c for i, c in enumerate(codes) if i % 4] == [200] * 30
    assert [c for i, c in enumerate(codes) if i % 4 == 0] == [422] * 10


def test_feedback_without_a_token_is_401_and_changes_nothing(client: TestClient, settings: Settings) -> None:
    request_id = client.post("/v1/predict", content=png(11)).json()["request_id"]
    response = client.post("/v1/feedback", json={"request_id": request_id, "label": "tumour"})
    assert (response.status_code, response.json()["detail"]) == (
        401,
        "missing 'Authorization: Bearer <feedback token>' header",
    )
    forged = client.post("/v1/feedback", json={"request_id": request_id, "label": "tumour"}, headers=admin())
    assert (forged.status_code, forged.json()["detail"]) == (401, "invalid feedback token")
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert session.scalars(select(Feedback)).all() == []


def test_feedback_is_stored_with_the_identity_of_its_token(client: TestClient, settings: Settings) -> None:
    request_id = client.post("/v1/predict", content=png(12)).json()["request_id"]
    assert client.post(
        "/v1/feedback", json={"request_id": request_id, "label": "tumour"}, headers=clinician(1)
    ).is_success
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert [(f.request_id, f.who) for f in session.scalars(select(Feedback))] == [(request_id, "clinician-b")]


def test_feedback_is_disabled_when_no_tokens_are_set(home: Path) -> None:
    with TestClient(create_app(settings_for(home, feedback_tokens={}))) as client:
        request_id = client.post("/v1/predict", content=png(13)).json()["request_id"]
        response = client.post("/v1/feedback", json={"request_id": request_id, "label": "tumour"}, headers=clinician())
    assert (response.status_code, response.json()["detail"]) == (
        401,
        "feedback is disabled: no serving.feedback_tokens are set",
    )


def test_feedback_beyond_the_rate_is_429_with_retry_after(home: Path) -> None:
    with TestClient(create_app(settings_for(home, feedback_per_minute=3))) as client:
        request_id = client.post("/v1/predict", content=png(14)).json()["request_id"]
        codes = [
            client.post("/v1/feedback", json={"request_id": request_id, "label": "tumour"}, headers=clinician())
            for _ in range(4)
        ]
        other = client.post("/v1/feedback", json={"request_id": request_id, "label": "tumour"}, headers=clinician(1))
    assert [c.status_code for c in codes] == [200, 200, 200, 429]
    assert 0 < int(codes[-1].headers["retry-after"]) <= 60
    assert codes[-1].json()["detail"] == "clinician-a sent more than 3 feedback requests in a minute"
    assert other.status_code == 200  # the limit is per identity


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (" ", "it has 1 characters; production needs at least 32"),
        ("a" * 40, "it uses only 1 distinct characters; production needs 10 or more"),
        ("correct horse battery staple and more words", "it contains white space"),
    ],
    ids=["one space", "one letter", "with spaces"],
)
def test_production_refuses_a_weak_admin_token(home: Path, token: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        create_app(settings_for(home, production=True, admin_token=token))
    assert str(raised.value).startswith(f"serving.admin_token is too weak for production ({why}): refusing to start")


def test_production_refuses_a_weak_feedback_token(home: Path) -> None:
    strong = "Zq3vN8kR2mT6wY1pL5sX9cB4hJ7dF0gA"
    with pytest.raises(ConfigError, match=r"serving.feedback_tokens\['clinician-a'\] is too weak for production"):
        create_app(settings_for(home, production=True, admin_token=strong))


def test_production_starts_with_strong_tokens(home: Path) -> None:
    import secrets

    tokens = {"clinician-a": secrets.token_urlsafe(32)}
    app = create_app(settings_for(home, production=True, admin_token=secrets.token_urlsafe(32), feedback_tokens=tokens))
    assert app.title


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"clinician-a": " "}, "clinician-a has an empty token"),
        ({"clinician-a": "same-token-xyz", "clinician-b": "same-token-xyz"}, "two identities share a token"),
    ],
    ids=["empty", "shared"],
)
def test_feedback_tokens_must_be_set_and_distinct(tokens: dict[str, str], message: str) -> None:
    from pydantic import ValidationError

    from conveyor.serving.settings import ServingSettings

    with pytest.raises(ValidationError, match=message):
        ServingSettings(feedback_tokens=tokens)


def test_a_clip_is_answered_with_the_mean_of_its_frames(client: TestClient) -> None:
    from tests.helpers import blob_clip

    response = client.post("/v1/predict", files={"file": ("fall.mp4", blob_clip(True, seed=3), "video/mp4")})
    assert response.status_code == 200
    body = response.json()
    frames = body["frames"]
    assert [round(f["time"], 3) for f in frames] == [0.0, 0.5, 1.0, 1.5]
    for name, value in body["probabilities"].items():
        assert value == pytest.approx(sum(f["probabilities"][name] for f in frames) / len(frames))
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert (body["input"]["format"], body["request_id"]) == ("mp4", frames[0]["request_id"])
    assert len({f["request_id"] for f in frames}) == 4  # each frame logged as its own request


def test_a_damaged_clip_is_422_with_its_reason(client: TestClient) -> None:
    from tests.helpers import blob_clip

    response = client.post("/v1/predict", content=blob_clip(True)[:400])
    assert response.status_code == 422
    assert response.json()["reason"] == "corrupt_video"


def test_segmenting_without_a_segmentation_model_is_404(client: TestClient) -> None:
    response = client.post("/v1/segment", content=png(5))
    assert response.status_code == 404
    assert response.json()["reason"] == "not_found"
    assert "run `conveyor segment`" in response.json()["detail"]
