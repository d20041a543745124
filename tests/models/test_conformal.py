"""Prediction sets: class-conditional split-conformal (crepes) with the exact sets of a known calibration, coverage
that holds on generated data, and a stratified, grouped calibration part."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.models.conformal import MondrianConformal, binomial_interval, calibration_part


def _calibrated() -> MondrianConformal:
    """Ten calibration cases per class whose true-class probabilities are 1.0, 0.9, ..., 0.1 (scores 0.0 ... 0.9)."""
    true_p = np.linspace(1.0, 0.1, 10)
    proba = np.vstack([np.column_stack([true_p, 1 - true_p]), np.column_stack([1 - true_p, true_p])])
    return MondrianConformal.fit(proba, [0] * 10 + [1] * 10, ["a", "b"])


def test_a_class_enters_the_set_when_enough_calibration_cases_are_as_strange() -> None:
    # At 0.8 a class stays while at least 2 of its 10 scores reach the image's (p = (count + 1) / 11 >= 0.2).
    sets = _calibrated().labelled_sets(np.array([[0.25, 0.75], [0.15, 0.85], [0.5, 0.5]]), 0.8)
    assert sets == [["b", "a"], ["b"], ["a", "b"]]


def test_a_higher_coverage_gives_sets_at_least_as_large() -> None:
    proba = np.random.default_rng(0).dirichlet([1, 1], size=200)
    conformal = _calibrated()
    assert np.all(conformal.sets(proba, 0.9) >= conformal.sets(proba, 0.8))


def test_coverage_holds_per_class_on_data_with_a_known_answer() -> None:
    """A classifier whose probabilities are the true ones (labels drawn from them), calibrated on 15,000 cases (so
    the calibration's own luck is small): every class's coverage on 6,000 new cases lies within its binomial interval
    of the 0.9 target."""
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        proba = rng.dirichlet([0.6, 0.6, 0.6], size=n)
        labels = (rng.random(n)[:, None] > proba.cumsum(axis=1)).sum(axis=1)
        return proba, labels

    conformal = MondrianConformal.fit(*draw(15_000), ["x", "y", "z"])
    report = conformal.evaluate(*draw(6000), 0.9)
    for name, found in report["per_class"].items():
        assert found["low"] <= 0.9 <= found["high"], (name, found)
    assert report["n"] == 6000 and 0 < report["singleton_share"] < 1


def test_the_report_counts_singletons_and_sizes() -> None:
    report = _calibrated().evaluate(np.array([[0.25, 0.75], [0.15, 0.85], [0.5, 0.5]]), [0, 1, 0], 0.8)
    assert (report["coverage"], report["singleton_share"], report["mean_size"]) == (1.0, 1 / 3, 5 / 3)
    found = report["per_class"]["b"]
    assert found == {"n": 1, "coverage": 1.0, "low": found["low"], "high": 1.0, "met": True, "always_in_set": False}
    assert found["low"] == pytest.approx(0.025)  # Clopper-Pearson: 1 success in 1 trial


def test_a_class_with_too_few_calibration_cases_for_the_coverage_is_in_every_set() -> None:
    """Ten cases per class: a finite threshold at 0.9 (needs 9), none at 0.95 (needs 19)."""
    conformal = _calibrated()
    assert conformal.always_in_set(0.9) == [] and conformal.always_in_set(0.95) == ["a", "b"]
    assert conformal.sets(np.array([[0.999, 0.001], [0.001, 0.999]]), 0.95).all()
    assert conformal.evaluate(np.array([[0.9, 0.1]]), [0], 0.95)["per_class"]["a"]["always_in_set"] is True


def test_the_calibration_survives_its_json() -> None:
    conformal = _calibrated()
    again = MondrianConformal.from_json(conformal.to_json())
    assert again.classes == ["a", "b"] and np.array_equal(again.scores, conformal.scores)
    assert np.array_equal(again.labels, conformal.labels)


def test_a_calibration_file_with_a_label_that_is_no_class_is_refused() -> None:
    with pytest.raises(ValueError, match="a label is no class"):
        MondrianConformal.from_json('{"classes": ["a"], "scores": [0.1], "labels": [3]}')


def test_a_calibration_file_without_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="field 'scores' missing"):
        MondrianConformal.from_json('{"classes": ["a"], "labels": [0]}')


def test_probabilities_of_another_number_of_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="probabilities of 3 classes for a model of 2"):
        _calibrated().sets(np.array([[0.2, 0.3, 0.5]]), 0.9)


@pytest.mark.parametrize("coverage", [0.0, 1.0])
def test_a_coverage_outside_zero_and_one_is_refused(coverage: float) -> None:
    with pytest.raises(ValueError, match="coverage must lie strictly between 0 and 1"):
        _calibrated().sets(np.array([[0.5, 0.5]]), coverage)


def test_the_clopper_pearson_interval_of_half() -> None:
    low, high = binomial_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.1871, 0.8129)  # type: ignore[arg-type]
    assert binomial_interval(0, 0) == (None, None)
    assert binomial_interval(10, 10)[1] == 1.0


def test_the_calibration_part_takes_its_share_of_each_class() -> None:
    keys = [f"{i:064x}" for i in range(80)]
    labels = [0] * 50 + [1] * 30
    held = calibration_part(keys, labels, None, 0.2)
    assert (held[:50].sum(), held[50:].sum()) == (10, 6)


def test_the_calibration_part_keeps_a_group_whole() -> None:
    keys = [f"{i:064x}" for i in range(40)]
    labels = [0, 1] * 20
    groups = [i // 4 for i in range(40)]  # ten patients of four images, two of each class
    held = calibration_part(keys, labels, groups, 0.25)
    for g in range(10):
        assert len(set(held[4 * g : 4 * g + 4].tolist())) == 1
    assert held.sum() == 12  # three whole patients: the targets (5 a, 5 b) are reached by the third
