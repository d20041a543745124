"""The stacked candidate: finalists on their own columns combined by a logistic regression fitted on their
out-of-fold scores, scored on the search's folds, raced and registered like any family."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.data.versions import dataset_members
from conveyor.models.stacking import PIXEL_INPUT, ImagesAndFeatures, StackedClassifier, stack_inputs
from conveyor.store.db import get_engine
from conveyor.training.evaluate import Scorer
from conveyor.training.stacking import base_columns, fit_mixed_stack, fit_stack, stack_table
from conveyor.training.train import train
from tests.training.test_train import load_champion, small_settings


def _two_views(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label that is the XOR-free sum of two signals, each seen by one half of the columns only."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (a + b > 0).astype(int)
    X = np.column_stack([a + 0.3 * rng.normal(size=n), rng.normal(size=n), b + 0.3 * rng.normal(size=n)])
    return X, y


def _bases(X: np.ndarray, y: np.ndarray) -> list[tuple[str, object, np.ndarray]]:
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    out = []
    for name, cols in (("left", [0, 1]), ("right", [2])):
        model = LogisticRegression()
        oof = cross_val_predict(model, X[:, cols], y, cv=folds, method="decision_function")
        out.append((name, model.fit(X[:, cols], y), np.column_stack([-oof, oof])))
    return out


def test_a_binary_base_gives_the_combiner_one_column_and_a_multiclass_base_one_per_class() -> None:
    binary, three = np.array([[-1.0, 1.0], [2.0, -2.0]]), np.arange(6.0).reshape(2, 3)
    assert stack_inputs([binary, three]).tolist() == [[1.0, 0.0, 1.0, 2.0], [-2.0, 3.0, 4.0, 5.0]]


def test_bases_that_share_a_table_read_it_and_others_read_all() -> None:
    assert stack_table(["stats", "stats"], ["stats", "all"]) == "stats"
    assert stack_table(["stats", "intensity"], ["stats", "intensity", "all"]) == "all"
    assert stack_table(["roi-stats", "roi-all"], ["roi-stats", "roi-all"]) == "roi-all"


def test_bases_on_the_whole_image_and_a_region_or_without_all_are_not_stacked() -> None:
    assert stack_table(["stats", "roi-stats"], ["stats", "roi-stats", "all", "roi-all"]) is None
    assert stack_table(["stats", "intensity"], ["stats", "intensity"]) is None


def test_a_base_reads_its_own_columns_of_all_in_their_order() -> None:
    columns = ["intensity__mean", "stats__h0_count", "intensity__std", "stats__h1_count"]
    assert base_columns("stats", "all", columns).tolist() == [1, 3]
    assert base_columns("roi-intensity", "roi-all", columns).tolist() == [0, 2]
    assert base_columns("all", "all", columns).tolist() == [0, 1, 2, 3]


def test_the_stack_beats_each_base_when_they_see_different_signals() -> None:
    X, y = _two_views()
    X_new, y_new = _two_views(seed=1)
    bases = _bases(X, y)
    stack = StackedClassifier([m for _, m, _ in bases], [np.array([0, 1]), np.array([2])]).fit(
        [oof for _, _, oof in bases], y
    )
    alone = [float((m.predict(X_new[:, c]) == y_new).mean()) for (_, m, _), c in zip(bases, ([0, 1], [2]), strict=True)]
    assert float((stack.predict(X_new) == y_new).mean()) > max(alone) + 0.1
    assert stack.predict_proba(X_new).shape == (400, 2) and np.allclose(stack.predict_proba(X_new).sum(axis=1), 1.0)


def test_a_stack_survives_pickling_with_the_same_answers() -> None:
    X, y = _two_views()
    bases = _bases(X, y)
    stack = StackedClassifier([m for _, m, _ in bases], [np.array([0, 1]), np.array([2])]).fit(
        [oof for _, _, oof in bases], y
    )
    assert np.array_equal(pickle.loads(pickle.dumps(stack)).predict_proba(X), stack.predict_proba(X))


def test_a_stack_refuses_scores_for_another_number_of_bases() -> None:
    X, y = _two_views()
    bases = _bases(X, y)
    with pytest.raises(ValueError, match="1 out-of-fold score arrays for 2 bases"):
        StackedClassifier([m for _, m, _ in bases], [np.array([0, 1]), np.array([2])]).fit([bases[0][2]], y)


def test_the_stack_is_scored_on_every_fold_with_out_of_fold_scores_for_every_image() -> None:
    X, y = _two_views()
    splits = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    found = fit_stack(
        _bases(X, y), "all", ["left__a", "left__noise", "right__b"], y, splits, Scorer("accuracy", 2, 1), 0
    )
    assert len(found.fold_scores) == 4 and min(found.fold_scores) > 0.85
    assert found.oof_scores.shape == (400, 2) and np.all(found.oof_scores[:, 0] == -found.oof_scores[:, 1])
    assert [c.tolist() for c in found.estimator.columns] == [[0, 1], [2]]


def _make_win(monkeypatch: pytest.MonkeyPatch, fit: str) -> None:
    """Lift every fold score of the stacks ``conveyor.training.stacking.<fit>`` fits by 1: they top the ranking."""
    import dataclasses

    import conveyor.training.stacking as stacking

    real = getattr(stacking, fit)

    def winning(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = real(*args, **kwargs)
        return dataclasses.replace(found, fold_scores=[score + 1.0 for score in found.fold_scores])

    monkeypatch.setattr(stacking, fit, winning)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("stacked")
    settings = small_settings(root / "ws", families=["logreg", "random_forest"], extractors=["intensity", "all"])
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    ingest(root / "src", settings)
    return settings, train(settings)


def test_training_races_the_finalists_stacked(stacked) -> None:  # type: ignore[no-untyped-def]
    _, result = stacked
    finals = [c for c in result.candidates if c.stage == "final" and c.family != "stack"]
    (stack,) = [c for c in result.candidates if c.family == "stack"]
    assert stack.params == {"members": [c.name for c in finals]} and stack.extractor == "all"
    assert stack.folds == 3 and stack.test is not None and stack.test.n == finals[0].test.n


def test_a_stack_that_wins_on_cv_is_registered_and_served_as_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack made to win the ranking (its fold scores lifted by 1): calibration, the gate, registration and the
    served model then run as for any winner, and the served answers are the evaluated ones."""
    _make_win(monkeypatch, "fit_stack")
    settings = small_settings(
        tmp_path / "ws",
        families=["logreg", "random_forest"],
        extractors=["intensity", "all"],
        importance={"enabled": False},
    )  # the importance of a registered stack is not what this tests (it took half the test)
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    ingest(tmp_path / "src", settings)
    result = train(settings)
    assert result.best.family == "stack" and result.registered_version == 1
    model = load_champion(settings)
    assert model.unwrap_python_model().spec.family == "stack"
    engine = get_engine(settings.resolved_db_url)
    test = [(sha, label) for sha, label, split in dataset_members(engine, result.dataset_version) if split == "test"]
    blobs = [next((settings.home / "raw" / sha[:2]).glob(f"{sha}.*")).read_bytes() for sha, _ in test]
    out = model.predict(pd.DataFrame({"image": blobs}))
    accuracy = float(np.mean(out["label"].to_numpy() == np.array([label for _, label in test])))
    assert accuracy == pytest.approx(result.calibrated.accuracy)


class _MeanBrightness:
    """A stand-in network: its score for class 1 is an image's mean brightness, held out on ``val_index_``."""

    classes_ = np.array([0, 1])

    def __init__(self, images: np.ndarray, val_index: np.ndarray) -> None:
        self.val_index_ = val_index
        self.val_proba_ = self.predict_proba(images[val_index])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        bright = np.asarray(images).reshape(len(images), -1).mean(axis=1)
        return np.column_stack([1.0 - bright, bright])


def _images_of(signal: np.ndarray) -> np.ndarray:
    """8x8 images whose mean brightness is a squashed ``signal``."""
    return np.repeat((1.0 / (1.0 + np.exp(-signal)))[:, None, None], 8, axis=1).repeat(8, axis=2)


def test_images_and_features_select_the_same_rows_of_both() -> None:
    both = ImagesAndFeatures(np.arange(4.0)[:, None, None] * np.ones((4, 2, 2)), np.arange(8.0).reshape(4, 2))
    picked = both[np.array([3, 1])]
    assert len(picked) == 2 and picked.pixels[:, 0, 0].tolist() == [3.0, 1.0]
    assert picked.features.tolist() == [[6.0, 7.0], [2.0, 3.0]]


def test_images_and_features_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="3 images but 2 feature vectors"):
        ImagesAndFeatures(np.zeros((3, 2, 2)), np.zeros((2, 5)))


def test_a_stack_with_a_network_reads_the_images_and_its_other_bases_their_columns() -> None:
    X, y = _two_views()
    images = _images_of(X[:, 2])  # the network sees the right-hand signal in the pixels
    (_, left, oof), _ = _bases(X, y)
    network = _MeanBrightness(images, np.arange(len(y)))
    stack = StackedClassifier([left, network], [np.array([0, 1]), PIXEL_INPUT]).fit([oof, network.val_proba_], y)
    both = ImagesAndFeatures(images, X)
    expected = stack_inputs([np.column_stack([-left.decision_function(X[:, :2]), left.decision_function(X[:, :2])]),
                             network.predict_proba(images)])  # fmt: skip
    np.testing.assert_allclose(stack.base_scores(both), expected)
    assert float(np.mean(stack.predict(both) == y)) > 0.85


def test_a_base_that_names_anything_but_pixels_for_its_columns_is_refused() -> None:
    X, y = _two_views(n=40)
    network = _MeanBrightness(_images_of(X[:, 2]), np.arange(40))
    with pytest.raises(ValueError, match="column positions or 'pixels', got 'pixel'"):
        StackedClassifier([network], ["pixel"]).fit([network.val_proba_], y)


def test_a_stack_with_a_network_refuses_a_feature_matrix_alone() -> None:
    X, y = _two_views(n=40)
    network = _MeanBrightness(_images_of(X[:, 2]), np.arange(40))
    stack = StackedClassifier([network], [PIXEL_INPUT]).fit([network.val_proba_], y)
    with pytest.raises(ValueError, match="give it ImagesAndFeatures"):
        stack.predict(X)


def test_the_mixed_stack_is_fitted_and_scored_on_the_networks_validation_fold_only() -> None:
    X, y = _two_views()
    held = np.arange(0, 400, 4)  # the network trained on the other 300 images
    network = _MeanBrightness(_images_of(X[:, 2]), held)
    found = fit_mixed_stack(_bases(X, y)[:1], network, "all", ["left__a", "left__noise", "right__b"], y, None, 5,
                            Scorer("accuracy", 2, 1), 0)  # fmt: skip
    assert found is not None and found.table == "pixels+all" and found.oof_scores is None
    assert len(found.fold_scores) == 5 and np.mean(found.fold_scores) > 0.85
    assert found.estimator.combiner_[0].n_samples_seen_ == 100
    assert [c if isinstance(c, str) else c.tolist() for c in found.estimator.columns] == [[0, 1], "pixels"]


def test_the_mixed_stack_keeps_groups_whole_across_its_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    import conveyor.training.stacking as stacking

    X, y = _two_views()
    groups = np.arange(400) // 2  # pairs of images
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = stacking._combiner_cv

    def spy(inputs, y, splits, scorer, seed):  # type: ignore[no-untyped-def]
        seen.extend(splits)
        return real(inputs, y, splits, scorer, seed)

    monkeypatch.setattr(stacking, "_combiner_cv", spy)
    held = np.arange(200)
    fit_mixed_stack(_bases(X, y)[:1], _MeanBrightness(_images_of(X[:, 2]), held), "all", ["left__a", "left__noise",
                    "right__b"], y, groups, 3, Scorer("accuracy", 2, 1), 0)  # fmt: skip
    assert len(seen) == 3
    for fitted, scored in seen:
        assert not set(groups[held][fitted]) & set(groups[held][scored])


def test_a_validation_fold_with_one_image_of_a_class_gives_no_mixed_stack() -> None:
    X, y = _two_views()
    held = np.concatenate([np.flatnonzero(y == 0)[:10], np.flatnonzero(y == 1)[:1]])
    found = fit_mixed_stack(_bases(X, y)[:1], _MeanBrightness(_images_of(X[:, 2]), held), "all", ["left__a",
                            "left__noise", "right__b"], y, None, 5, Scorer("accuracy", 2, 1), 0)  # fmt: skip
    assert found is None


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.training.test_cnn_family import LEAN_CNN

    root = tmp_path_factory.mktemp("mixed")
    settings = small_settings(root / "ws", families=["logreg", "cnn"], cnn=LEAN_CNN)
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=9))
    ingest(root / "src", settings)
    return settings, train(settings)


@pytest.mark.slow
def test_training_races_the_network_stacked_with_the_tabular_finalists(mixed) -> None:  # type: ignore[no-untyped-def]
    _, result = mixed
    (stack,) = [c for c in result.candidates if c.family == "stack"]
    network = next(c for c in result.candidates if c.name == "cnn@pixels")
    assert stack.extractor == "pixels+intensity" and stack.params == {"members": ["logreg@intensity", "cnn@pixels"]}
    assert stack.n == len(network.estimator.val_index_) and stack.folds == 3
    assert stack.test is not None and stack.test.n == network.test.n


@pytest.mark.slow
def test_a_mixed_stack_that_wins_is_served_from_the_image_bytes_as_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stack of the network and logistic regression made to win (fold scores lifted by 1): the registered model
    takes both the pixels and the features it computes from the same bytes, and answers as it was evaluated."""
    from tests.training.test_cnn_family import LEAN_CNN

    _make_win(monkeypatch, "fit_mixed_stack")
    settings = small_settings(tmp_path / "ws", families=["logreg", "cnn"], cnn=LEAN_CNN)
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=9))
    ingest(tmp_path / "src", settings)
    result = train(settings)
    assert result.best.name == "stack@pixels+intensity" and result.registered_version == 1
    model = load_champion(settings)
    spec = model.unwrap_python_model().spec
    assert (spec.input_kind, spec.extractor, [name for name, _ in spec.extractors]) == (
        "both", "pixels+intensity", ["intensity"])  # fmt: skip
    engine = get_engine(settings.resolved_db_url)
    test = [(sha, label) for sha, label, split in dataset_members(engine, result.dataset_version) if split == "test"]
    blobs = [next((settings.home / "raw" / sha[:2]).glob(f"{sha}.*")).read_bytes() for sha, _ in test]
    out = model.predict(pd.DataFrame({"image": blobs}))
    accuracy = float(np.mean(out["label"].to_numpy() == np.array([label for _, label in test])))
    assert accuracy == pytest.approx(result.calibrated.accuracy)
    with pytest.raises(ValueError, match="takes pixels and features, not feature vectors alone"):
        model.unwrap_python_model().predict_features(np.zeros((1, 3)))
    from conveyor.monitoring.monitor import monitor_batch

    generate_dataset(tmp_path / "batch", SyntheticSpec(n_per_class=8, size=96, seed=33))
    summary = monitor_batch(tmp_path / "batch", settings)
    groups = {c["group"] for c in summary["drift"]["columns"]}
    assert summary["model_version"] == 1 and summary["performance"]["model"]["n"] == 16
    assert groups == {"features", "image"}  # its own feature columns drift-tested, beside the image statistics


@pytest.mark.slow
def test_a_refit_after_a_stack_and_a_network_topped_the_ranking_refits_the_best_tabular_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous ranking's first entries are the mixed stack and the network (no search fits those): a refit of one
    candidate refits the best tabular one, then stacks and fits the network again."""
    from tests.training.test_cnn_family import LEAN_CNN

    _make_win(monkeypatch, "fit_mixed_stack")
    settings = small_settings(tmp_path / "ws", families=["logreg", "cnn"], cnn=LEAN_CNN,
                              search={"refit_candidates": 1})  # fmt: skip
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=9))
    ingest(tmp_path / "src", settings)
    assert train(settings).best.name == "stack@pixels+intensity"
    again = train(settings, mode="refit")
    assert again.search.mode == "refit"
    assert sorted(c.name for c in again.candidates) == ["cnn@pixels", "logreg@intensity", "stack@pixels+intensity"]
