"""SeedEnsemble: members with consecutive seeds, averaged; pooled held-out scores; the size rule; parameters."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from conveyor.models.cnn import CNNClassifier
from conveyor.models.ensemble import SeedEnsemble
from tests.models.test_cnn import blobs


def quick(**params: Any) -> CNNClassifier:
    """One epoch of a narrow network on one thread: the ensemble's bookkeeping, not learning, is tested."""
    return CNNClassifier(**{"width": 4, "batch_size": 16, "max_epochs": 1, "n_threads": 1, "seed": 3, **params})


@pytest.fixture(scope="module")
def data() -> tuple:
    return blobs(12, seed=0, size=24)


@pytest.fixture(scope="module")
def fitted(data: tuple) -> SeedEnsemble:
    X, y = data
    return SeedEnsemble(quick(), networks=3).fit(X, y)


def test_members_are_the_network_with_consecutive_seeds(data: tuple, fitted: SeedEnsemble) -> None:
    X, _ = data
    assert [member.seed for member in fitted.members_] == [3, 4, 5]
    alone = quick(seed=4).fit(*data)
    np.testing.assert_allclose(fitted.members_[1].predict_proba(X), alone.predict_proba(X), atol=1e-6)


def test_predict_proba_is_the_mean_of_the_members(data: tuple, fitted: SeedEnsemble) -> None:
    X, _ = data
    expected = np.mean([member.predict_proba(X) for member in fitted.members_], axis=0)
    np.testing.assert_allclose(fitted.predict_proba(X), expected)
    assert list(fitted.predict(X)) == list(fitted.classes_[expected.argmax(axis=1)])


def test_each_held_out_image_is_scored_by_the_members_that_held_it_out(fitted: SeedEnsemble) -> None:
    folds = [set(member.val_index_.tolist()) for member in fitted.members_]
    assert fitted.val_index_.tolist() == sorted(set.union(*folds))
    for row, position in enumerate(fitted.val_index_):
        holders = [m for m, fold in zip(fitted.members_, folds, strict=True) if position in fold]
        scores = [m.val_proba_[m.val_index_.tolist().index(position)] for m in holders]
        np.testing.assert_allclose(fitted.val_proba_[row], np.mean(scores, axis=0))


def test_a_split_larger_than_up_to_trains_one_network_with_the_whole_budget(data: tuple) -> None:
    X, y = data
    model = SeedEnsemble(quick(time_budget_s=60.0), networks=3, up_to=len(y) - 1).fit(X, y)
    assert [(m.seed, m.time_budget_s) for m in model.members_] == [(3, 60.0)]
    assert model.history_ == model.members_[0].history_


def test_the_members_share_the_time_budget(data: tuple) -> None:
    X, y = data
    model = SeedEnsemble(quick(time_budget_s=60.0), networks=2).fit(X, y)
    assert [m.time_budget_s for m in model.members_] == [30.0, 30.0]


def test_history_puts_the_members_side_by_side(fitted: SeedEnsemble) -> None:
    assert fitted.history_[0]["epoch"] == 1
    assert fitted.history_[0]["network2_val_loss"] == fitted.members_[2].history_[0]["val_loss"]
    assert len(fitted.history_) == 1


def test_the_network_parameters_pass_through_so_a_grid_searches_it_unchanged() -> None:
    model = SeedEnsemble(quick(), networks=2).set_params(learning_rate=0.01, networks=4)
    assert (model.estimator.learning_rate, model.networks) == (0.01, 4)
    assert clone(model).get_params()["estimator__learning_rate"] == 0.01


def test_a_grid_search_over_the_network_parameters_fits(data: tuple) -> None:
    X, y = data
    search = GridSearchCV(SeedEnsemble(quick(), networks=2), {"width": [2, 4]}, cv=2, refit=False).fit(X, y)
    assert [p["width"] for p in search.cv_results_["params"]] == [2, 4]


def test_it_pickles_and_answers_the_same(data: tuple, fitted: SeedEnsemble) -> None:
    X, _ = data
    np.testing.assert_allclose(pickle.loads(pickle.dumps(fitted)).predict_proba(X), fitted.predict_proba(X), atol=1e-6)


def test_it_takes_images_as_the_network_does() -> None:
    from sklearn.utils import get_tags

    assert get_tags(SeedEnsemble(quick())).input_tags.three_d_array is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"networks": 0}, "networks: expected an integer >= 1, got 0"),
        ({"networks": 2.5}, "networks: expected an integer >= 1, got 2.5"),
        ({"up_to": 0}, "up_to: expected an integer >= 1 or None, got 0"),
        ({"up_to": True}, "up_to: expected an integer >= 1 or None, got True"),
        ({"estimator": None}, "estimator: a classifier to train several of is required"),
    ],
)
def test_bad_parameters_are_refused(data: tuple, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        SeedEnsemble(**{"estimator": quick(), **params}).fit(*data)


def test_an_unfitted_ensemble_refuses_to_predict(data: tuple) -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SeedEnsemble(quick()).predict_proba(data[0])


def test_each_member_names_its_progress_bars(data: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = data
    model = SeedEnsemble(quick(progress=True), networks=2).fit(X, y)
    assert [m.progress for m in model.members_] == ["network 1/2", "network 2/2"]
    assert "network 2/2, epoch 1/1" in capsys.readouterr().err
