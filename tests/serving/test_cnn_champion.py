"""A CNN champion is served like any other: the same endpoints, the registered pyfunc's own probabilities. It is a
seed ensemble of two networks, as a small split gets by default (of five)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.training.train import PIXELS, train
from tests.serving.conftest import png, with_serving
from tests.training.test_cnn_family import LEAN_CNN
from tests.training.test_train import load_champion, small_settings

pytestmark = pytest.mark.slow

#: The family tests' lean settings, as a seed ensemble of two networks of half the epochs.
CHAMPION_CNN = {**LEAN_CNN, "max_epochs": 4, "networks": 2}


@pytest.fixture(scope="module")
def cnn_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("cnn-champion")
    settings = small_settings(root / "ws", families=["cnn"], cnn=CHAMPION_CNN)
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=11))
    ingest(root / "src", settings)
    result = train(settings)
    assert (result.best.extractor, result.registered_version, result.alias) == (PIXELS, 1, "champion")
    assert [member.seed for member in result.best.estimator.members_] == [0, 1]
    return with_serving(settings)


@pytest.fixture(scope="module")
def client(cnn_settings: Settings) -> Iterator[TestClient]:
    from conveyor.serving import create_app

    with TestClient(create_app(cnn_settings)) as test_client:
        yield test_client


def test_the_server_answers_with_the_cnn_champion(client: TestClient, cnn_settings: Settings) -> None:
    data = png(5, size=80, tumour=True)
    response = client.post("/v1/predict", files={"file": ("slice.png", data, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["arm"]) == ({"name": "conveyor", "version": 1}, "champion")
    expected = load_champion(cnn_settings).predict(pd.DataFrame({"image": [data]}))
    assert body["label"] == expected["label"][0]
    for name, value in body["probabilities"].items():
        assert value == pytest.approx(float(expected[f"proba_{name}"][0]), abs=1e-6)


def test_the_cnn_champion_answers_a_batch_and_refuses_a_bad_file(client: TestClient) -> None:
    files = [("files", ("a.png", png(6, size=80))), ("files", ("b.png", b"not an image at all"))]
    items = client.post("/v1/predict/batch", files=files).json()["items"]
    assert [(i["filename"], i["status"]) for i in items] == [("a.png", 200), ("b.png", 415)]
    assert set(items[0]["prediction"]["probabilities"]) == {"no_tumour", "tumour"}


def predictions_counted(client: TestClient) -> float:
    text = client.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("conveyor_predictions_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'version="1"' in line and 'arm="champion"' in line)


def test_the_cnn_champion_is_ready_and_counted_in_metrics(client: TestClient) -> None:
    assert client.get("/readyz").json()["champion"] == 1
    before = predictions_counted(client)
    client.post("/v1/predict", files={"file": ("c.png", png(7, size=80), "image/png")})
    assert predictions_counted(client) == before + 1


def test_the_pixel_store_is_not_needed_to_serve(cnn_settings: Settings, tmp_path: Path) -> None:
    """The registered model carries its preprocessing: serving never reads training's cache."""
    import shutil

    from conveyor.serving import create_app

    cache = cnn_settings.home / "cache" / "pixels"
    moved = tmp_path / "pixels"
    shutil.move(cache, moved)
    try:
        with TestClient(create_app(cnn_settings)) as other:
            assert other.post("/v1/predict", files={"file": ("d.png", png(8, size=80), "image/png")}).status_code == 200
    finally:
        shutil.move(moved, cache)


def test_a_cnn_champion_is_explained_by_occlusion_without_diagrams(client: TestClient) -> None:
    response = client.post("/v1/explain", files={"file": ("slice.png", png(6, size=80, tumour=True), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert (body["diagrams_png"], body["regions"], body["groups"]) == (None, [], None)
    assert len(body["heatmap"]) == 64 and body["method"].startswith("occlusion (Captum)")
