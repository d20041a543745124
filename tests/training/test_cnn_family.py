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

#: One grid point, a few epochs (not stretched to min_steps) and one network: the behaviour, not the search, is tested.
LEAN_CNN = {
    "grid": {"learning_rate": [3e-3], "width": [8]},
    "max_epochs": 8,
    "patience": 3,
    "min_steps": 0,
    "networks": 1,
    "progress": False,
}


def train_with_cnn(root: Path) -> TrainResult:
    settings = small_settings(root / "ws", families=["logreg", "cnn"], cnn=LEAN_CNN)
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=9))
    ingest(root / "src", settings)
    return train(settings)


@pytest.mark.slow
def test_cnn_is_a_candidate_on_the_same_split_and_repeats_with_the_same_seed(tmp_path: Path) -> None:
    first, second = train_with_cnn(tmp_path / "a"), train_with_cnn(tmp_path / "b")
    names = sorted(c.name for c in first.candidates)
    assert names == ["cnn@pixels", "logreg@intensity", "stack@pixels+intensity"]
    cnn_first = next(c for c in first.candidates if c.extractor == PIXELS)
    cnn_second = next(c for c in second.candidates if c.extractor == PIXELS)
    logreg = next(c for c in first.candidates if c.extractor != PIXELS)
    assert cnn_first.test.n == logreg.test.n  # one test split for every family
    assert cnn_first.estimator.history_[0].keys() == {"epoch", "train_loss", "val_loss", "val_f1", "lr", "seconds"}
    assert cnn_first.params == cnn_second.params
    assert cnn_first.test.as_dict() == cnn_second.test.as_dict()
    probe = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(cnn_first.estimator.predict_proba(probe), cnn_second.estimator.predict_proba(probe))


@pytest.mark.parametrize(("refit", "search", "share"), [(False, "validation", 100.0 / 3), (True, "holdout", 25.0)])
def test_the_cnn_settings_set_its_parameters_grid_search_and_time_share(refit: bool, search: str, share: float) -> None:
    from conveyor.models.families import family

    settings = small_settings(
        Path("unused"), seed=7,
        cnn={"architecture": "densenet", "grid": {"width": [4, 8, 16]}, "time_budget_s": 100.0, "threads": 1,
             "augment": "monai", "schedule": "constant", "tta": False, "refit": refit, "networks": 1},
    )  # fmt: skip
    estimator, grid = family("cnn").estimator_and_grid(settings)
    assert grid == {"width": [4, 8, 16]}
    params = estimator.get_params()
    assert (params["architecture"], params["seed"], params["n_threads"]) == ("densenet", 7, 1)
    assert (params["augment"], params["schedule"], params["tta"]) == ("monai", "constant", False)
    assert family("cnn").search_under(settings) == search
    assert params["time_budget_s"] == pytest.approx(share)  # three grid points (and the refit) share 100 s


def test_the_cnn_defaults_are_the_new_recipe() -> None:
    from conveyor.models.families import family

    settings = small_settings(Path("unused"))
    ensemble, grid = family("cnn").estimator_and_grid(settings)
    assert grid == {"learning_rate": [3e-3], "width": [16]}
    assert (type(ensemble).__name__, ensemble.networks, ensemble.up_to) == ("SeedEnsemble", 5, 1000)
    estimator = ensemble.estimator
    params = estimator.get_params()
    assert (params["architecture"], params["augment"], params["schedule"], params["tta"]) == (
        "resnet_small", "batch", "cosine", True
    )  # fmt: skip
    assert (params["max_epochs"], params["patience"], params["time_budget_s"]) == (30, 6, 1800.0)
    assert family("cnn").search_under(settings) == "validation"


def test_one_network_is_the_network_itself_and_the_ensemble_size_is_set() -> None:
    from conveyor.models.cnn import CNNClassifier
    from conveyor.models.families import family

    one, _ = family("cnn").estimator_and_grid(small_settings(Path("unused"), cnn={"networks": 1}))
    assert type(one) is CNNClassifier
    several, _ = family("cnn").estimator_and_grid(
        small_settings(Path("unused"), cnn={"networks": 3, "ensemble_up_to": 200, "time_budget_s": 90.0})
    )
    assert (several.networks, several.up_to, several.estimator.time_budget_s) == (3, 200, 90.0)


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


@pytest.mark.parametrize(
    ("refit", "networks", "fitted_sizes"), [(False, 1, [40]), (True, 1, [32, 40]), (False, 2, [40, 40])]
)
def test_the_cnn_search_fits_each_point_once_or_adds_a_refit(
    refit: bool, networks: int, fitted_sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without refit one fit on the whole training split, scored on its own grouped validation fold, is final; with
    it the grid is scored on a grouped holdout (four fifths of the groups fit) and the best refitted on all. Every
    fit gets the groups of its own images for its early-stopping fold. Two networks: two fits of the whole split,
    scored on the images either held out."""
    from conveyor.models.cnn import CNNClassifier
    from conveyor.models.families import family
    from conveyor.training.evaluate import Scorer
    from conveyor.training.train import _Data, _fit_image_candidate, _Inputs
    from tests.models.test_cnn import blobs

    X, y = blobs(20, seed=5)
    X_test, y_test = blobs(5, seed=6)
    codes = (y == "none").astype(int)  # classes ["blob", "none"]
    groups = np.arange(40) // 4  # ten groups of four, each of one class
    calls: list[tuple[int, int]] = []
    original = CNNClassifier.fit

    def counting_fit(self: CNNClassifier, X: object, y: object, **params: object) -> CNNClassifier:
        calls.append((len(y), len(params["val_groups"])))  # type: ignore[arg-type]
        return original(self, X, y, **params)  # type: ignore[arg-type]

    monkeypatch.setattr(CNNClassifier, "fit", counting_fit)
    data = _Data("v", [], ["blob", "none"], "none", list(y), list(y_test), codes, 3, groups)
    cnn = {
        "grid": {"width": [4]},
        "max_epochs": 1,
        "threads": 1,
        "progress": False,
        "refit": refit,
        "networks": networks,
        "min_steps": 0,
    }
    settings = small_settings(Path("unused"), families=["cnn"], cnn=cnn)
    scorer = Scorer("balanced_accuracy", 2, 1)
    result = _fit_image_candidate(family("cnn"), _Inputs(X, X_test), data, settings, None, scorer)
    assert [n for n, _ in calls] == fitted_sizes and all(n == g for n, g in calls)
    model = result.estimator
    assert np.array_equal(np.flatnonzero(np.isin(groups, groups[model.val_index_])), model.val_index_)
    if not refit:  # the candidate's score is its final model's, on the fold that model held out
        predicted = model.val_proba_.argmax(axis=1)
        assert result.cv_score == scorer(codes[model.val_index_], predicted)
    assert (result.folds, result.cv_score_std, result.params) == (1, 0.0, {"width": 4})
    assert result.test.n == 10
