"""Permutation importance: a feature the model uses drops the metric when shuffled, noise does not."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from conveyor.training.evaluate import Scorer
from conveyor.training.importance import group_of, permutation_importance


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticRegression, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 100)
    signal = y + rng.normal(0, 0.3, 200)
    X = np.column_stack([signal, rng.normal(size=200), rng.normal(size=200), rng.normal(size=200)])
    columns = ["stats__mean", "stats__noise", "betti__a", "betti__b"]
    return LogisticRegression().fit(X, y), X, y, columns


def test_the_feature_the_model_uses_ranks_first_and_noise_near_zero(fitted) -> None:  # type: ignore[no-untyped-def]
    model, X, y, columns = fitted
    result = permutation_importance(
        model.predict_proba, X, y, columns, Scorer("balanced_accuracy", 2, 1), default_group="all", repeats=5
    )
    assert result.baseline > 0.9
    assert result.features["feature"].iloc[0] == "stats__mean"
    assert result.features["drop"].iloc[0] > 0.3
    assert result.features.set_index("feature").loc[["stats__noise", "betti__a", "betti__b"], "drop"].abs().max() < 0.05
    assert result.groups["group"].tolist() == ["stats", "betti"]
    assert result.groups["features"].tolist() == [2, 2]
    assert result.not_computed == 0


def test_the_per_feature_budget_goes_to_the_most_important_group_first(fitted) -> None:  # type: ignore[no-untyped-def]
    model, X, y, columns = fitted
    result = permutation_importance(
        model.predict_proba, X, y, columns, Scorer("accuracy", 2, 1), default_group="all", repeats=2, max_features=2
    )
    assert sorted(result.features["feature"]) == ["stats__mean", "stats__noise"]
    assert result.not_computed == 2


def test_the_same_seed_gives_the_same_importance(fitted) -> None:  # type: ignore[no-untyped-def]
    model, X, y, columns = fitted
    scorer = Scorer("f1", 2, 1)
    first = permutation_importance(model.predict_proba, X, y, columns, scorer, default_group="all", seed=3)
    second = permutation_importance(model.predict_proba, X, y, columns, scorer, default_group="all", seed=3)
    assert first.features.equals(second.features)


def test_a_column_without_a_prefix_belongs_to_the_single_extractor() -> None:
    assert (group_of("landscape__h0_l1", "all"), group_of("h0_l1", "landscape")) == ("landscape", "landscape")


def test_names_must_match_the_width(fitted) -> None:  # type: ignore[no-untyped-def]
    model, X, y, _ = fitted
    with pytest.raises(ValueError, match="3 names for 4 features"):
        permutation_importance(model.predict_proba, X, y, ["a", "b", "c"], Scorer("f1", 2, 1), default_group="x")


def test_a_spent_budget_stops_the_per_feature_pass_but_not_the_groups(fitted) -> None:  # type: ignore[no-untyped-def]
    model, X, y, columns = fitted
    result = permutation_importance(
        model.predict_proba, X, y, columns, Scorer("f1", 2, 1), default_group="all", budget_s=1e-9
    )
    assert (len(result.groups), len(result.features), result.not_computed) == (2, 0, 4)
