"""features.roi: segmentation: the classifier computes its features inside the region the segmentation champion
draws; training races both the whole image's tables and the region's; the registered classifier carries the U-Net
and answers from an image's bytes exactly what it was trained on."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import ConfigError
from conveyor.features.extractors import make_extractor
from conveyor.features.store import read_table, table_for
from conveyor.tracking.integrity import load_verified
from conveyor.training.segmentation import feature_region, segmentation_settings, train_segmentation
from conveyor.training.train import TrainResult, train


def _settings(home: Path, **training: object) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (48, 48)},  # type: ignore[arg-type]
        features={"extractors": ["stats", "intensity"], "roi": "segmentation"},  # type: ignore[arg-type]
        segmentation={"size": (64, 64), "bootstrap": 200},  # type: ignore[arg-type]
        training={"families": ["logreg"], "cv_folds": 3, "bootstrap": 200, **training},  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def roi(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult, TrainResult, Path]:
    """A segmentation champion, then a classifier on the region's statistics alone (registered), then a training
    over every table."""
    root = tmp_path_factory.mktemp("roi")
    settings = _settings(root / "ws")
    generate_dataset(root / "src", SyntheticSpec(n_per_class=50, size=96, seed=4, masks=True))
    ingest(root / "src", settings)
    assert train_segmentation(settings).passed
    only_roi = train(_settings(root / "ws", extractors=["roi-stats"]))
    return settings, only_roi, train(settings), root / "src"


def test_without_a_segmentation_model_the_setting_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no segmentation model 'conveyor-segmentation' is registered: run `conv"):
        feature_region(_settings(tmp_path / "ws"))


def test_the_whole_image_needs_no_region(tmp_path: Path) -> None:
    assert feature_region(Settings(home=tmp_path / "ws")) is None


def test_a_roi_table_without_the_setting_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "ws", training={"extractors": ["roi-stats"]})  # type: ignore[arg-type]
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=6, size=48, seed=1))
    ingest(tmp_path / "src", settings)
    with pytest.raises(ConfigError, match=r"training.extractors names a roi-table, but features.roi is 'image'"):
        train(settings)


def test_the_region_is_the_segmentation_champions_mask(roi) -> None:  # type: ignore[no-untyped-def]
    from conveyor.data.decode import decode_image

    settings, _, _, src = roi
    model = load_verified(segmentation_settings(settings), 1).unwrap_python_model()
    region = feature_region(settings)
    assert region is not None and region.key == hashlib.sha256(model.weights).hexdigest()[:12]
    image = sorted((src / "tumour" / "images").iterdir())[0].read_bytes()
    mask, _ = model.segment(image)
    assert np.array_equal(region(decode_image(image).pixels), mask > 0)


def test_the_region_pickles_as_its_weights(roi) -> None:  # type: ignore[no-untyped-def]
    from conveyor.data.decode import decode_image

    settings, _, _, src = roi
    region = feature_region(settings)
    copy = pickle.loads(pickle.dumps(region))
    pixels = decode_image(sorted((src / "tumour" / "images").iterdir())[1].read_bytes()).pixels
    assert copy.key == region.key and np.array_equal(copy(pixels), region(pixels))  # type: ignore[misc]


def test_training_races_the_whole_images_tables_and_the_regions(roi) -> None:  # type: ignore[no-untyped-def]
    _, _, both, _ = roi
    assert sorted(c.name for c in both.candidates) == [
        "logreg@all", "logreg@intensity", "logreg@roi-all", "logreg@roi-intensity", "logreg@roi-stats", "logreg@stats",
    ]  # fmt: skip


def test_the_registered_classifier_names_its_region(roi) -> None:  # type: ignore[no-untyped-def]
    settings, only_roi, _, _ = roi
    assert (only_roi.registered_version, only_roi.best.name) == (1, "logreg@roi-stats")
    spec = load_verified(settings, 1).unwrap_python_model().spec
    assert spec.roi == {"key": feature_region(settings).key, "size": [64, 64]}  # type: ignore[union-attr]
    assert spec.extractors == [("stats", make_extractor("stats").config()["params"])]


def test_the_served_answer_is_the_one_from_the_regions_stored_features(roi) -> None:  # type: ignore[no-untyped-def]
    settings, _, _, _ = roi
    model = load_verified(settings, 1).unwrap_python_model()
    region = feature_region(settings)
    table = read_table(table_for(settings, make_extractor("stats"), region.key).path)  # type: ignore[union-attr]
    shas = list(table.index[:5])
    raws = [next((settings.home / "raw" / sha[:2]).glob(f"{sha}.*")).read_bytes() for sha in shas]
    served = model.predict_images([model.image(raw) for raw in raws])
    np.testing.assert_allclose(served, model.predict_features(table.loc[shas].to_numpy()), rtol=1e-12)


def test_monitoring_reads_the_champions_region_tables(roi) -> None:  # type: ignore[no-untyped-def]
    from conveyor.monitoring.inputs import load_champion, monitored_extractors, read_features

    settings, _, _, _ = roi
    champion = load_champion(settings)
    region = feature_region(settings)
    table = read_table(table_for(settings, make_extractor("stats"), region.key).path)  # type: ignore[union-attr]
    shas = list(table.index[:4])
    stored, missing = read_features(settings, champion, monitored_extractors(settings, champion), shas)
    assert missing == [] and np.array_equal(stored.to_numpy(), table.loc[shas].to_numpy())


def test_a_classifier_on_the_region_pins_the_network_packages(roi) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from conveyor.tracking.setup import configure_mlflow

    settings, _, _, _ = roi
    configure_mlflow(settings)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{settings.model_name}/1"))
    assert (local / "artifacts" / "roi_unet.pt").exists()
    assert any(line.startswith("torch==") for line in (local / "requirements.txt").read_text().splitlines())
