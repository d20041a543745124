"""The CNN competes in the same table, on the same test split, and repeats itself with the same seed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.training.train import PIXELS, TrainResult, train
from tests.training.test_train import small_settings

#: One grid point and a few epochs: the behaviour, not the search, is tested.
LEAN_CNN = {"grid": {"learning_rate": [3e-3], "width": [8]}, "max_epochs": 8, "patience": 3, "progress": False}


def train_with_cnn(root: Path) -> TrainResult:
    settings = small_settings(root / "ws", families=["logreg", "cnn"], cnn=LEAN_CNN)
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


def test_the_cnn_settings_set_its_parameters_grid_and_time_share() -> None:
    from conveyor.models.families import family

    settings = small_settings(
        Path("unused"), seed=7,
        cnn={"architecture": "densenet", "grid": {"width": [4, 8, 16]}, "time_budget_s": 100.0, "threads": 1},
    )  # fmt: skip
    estimator, grid = family("cnn").estimator_and_grid(settings)
    assert grid == {"width": [4, 8, 16]}
    params = estimator.get_params()
    assert (params["architecture"], params["seed"], params["n_threads"]) == ("densenet", 7, 1)
    assert params["time_budget_s"] == 25.0  # three grid points and the refit share 100 s


@pytest.mark.slow
def test_training_reads_the_cnn_images_from_the_pixel_store(tmp_path: Path) -> None:
    from conveyor.data.versions import dataset_members, latest_version
    from conveyor.training.pixels import PixelStore
    from conveyor.workspace import open_workspace

    settings = small_settings(tmp_path / "ws", families=["cnn"], cnn={**LEAN_CNN, "max_epochs": 1})
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=12, size=64, seed=2))
    ingest(tmp_path / "src", settings)
    train(settings)
    members = dataset_members(open_workspace(settings), latest_version(open_workspace(settings)))
    assert len(PixelStore.of(settings)) == len(members) == 24


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"learnin_rate": [1e-3]}, "training.cnn.grid: CNNClassifier has no parameter 'learnin_rate'; it has"),
        ({"width": []}, "training.cnn.grid: 'width' has no values to search"),
    ],
)
def test_a_bad_cnn_grid_is_refused_before_anything_trains(tmp_path: Path, grid: dict, message: str) -> None:
    from conveyor.errors import ConfigError

    settings = small_settings(tmp_path / "ws", families=["logreg", "cnn"], cnn={"grid": grid})
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=6, size=64, seed=1))
    ingest(tmp_path / "src", settings)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(settings)
    assert not any((tmp_path / "ws" / "features").rglob("*.parquet"))  # refused before the features were computed
