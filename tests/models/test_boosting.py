"""The balanced histogram boosting: unweighted bin edges, weighted loss, scikit-learn's behaviour otherwise."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from conveyor.models.boosting import BalancedHistGradientBoosting
from conveyor.models.families import family


def _imbalanced(n: int = 300, p: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    X = rng.normal(size=(n, p)) + y[:, None] * 0.8
    return X, y


def _thresholds(model: HistGradientBoostingClassifier) -> list[np.ndarray]:
    return model._bin_mapper.bin_thresholds_


def test_bin_edges_are_the_unweighted_ones() -> None:
    X, y = _imbalanced()
    ours = BalancedHistGradientBoosting(class_weight="balanced", max_iter=5, random_state=0).fit(X, y)
    unweighted = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y)
    for mine, reference in zip(_thresholds(ours), _thresholds(unweighted), strict=True):
        np.testing.assert_array_equal(mine, reference)


def test_the_loss_stays_weighted() -> None:
    """Same bins, so the only difference from an unweighted fit is the class weights: the minority gets more
    positive predictions, exactly as many as scikit-learn's own balanced fit on unweighted bins would give."""
    X, y = _imbalanced()
    ours = BalancedHistGradientBoosting(class_weight="balanced", max_iter=20, random_state=0).fit(X, y)
    unweighted = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    assert ours.predict(X).sum() > unweighted.predict(X).sum()


def test_equals_scikit_learn_when_the_classes_are_balanced() -> None:
    """Equal class weights give every sample the same weight: the weighted quantiles are the unweighted ones."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    X = rng.normal(size=(200, 4)) + y[:, None]
    ours = BalancedHistGradientBoosting(class_weight="balanced", max_iter=10, random_state=0).fit(X, y)
    theirs = HistGradientBoostingClassifier(class_weight="balanced", max_iter=10, random_state=0).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-12)


def test_a_small_training_set_still_gets_split() -> None:
    """30 images: scikit-learn's leaf minimum of 20 allows no split, so every image would get one class."""
    X, y = _imbalanced(n=30, p=3, seed=2)
    y[:10] = 1
    X[:10] += 3.0
    model = BalancedHistGradientBoosting(class_weight="balanced", max_iter=20, random_state=0).fit(X, y)
    stock = HistGradientBoostingClassifier(class_weight="balanced", max_iter=20, random_state=0).fit(X, y)
    assert len(set(stock.predict(X))) == 1
    assert (model.predict(X) == y).mean() == 1.0
    assert model.get_params()["min_samples_leaf"] == 20


def test_the_family_uses_it() -> None:
    classifier = family("hist_gradient_boosting").build(0).named_steps["clf"]
    assert isinstance(classifier, BalancedHistGradientBoosting)
    assert classifier.class_weight == "balanced"
