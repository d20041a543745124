"""POST /v1/explain and the explanations behind it, on generated slices whose class depends only on the lesion: the
occlusion map's evidence lies on the lesion, and the lesion is one of the image's most persistent features."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conveyor.config import Settings
from conveyor.data.decode import DecodeLimits
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset, render_slice_and_mask
from conveyor.preprocess.transforms import foreground_box, resize, to_gray_unit
from conveyor.serving import create_app
from conveyor.serving.explain import explain, persistent_regions
from conveyor.tracking.integrity import load_verified
from conveyor.training.train import train
from tests.serving.conftest import png, with_serving


def _topological(home: Path) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (64, 64)},  # type: ignore[arg-type]
        features={"extractors": ["stats", "intensity"]},  # type: ignore[arg-type]
        training={"families": ["logreg"], "extractors": ["stats"], "cv_folds": 3, "bootstrap": 200},  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def topological(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A champion on the persistence statistics alone."""
    root = tmp_path_factory.mktemp("explain")
    settings = _topological(root / "ws")
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=12))
    ingest(root / "src", settings)
    assert train(settings).registered_version == 1
    return settings


def _tumour(seed: int) -> tuple[bytes, np.ndarray]:
    """A generated tumour slice's PNG and its lesion mask in the 64x64 preprocessed frame (trimmed, resized)."""
    pixels, lesion = render_slice_and_mask(np.random.default_rng(seed), 96, tumour=True)
    box = foreground_box(to_gray_unit(pixels))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), resize(lesion[box].astype(np.float32), (64, 64)) > 0.5


def _near(mask: np.ndarray, reach: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=reach)


@pytest.mark.parametrize("seed", [101, 102, 103])
def test_the_evidence_for_a_tumour_lies_on_the_lesion(topological: Settings, seed: int) -> None:
    model = load_verified(topological, 1).unwrap_python_model()
    data, lesion = _tumour(seed)
    found = explain(model, data, DecodeLimits())
    assert found.label == "tumour"
    evidence = np.clip(found.heatmap, 0, None)
    share = evidence[_near(lesion, found.patch)].sum() / evidence.sum()
    assert share > 0.5, share  # the lesion and the squares that cut it hold most of the evidence


def test_the_lesion_is_among_the_most_persistent_features() -> None:
    data, lesion = _tumour(104)
    from conveyor.config import PreprocessSettings
    from conveyor.features.pipeline import FeaturePipeline

    image = FeaturePipeline(PreprocessSettings(size=(64, 64)), []).image(data)
    regions = persistent_regions(image, top=5)
    assert any(lesion[tuple(r["birth_pixel"])] for r in regions if r["filtration"] == "superlevel")


def test_a_bar_is_located_where_the_image_says() -> None:
    """Two dark squares on a bright plate: the darkest holds the component that never dies; the other's component is
    born at its darkest pixel and dies when the plate joins them."""
    image = np.ones((16, 16))
    image[2:6, 2:6] = 0.1
    image[3, 4] = 0.05
    image[9:13, 9:13] = 0.4
    image[10, 11] = 0.3
    components = [r for r in persistent_regions(image, top=20) if (r["filtration"], r["dim"]) == ("sublevel", 0)]
    found = [(r["birth_pixel"], r["birth"], r["death"]) for r in components]
    assert found == [([3, 4], 0.05, 1.0), ([10, 11], 0.3, 1.0)]
    assert components[0]["death_pixel"] is None


def test_a_topological_model_shows_its_diagrams_regions_and_groups(topological: Settings) -> None:
    data, _ = _tumour(105)
    with TestClient(create_app(with_serving(topological))) as client:
        response = client.post("/v1/explain", files={"file": ("t.png", data, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "conveyor", "version": 1}
    assert np.asarray(body["heatmap"]).shape == (64, 64) and body["patch"] == 8
    assert Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))).size == (192, 192)
    assert base64.b64decode(body["diagrams_png"]).startswith(b"\x89PNG")
    assert len(body["regions"]) == 5 and [g["group"] for g in body["groups"]] == ["stats"]


def test_a_model_on_intensity_alone_has_no_diagrams(client: TestClient) -> None:
    body = client.post("/v1/explain", files={"file": ("t.png", png(3, tumour=True), "image/png")}).json()
    assert (body["diagrams_png"], body["regions"]) == (None, [])
    assert [g["group"] for g in body["groups"]] == ["intensity"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [(b"not an image", 415, "not_an_image"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, 422, None), (b"", 422, None)],
)
def test_bad_input_to_explain_is_4xx_with_a_detail(client: TestClient, body: bytes, status: int, reason: str) -> None:
    response = client.post("/v1/explain", content=body)
    assert response.status_code == status and response.json()["detail"]
    if reason is not None:
        assert response.json()["reason"] == reason


def test_explanations_beyond_the_queue_are_refused_with_retry_after(settings: Settings) -> None:
    from conveyor.serving.routes.explain import MAX_WAITING

    app = create_app(settings)
    with TestClient(app) as client:
        app.state.explain_slots.waiting = MAX_WAITING  # as many as may wait are waiting
        refused = client.post("/v1/explain", files={"file": ("t.png", png(3), "image/png")})
        app.state.explain_slots.waiting = 0
        served = client.post("/v1/explain", files={"file": ("t.png", png(3), "image/png")})
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "2")
    assert refused.json()["detail"] == f"{MAX_WAITING} explanations are already waiting; try again shortly"
    assert served.status_code == 200 and app.state.explain_slots.waiting == 0
