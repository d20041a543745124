"""The CNN competes in the same table, on the same test split, and repeats itself with the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.training.train import PIXELS, TrainResult, train
from tests.training.test_train import small_settings


@pytest.fixture(autouse=True)
def lean_cnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registered CNN family with one grid point and a few epochs: the behaviour, not the search, is tested."""
    from conveyor.models.cnn import CNNClassifier
    from conveyor.models.families import FAMILIES, Family

    def build(seed: int) -> CNNClassifier:
        return CNNClassifier(seed=seed, max_epochs=8, patience=3, width=8)

    lean = Family("cnn", build, {"learning_rate": [3e-3]}, input_kind="image", search="holdout")
    monkeypatch.setitem(FAMILIES, "cnn", lean)


def train_with_cnn(root: Path) -> TrainResult:
    settings = small_settings(root / "ws", families=["logreg", "cnn"])
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=9))
    ingest(root / "src", settings)
    return train(settings)


@pytest.mark.slow
def test_cnn_is_a_candidate_on_the_same_split_and_repeats_with_the_same_seed(tmp_path: Path) -> None:
    first, second = train_with_cnn(tmp_path / "a"), train_with_cnn(tmp_path / "b")
    names = sorted(c.name for c in first.candidates)
    assert names == ["cnn@pixels", "logreg@intensity"]
    cnn_first = next(c for c in first.candidates if c.extractor == PIXELS)
    cnn_second = next(c for c in second.candidates if c.extractor == PIXELS)
    logreg = next(c for c in first.candidates if c.extractor != PIXELS)
    assert cnn_first.test.n == logreg.test.n  # one test split for every family
    assert cnn_first.estimator.history_[0].keys() == {"epoch", "train_loss", "val_loss", "val_f1", "seconds"}
    assert cnn_first.params == cnn_second.params
    assert cnn_first.test.as_dict() == cnn_second.test.as_dict()
    probe = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(cnn_first.estimator.predict_proba(probe), cnn_second.estimator.predict_proba(probe))
