"""Segmentation: the U-Net on generated images with exact lesion masks, scored against the trivial baselines,
gated, registered under its own name, and loaded back to segment an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import ConveyorError
from conveyor.models.unet import dice_per_image
from conveyor.training.segmentation import SegmentationResult, segmentation_settings, train_segmentation
from tests.serving.test_browser import browser_on, needs_chromium


def _settings(home: Path) -> Settings:
    segmentation = {"size": (64, 64), "bootstrap": 200}  # lesions of a few pixels at 32 px are too small to learn
    return Settings(home=home, segmentation=segmentation)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SegmentationResult, Path]:
    root = tmp_path_factory.mktemp("segmented")
    settings = _settings(root / "ws")
    generate_dataset(root / "src", SyntheticSpec(n_per_class=50, size=96, seed=4, masks=True))
    ingest(root / "src", settings)
    return settings, train_segmentation(settings), root / "src"


def test_dice_counts_a_rightly_empty_mask_as_perfect() -> None:
    truth = np.zeros((3, 4, 4), np.uint8)
    truth[1, :2, :2] = 1
    predicted = truth.copy()
    predicted[2, 0, 0] = 1  # a false lesion where there is none
    assert dice_per_image(predicted, truth, 1).tolist() == [1.0, 1.0, 0.0]


def test_the_unet_beats_both_trivial_baselines_and_is_registered(segmented) -> None:  # type: ignore[no-untyped-def]
    _, result, _ = segmented
    lesion = result.model.dice["lesion"]
    assert lesion[1] > max(b.dice["lesion"][0] for b in result.baselines.values())
    assert (result.passed, result.registered_version, result.alias) == (True, 1, "champion")
    assert result.n_test == 20 and result.n_train + result.n_validation == 80


def test_the_registered_model_segments_an_image_at_its_own_size(segmented) -> None:  # type: ignore[no-untyped-def]
    from conveyor.tracking.integrity import load_verified

    settings, _, src = segmented
    model = load_verified(segmentation_settings(settings), 1).unwrap_python_model()
    image = sorted((src / "tumour" / "images").iterdir())[0].read_bytes()
    mask, areas = model.segment(image)
    assert mask.shape == (96, 96) and set(np.unique(mask).tolist()) <= {0, 1}
    assert areas == {"background": int((mask == 0).sum()), "lesion": int((mask == 1).sum())}


def test_without_masks_segmentation_says_what_it_needs(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=4, size=64, seed=1))
    ingest(tmp_path / "src", settings)
    with pytest.raises(ConveyorError, match="needs images with masks in both splits"):
        train_segmentation(settings)


def test_the_server_segments_an_upload(segmented) -> None:  # type: ignore[no-untyped-def]
    import base64

    from fastapi.testclient import TestClient

    from conveyor.data.masks import read_mask
    from conveyor.serving import create_app
    from tests.serving.conftest import with_serving

    settings, _, src = segmented
    image = sorted((src / "tumour" / "images").iterdir())[1].read_bytes()
    with TestClient(create_app(with_serving(settings))) as client:
        response = client.post("/v1/segment", files={"file": ("slice.png", image, "image/png")})
        bad = client.post("/v1/segment", content=b"not an image at all")
    assert response.status_code == 200
    body = response.json()
    mask = read_mask(base64.b64decode(body["mask_png"]))
    assert mask.shape == (96, 96) and body["classes"] == ["background", "lesion"]
    assert body["areas"] == {"background": int((mask == 0).sum()), "lesion": int((mask == 1).sum())}
    assert body["model"] == {"name": "conveyor-segmentation", "version": 1}
    assert (bad.status_code, bad.json()["reason"]) == (415, "not_an_image")


@needs_chromium
def test_the_page_draws_the_mask_over_the_image(segmented) -> None:  # type: ignore[no-untyped-def]
    """A real browser: the upload is segmented and the lesion tinted on the page (no classifier here: the page says
    so and still segments)."""
    pytest.importorskip("playwright")
    from tests.serving.conftest import with_serving

    settings, _, src = segmented
    image = sorted((src / "tumour" / "images").iterdir())[2]
    with browser_on(with_serving(settings)) as (page, port):
        page.goto(f"http://127.0.0.1:{port}/", timeout=15_000)
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_function("!document.getElementById('overlay').hidden", timeout=15_000)
        assert int(page.get_attribute("#overlay", "data-tinted") or "0") > 0
        assert page.text_content("#areas").startswith("background ")
        assert page.is_visible("#error")  # no classifier registered in this workspace
