"""The registered model's interface, the only part of it serving and monitoring use."""

from __future__ import annotations

import numpy as np

from conveyor.config import Settings
from conveyor.data.versions import raw_images
from conveyor.serving.models import load_version
from tests.tracking.test_integrity import registered  # noqa: F401  (fixture)


def test_bytes_and_stored_features_give_the_same_answer(registered: Settings) -> None:  # noqa: F811
    """Serving goes from bytes (image, predict_images), monitoring from the feature store (predict_features)."""
    from conveyor.features.store import load_matrix

    model = load_version(registered, 1).model
    features, _ = load_matrix(registered, model.spec.extractor, split="test")
    shas = list(features.index[:5])
    from_bytes = model.predict_images([model.image(data) for data in raw_images(registered, shas).read_all(shas)])
    from_store = model.predict_features(features.to_numpy()[:5])
    np.testing.assert_allclose(from_bytes, from_store, atol=1e-9)
    assert from_bytes.shape == (5, len(model.classes))


def test_the_model_ships_its_artifacts_and_a_pin_on_conveyor_not_a_copy_of_it(registered: Settings) -> None:  # noqa: F811
    from importlib.metadata import version

    [classifier] = (registered.home / "mlartifacts").rglob("classifier.joblib")
    folder = classifier.parents[1]
    assert not (folder / "code").exists()
    assert sorted(p.name for p in (folder / "artifacts").iterdir()) == ["classifier.joblib", "spec.json"]
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert requirements[0] == f"conveyor=={version('conveyor')}"


def test_loading_a_model_leaves_the_import_path_alone(registered: Settings) -> None:  # noqa: F811
    import sys

    before = list(sys.path)
    load_version(registered, 1)
    assert sys.path == before
