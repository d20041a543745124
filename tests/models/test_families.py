"""Model families: the feature-selecting variant of a tabular family."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from conveyor.models.families import family, with_selection


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 60)
    informative = y[:, None] + rng.normal(0, 0.4, (120, 3))
    return np.hstack([informative, rng.normal(size=(120, 27))]), y


def test_top_k_keeps_k_features_chosen_on_the_training_data() -> None:
    selected = with_selection(family("logreg"), "top_k", 3, "mean")
    assert (selected.name, selected.input_kind) == ("logreg+select", "features")
    assert selected.grid == {"model__clf__C": [0.01, 0.1, 1.0, 10.0]}
    X, y = _data()
    fitted = clone(selected.build(0)).fit(X, y)
    kept = fitted.named_steps["select"].get_support()
    assert kept.sum() == 3
    assert set(np.flatnonzero(kept)) == {0, 1, 2}  # the informative ones


def test_top_k_above_the_width_keeps_every_feature() -> None:
    X, y = _data()
    fitted = with_selection(family("svm"), "top_k", 100, "mean").build(0).fit(X, y)
    assert fitted.named_steps["select"].get_support().sum() == 30


def test_above_a_threshold_keeps_the_features_over_it() -> None:
    X, y = _data()
    fitted = with_selection(family("logreg"), "above", 5, "2*mean").build(0).fit(X, y)
    assert set(np.flatnonzero(fitted.named_steps["select"].get_support())) == {0, 1, 2}


def test_the_variant_pickles_with_the_model() -> None:
    import pickle

    X, y = _data()
    fitted = with_selection(family("logreg"), "top_k", 3, "mean").build(0).fit(X, y)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))


def test_an_image_family_cannot_select_features() -> None:
    with pytest.raises(ValueError, match="'cnn' takes image"):
        with_selection(family("cnn"), "top_k", 3, "mean")
