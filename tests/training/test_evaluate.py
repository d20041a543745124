"""evaluate(): exact values on hand cases, agreement with scikit-learn, bootstrap intervals, ECE, errors, PNG plots."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from conveyor.models.ece import chance_ece
from conveyor.training import evaluate as evaluate_module
from conveyor.training.evaluate import (
    Interval,
    Metrics,
    confusion_matrix_png,
    evaluate,
    expected_calibration_error,
    positive_class,
    roc_curve_png,
)

LABEL_METRICS = ("f1", "accuracy", "balanced_accuracy", "precision", "recall")

# Binary hand case, positive "pos": tp=3 (items 0-2), fn=1 (item 3), fp=2 (items 4, 5), tn=0.
HAND_CLASSES = ["neg", "pos"]
HAND_TRUE = ["pos", "pos", "pos", "pos", "neg", "neg"]
HAND_PRED = ["pos", "pos", "pos", "neg", "pos", "pos"]


def random_case(n: int, k: int, seed: int, signal: float = 1.0) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """Labels of k classes, probabilities that favour the true class, and the arg-max predictions."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i}" for i in range(k)]
    t = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), t] += signal
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    return [classes[i] for i in t], [classes[i] for i in proba.argmax(axis=1)], proba, classes


# ---------------------------------------------------------------------------------------------------- positive_class


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (["yes", "no"], "yes"),
        (["no", "yes"], "yes"),
        (["tumour", "no_tumour"], "tumour"),
        (["negative", "positive"], "positive"),
        (["a", "b", "c"], None),
    ],
)
def test_positive_class_default_is_last_sorted_for_binary_and_none_for_multiclass(
    classes: list[str], expected: str | None
) -> None:
    assert positive_class(classes) == expected


def test_positive_class_configured_wins() -> None:
    assert positive_class(["no", "yes"], "no") == "no"


def test_positive_class_configured_not_a_class_names_the_classes() -> None:
    with pytest.raises(ValueError, match=r"'maybe' is not one of the classes \['no', 'yes'\]"):
        positive_class(["no", "yes"], "maybe")


# ------------------------------------------------------------------------------------------------- point estimates


def test_binary_hand_case_exact_values() -> None:
    m = evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, n_boot=0)
    assert m.precision == 3 / 5
    assert m.recall == 3 / 4
    assert m.f1 == pytest.approx(2 / 3, abs=1e-15)  # 2 tp / (2 tp + fp + fn) = 6 / 9
    assert m.accuracy == 3 / 6
    assert m.balanced_accuracy == (3 / 4 + 0 / 2) / 2
    assert m.n == 6


def test_binary_configured_positive_scores_that_class() -> None:
    # "neg" is predicted once (item 3, truly "pos") and never right: tp=0.
    m = evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, positive="neg", n_boot=0)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)
    assert m.accuracy == 0.5  # label-free metrics do not depend on the positive class


def test_binary_metrics_match_sklearn() -> None:
    y_true, y_pred, proba, classes = random_case(300, 2, seed=1)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=0)
    pos = "class_1"
    assert m.f1 == pytest.approx(skm.f1_score(y_true, y_pred, pos_label=pos), abs=1e-12)
    assert m.precision == pytest.approx(skm.precision_score(y_true, y_pred, pos_label=pos), abs=1e-12)
    assert m.recall == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=pos), abs=1e-12)
    assert m.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    assert m.roc_auc == pytest.approx(skm.roc_auc_score(np.array(y_true) == pos, proba[:, 1]), abs=1e-12)


def test_binary_roc_auc_with_tied_scores_matches_sklearn() -> None:
    y_true, y_pred, proba, classes = random_case(200, 2, seed=2)
    coarse = np.round(proba, 1)  # many ties, counted one half each
    m = evaluate(y_true, y_pred, coarse, classes, n_boot=0)
    assert m.roc_auc == pytest.approx(skm.roc_auc_score(np.array(y_true) == "class_1", coarse[:, 1]), abs=1e-12)


def test_multiclass_macro_metrics_match_sklearn() -> None:
    y_true, y_pred, proba, classes = random_case(400, 4, seed=3)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=0)
    assert m.f1 == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert m.precision == pytest.approx(skm.precision_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert m.recall == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert m.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred), abs=1e-12)


def test_multiclass_roc_auc_is_sklearn_one_vs_rest_macro() -> None:
    y_true, y_pred, proba, classes = random_case(400, 3, seed=4)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=0)
    expected = skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes)
    assert m.roc_auc == pytest.approx(expected, abs=1e-12)


def test_multiclass_macro_averages_over_classes_seen_like_sklearn_default() -> None:
    # "c" occurs in neither y_true nor y_pred: scikit-learn's default labels leave it out of the macro average.
    y_true = ["a", "a", "b", "b", "b"]
    y_pred = ["a", "b", "b", "b", "a"]
    m = evaluate(y_true, y_pred, None, ["a", "b", "c"], n_boot=0)
    assert m.f1 == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert m.recall == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-15)


def test_roc_auc_and_ece_are_none_without_probabilities() -> None:
    m = evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, n_boot=50)
    assert m.roc_auc is None
    assert m.ece is None
    assert "roc_auc" not in m.intervals


def test_roc_auc_is_none_with_one_class_in_y_true() -> None:
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = evaluate(["pos"] * 3, ["pos", "neg", "pos"], proba, HAND_CLASSES, n_boot=50)
    assert m.roc_auc is None
    assert "roc_auc" not in m.intervals
    assert m.ece is not None


# ------------------------------------------------------------------------------------------------------- bootstrap


def test_intervals_contain_the_point_estimates() -> None:
    y_true, y_pred, proba, classes = random_case(300, 2, seed=5)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=500, seed=0)
    assert set(m.intervals) == {*LABEL_METRICS, "roc_auc"}
    for name, interval in m.intervals.items():
        assert interval.low < getattr(m, name) < interval.high, name


def test_intervals_are_deterministic_per_seed() -> None:
    y_true, y_pred, proba, classes = random_case(200, 3, seed=6)
    first = evaluate(y_true, y_pred, proba, classes, n_boot=200, seed=7)
    again = evaluate(y_true, y_pred, proba, classes, n_boot=200, seed=7)
    other = evaluate(y_true, y_pred, proba, classes, n_boot=200, seed=8)
    assert first == again
    assert first.intervals != other.intervals


def test_perfect_classifier_has_intervals_of_one() -> None:
    y_true = ["a", "b", "c"] * 20
    proba = np.eye(3)[[0, 1, 2] * 20]
    m = evaluate(y_true, y_true, proba, ["a", "b", "c"], n_boot=300)
    assert {name: (i.low, i.high) for name, i in m.intervals.items()} == {
        name: (1.0, 1.0) for name in (*LABEL_METRICS, "roc_auc")
    }


def test_degenerate_resamples_give_no_warning() -> None:
    # One positive in three items: many resamples have no positive (0/0 precision, recall, undefined ROC-AUC).
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate(["neg", "neg", "pos"], ["neg", "pos", "pos"], proba, HAND_CLASSES, n_boot=500)
    assert all(0.0 <= i.low <= i.high <= 1.0 for i in m.intervals.values())
    assert m.intervals["recall"].low == 0.0  # resamples without the positive item count recall 0/0 as 0


def test_interval_of_binary_roc_auc_matches_sklearn_on_a_resample() -> None:
    # The weighted rank formula used per resample equals scikit-learn's AUC with multiplicities as sample weights.
    y_true, _, proba, classes = random_case(80, 2, seed=9)
    t = np.array([classes.index(y) for y in y_true])
    weights = evaluate_module._resample_weights(np.random.default_rng(0), 80, 5)
    values = evaluate_module._Auc(t == 1, np.round(proba[:, 1], 1))(weights)
    expected = [skm.roc_auc_score(t == 1, np.round(proba[:, 1], 1), sample_weight=weights[:, b]) for b in range(5)]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)


def test_chunking_the_resamples_does_not_change_the_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    y_true, y_pred, proba, classes = random_case(100, 2, seed=10)
    whole = evaluate(y_true, y_pred, proba, classes, n_boot=300, seed=1)
    monkeypatch.setattr(evaluate_module, "_CHUNK_CELLS", 100 * 7)  # chunks of 7 resamples
    assert evaluate(y_true, y_pred, proba, classes, n_boot=300, seed=1) == whole


def test_no_bootstrap_gives_no_intervals() -> None:
    assert evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, n_boot=0).intervals == {}


# ------------------------------------------------------------------------------------------------------------- ECE


def test_ece_constant_confidence_half_right() -> None:
    proba = np.array([[0.8, 0.2], [0.8, 0.2], [0.2, 0.8], [0.2, 0.8]])  # confidence 0.8 everywhere
    y_true = ["neg", "pos", "pos", "neg"]  # arg-max right on items 0 and 2
    assert expected_calibration_error(y_true, proba, HAND_CLASSES) == pytest.approx(0.3, abs=1e-12)


def test_ece_two_bins() -> None:
    # 0.9 right: |1 - 0.9| = 0.1 in bin (0.8, 0.9]; 0.6 wrong: |0 - 0.6| = 0.6 in bin (0.5, 0.6]; each weighs 1/2.
    proba = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(["neg", "pos"], proba, HAND_CLASSES) == pytest.approx(0.35, abs=1e-12)


def test_evaluate_reports_the_same_ece() -> None:
    y_true, y_pred, proba, classes = random_case(100, 3, seed=11)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=0)
    assert m.ece == expected_calibration_error(y_true, proba, classes)


def test_chance_ece_of_one_item_at_confidence_0_9_is_0_1() -> None:
    # Right in 90% of the draws (ECE |1 - 0.9|), wrong in 10% (ECE 0.9): the median is 0.1.
    assert chance_ece(np.array([0.9])) == pytest.approx(0.1, abs=1e-12)


def test_chance_ece_of_certain_items_is_0() -> None:
    assert chance_ece(np.ones(45)) == 0.0


def test_chance_ece_shrinks_as_the_set_grows() -> None:
    small, large = chance_ece(np.full(45, 0.8)), chance_ece(np.full(4500, 0.8))
    assert large < small / 5
    assert large < 0.01


def test_chance_ece_needs_an_item() -> None:
    with pytest.raises(ValueError, match="no confidences"):
        chance_ece(np.array([]))


@pytest.mark.parametrize("confidence", [[0.5, 1.2], [0.5, np.nan], [-0.1]])
def test_chance_ece_refuses_what_is_not_a_probability(confidence: list[float]) -> None:
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        chance_ece(np.array(confidence))


def test_evaluate_reports_the_chance_ece_of_its_confidences() -> None:
    y_true, y_pred, proba, classes = random_case(100, 3, seed=11)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=0)
    assert m.ece_chance == chance_ece(proba.max(axis=1))
    assert m.as_dict()["ece_chance"] == m.ece_chance


# --------------------------------------------------------------------------------------------------------- as_dict


def test_as_dict_is_flat_with_prefix_and_intervals() -> None:
    y_true, y_pred, proba, classes = random_case(50, 2, seed=12)
    m = evaluate(y_true, y_pred, proba, classes, n_boot=20)
    flat = m.as_dict("test")
    assert flat == m.as_dict("test_")
    assert flat["test_f1"] == m.f1
    assert (flat["test_f1_low"], flat["test_f1_high"]) == (m.intervals["f1"].low, m.intervals["f1"].high)
    assert flat["test_roc_auc_high"] == m.intervals["roc_auc"].high
    assert flat["test_ece"] == m.ece
    assert flat["test_n"] == 50.0
    assert "test_ece_low" not in flat


def test_as_dict_omits_none_values() -> None:
    flat = evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, n_boot=0).as_dict()
    assert set(flat) == {*LABEL_METRICS, "n"}


def test_metrics_is_frozen() -> None:
    m = Metrics(1.0, 1.0, 1.0, 1.0, 1.0, None, {"f1": Interval(1.0, 1.0)}, None, 1)
    with pytest.raises(AttributeError):
        m.f1 = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------- errors


def test_error_lengths_differ() -> None:
    with pytest.raises(ValueError, match=r"y_true and y_pred: lengths differ \(6 and 5\)"):
        evaluate(HAND_TRUE, HAND_PRED[:5], None, HAND_CLASSES)


def test_error_unknown_label_names_it_and_the_classes() -> None:
    with pytest.raises(ValueError, match=r"y_pred: label\(s\) 'maybe' not among the classes \['neg', 'pos'\]"):
        evaluate(HAND_TRUE, [*HAND_PRED[:5], "maybe"], None, HAND_CLASSES)


def test_error_proba_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"proba: expected shape \(6, 2\).*got \(6, 3\)"):
        evaluate(HAND_TRUE, HAND_PRED, np.full((6, 3), 1 / 3), HAND_CLASSES)


def test_error_proba_not_probabilities() -> None:
    with pytest.raises(ValueError, match=r"proba: expected probabilities in \[0, 1\]"):
        evaluate(HAND_TRUE, HAND_PRED, np.full((6, 2), 2.0), HAND_CLASSES)


def test_error_positive_not_a_class() -> None:
    with pytest.raises(ValueError, match=r"positive class 'yes' is not one of the classes \['neg', 'pos'\]"):
        evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, positive="yes")


@pytest.mark.parametrize(
    ("classes", "message"),
    [(["only"], "at least two class names"), (["a", "a", "b"], r"names must be unique, \['a'\] repeated")],
)
def test_error_bad_classes(classes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(["a"], ["a"], None, classes)


def test_error_empty() -> None:
    with pytest.raises(ValueError, match="y_true: empty"):
        evaluate([], [], None, HAND_CLASSES)


def test_error_negative_n_boot() -> None:
    with pytest.raises(ValueError, match="n_boot: expected 0 or more"):
        evaluate(HAND_TRUE, HAND_PRED, None, HAND_CLASSES, n_boot=-1)


# ----------------------------------------------------------------------------------------------------------- plots


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100


def test_confusion_matrix_png(tmp_path: Path) -> None:
    path = confusion_matrix_png(HAND_TRUE, HAND_PRED, HAND_CLASSES, tmp_path / "plots" / "cm.png", title="test")
    assert path == tmp_path / "plots" / "cm.png"
    assert_png(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cm.png"]  # no partial file left behind


def test_roc_curve_png_binary_and_multiclass(tmp_path: Path) -> None:
    for k in (2, 4):
        y_true, _, proba, classes = random_case(60, k, seed=13)
        assert_png(roc_curve_png(y_true, proba, classes, tmp_path / f"roc{k}.png"))


def test_roc_curve_png_needs_two_classes_in_y_true(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only class 'pos'"):
        roc_curve_png(["pos", "pos"], np.array([[0.1, 0.9], [0.4, 0.6]]), HAND_CLASSES, tmp_path / "roc.png")


def test_import_loads_neither_matplotlib_nor_sklearn() -> None:
    code = (
        "import sys, conveyor.training.evaluate, conveyor.training.baselines; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'sklearn'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
