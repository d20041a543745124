"""Baselines: exact frequencies, the majority tie rule, determinism, by-reference vs by-current, scores."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.training.baselines import BASELINES, baseline_predictions, class_frequencies, evaluate_baselines
from conveyor.training.evaluate import Metrics

CLASSES = ["a", "b", "c"]


def test_names_and_shapes() -> None:
    out = baseline_predictions(["a", "b"], ["a"] * 7, CLASSES)
    assert tuple(out) == BASELINES == ("dummy_by_reference", "dummy_by_current", "majority")
    for y_pred, proba in out.values():
        assert y_pred.shape == (7,)
        assert proba.shape == (7, 3)
        assert proba.dtype == np.float64
        assert set(y_pred.tolist()) <= set(CLASSES)


def test_class_frequencies_exact_with_absent_class_zero() -> None:
    np.testing.assert_array_equal(class_frequencies(["a", "a", "a", "b"], CLASSES), [0.75, 0.25, 0.0])


def test_dummy_proba_rows_are_the_frequencies() -> None:
    out = baseline_predictions(["a", "a", "a", "b"], ["b", "c"], CLASSES)
    np.testing.assert_array_equal(out["dummy_by_reference"][1], [[0.75, 0.25, 0.0]] * 2)
    np.testing.assert_array_equal(out["dummy_by_current"][1], [[0.0, 0.5, 0.5]] * 2)


def test_by_reference_uses_reference_and_by_current_uses_current_frequencies() -> None:
    current = ["a"] * 50 + ["b"] * 50
    out = baseline_predictions(["a"] * 10, current, CLASSES)
    assert set(out["dummy_by_reference"][0].tolist()) == {"a"}
    assert set(out["dummy_by_current"][0].tolist()) == {"a", "b"}


def test_dummy_draws_follow_the_frequencies() -> None:
    out = baseline_predictions(["a", "b", "b", "b"], ["c"] * 20_000, CLASSES, seed=3)
    y_pred = out["dummy_by_reference"][0]
    assert np.mean(y_pred == "b") == pytest.approx(0.75, abs=0.02)
    assert not np.any(y_pred == "c")  # frequency 0, never drawn


def test_majority_is_the_most_frequent_reference_class_one_hot() -> None:
    y_pred, proba = baseline_predictions(["c", "b", "c"], ["a", "b"], CLASSES)["majority"]
    assert y_pred.tolist() == ["c", "c"]
    np.testing.assert_array_equal(proba, [[0.0, 0.0, 1.0]] * 2)


@pytest.mark.parametrize(("classes", "expected"), [(["a", "b"], "a"), (["b", "a"], "b")])
def test_majority_tie_goes_to_the_first_in_classes_order(classes: list[str], expected: str) -> None:
    y_pred, _ = baseline_predictions(["b", "a", "b", "a"], ["a"], classes)["majority"]
    assert y_pred.tolist() == [expected]


def test_deterministic_per_seed() -> None:
    reference, current = ["a", "b", "c"] * 5, ["a", "b"] * 100
    first = baseline_predictions(reference, current, CLASSES, seed=1)
    again = baseline_predictions(reference, current, CLASSES, seed=1)
    other = baseline_predictions(reference, current, CLASSES, seed=2)
    for name in BASELINES:
        np.testing.assert_array_equal(first[name][0], again[name][0])
        np.testing.assert_array_equal(first[name][1], again[name][1])
    assert not np.array_equal(first["dummy_by_reference"][0], other["dummy_by_reference"][0])
    assert not np.array_equal(first["dummy_by_current"][0], other["dummy_by_current"][0])


def test_majority_accuracy_equals_majority_share() -> None:
    reference = ["healthy"] * 80 + ["tumour"] * 20
    current = ["healthy"] * 70 + ["tumour"] * 30
    m = evaluate_baselines(reference, current, ["healthy", "tumour"], n_boot=100)["majority"]
    assert m.accuracy == 0.7
    assert (m.f1, m.recall, m.precision) == (0.0, 0.0, 0.0)  # never predicts the positive class "tumour"
    assert m.balanced_accuracy == 0.5


def test_evaluate_baselines_scores_every_baseline_with_chance_roc_auc() -> None:
    reference = ["a"] * 30 + ["b"] * 10 + ["c"] * 10
    current = ["a"] * 20 + ["b"] * 20 + ["c"] * 10
    results = evaluate_baselines(reference, current, CLASSES, n_boot=100, seed=4)
    assert tuple(results) == BASELINES
    for m in results.values():
        assert isinstance(m, Metrics)
        assert m.n == 50
        assert m.roc_auc == 0.5  # constant scores: every positive-negative pair is a tie
    # Constant rows of the current frequencies are calibrated: top frequency 0.4 = the share of its class.
    assert results["dummy_by_current"].ece == pytest.approx(0.0, abs=1e-12)


def test_error_empty_reference() -> None:
    with pytest.raises(ValueError, match="y_reference: empty"):
        baseline_predictions([], ["a"], CLASSES)


def test_error_unknown_label_in_current() -> None:
    with pytest.raises(ValueError, match=r"y_current: label\(s\) 'z' not among the classes \['a', 'b', 'c'\]"):
        baseline_predictions(["a"], ["a", "z"], CLASSES)
