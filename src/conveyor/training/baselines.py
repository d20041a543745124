"""The naive labellers a model must beat, scored with the same :func:`~conveyor.training.evaluate.evaluate`.

A model that does not beat a labeller which never looks at the image has learnt nothing usable, however good its F1
looks on an imbalanced set. Three baselines, each giving labels and probabilities for the items of ``y_current``:

* ``dummy_by_reference``: labels drawn at random with the class frequencies of ``y_reference`` (the training labels);
  probability rows are those frequencies.
* ``dummy_by_current``: labels drawn at random with the class frequencies of ``y_current`` (the labels being
  evaluated, so it knows the test prevalence, which no deployed model can); probability rows are those frequencies.
* ``majority``: always the most frequent class of ``y_reference`` (ties: the first in ``classes`` order); probability
  rows one-hot. scikit-learn's ``DummyClassifier(strategy="most_frequent")``; no Evidently counterpart.

The two dummies are Evidently 0.7's "Dummy" classification quality (``DummyF1Score``, ``DummyAccuracy``... in
``evidently/metrics/classification.py``, computed by ``ClassificationDummyMetric`` in
``evidently/legacy/metrics/classification_performance/classification_dummy_metric.py``): "dummy by current" draws
``len(current)`` labels with ``np.random.choice`` and ``p`` = the current target's ``value_counts(normalize=True)``
(seed 0), "dummy by reference" does the same with the reference target's frequencies (seed 1), and both are scored
against the current target. Where Evidently differs in a detail:

* it reports the dummies' ROC-AUC as a constant 0.5 and computes their log-loss from uniform 1/k probabilities; here
  the probability rows are the frequencies, whose constant scores give ROC-AUC exactly 0.5 as well (every pair is a
  tie), and an ECE of |top frequency - share of that class in y_current| (0 for ``dummy_by_current``; for
  ``dummy_by_reference`` it measures the prior shift), which Evidently does not report;
* for a binary model with a probability threshold other than 0.5 it rescales the dummies' precision and recall; at
  the default threshold 0.5 (arg-max labels), the only one here, the rescaling is the identity;
* it draws with the legacy global ``np.random.seed``; here each dummy has its own ``numpy.random.Generator`` stream
  spawned from ``seed``, so the exact draws differ from Evidently's while their distribution is the same.
"""

from __future__ import annotations

import numpy as np

from conveyor.training.evaluate import Labels, Metrics, _check_classes, _encode, evaluate

__all__ = ["BASELINES", "baseline_predictions", "class_frequencies", "evaluate_baselines"]

BASELINES = ("dummy_by_reference", "dummy_by_current", "majority")
"""The baseline names, in the order :func:`baseline_predictions` returns them."""


def class_frequencies(labels: Labels, classes: Labels) -> np.ndarray:
    """Share of each class among ``labels``, in ``classes`` order (0 for an absent class); sums to 1.

    Raises:
        ValueError: ``labels`` is empty or holds a label not in ``classes``.
    """
    names = _check_classes(classes)
    codes = _encode(labels, names, "labels")
    if len(codes) == 0:
        raise ValueError("labels: empty, class frequencies are undefined")
    return np.bincount(codes, minlength=len(names)) / len(codes)


def baseline_predictions(
    y_reference: Labels,
    y_current: Labels,
    classes: Labels,
    *,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Labels and probabilities of each baseline for the items of ``y_current``.

    Args:
        y_reference: the training labels (the frequencies a deployed dummy could know).
        y_current: the labels of the set being evaluated; only their number and frequencies are used.
        classes: every class name, the column order of the probabilities.
        seed: seeds the random draws; the same inputs and seed give the same labels. The two dummies draw from
            independent streams spawned from it.

    Returns:
        ``{name: (y_pred, proba)}`` for each name in :data:`BASELINES`: ``y_pred`` an object array of class names,
        shape (len(y_current),); ``proba`` float64, shape (len(y_current), len(classes)).

    Raises:
        ValueError: ``y_reference`` is empty, ``classes`` is malformed, or a label is not in ``classes``.
    """
    names = _check_classes(classes)
    reference = _encode(y_reference, names, "y_reference")
    current = _encode(y_current, names, "y_current")
    if len(reference) == 0:
        raise ValueError("y_reference: empty, the baselines need the training labels' frequencies")
    k, n = len(names), len(current)
    labels = np.asarray(names, dtype=object)
    by_reference = np.bincount(reference, minlength=k) / len(reference)
    by_current = np.bincount(current, minlength=k) / n if n else by_reference
    reference_stream, current_stream = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    def dummy(rng: np.random.Generator, frequencies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        drawn = rng.choice(k, size=n, p=frequencies)
        return labels[drawn], np.tile(frequencies, (n, 1))

    majority = int(np.argmax(np.bincount(reference, minlength=k)))  # argmax: first of the tied classes
    return {
        "dummy_by_reference": dummy(reference_stream, by_reference),
        "dummy_by_current": dummy(current_stream, by_current),
        "majority": (np.full(n, names[majority], dtype=object), np.tile(np.eye(k)[majority], (n, 1))),
    }


def evaluate_baselines(
    y_reference: Labels,
    y_current: Labels,
    classes: Labels,
    *,
    positive: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Metrics]:
    """Score every baseline on ``y_current`` with :func:`~conveyor.training.evaluate.evaluate`.

    ``seed`` seeds both the baselines' draws and the bootstrap, ``positive`` and ``n_boot`` are passed on; use the
    same values as for the model so that the numbers compare.

    Returns:
        ``{name: Metrics}`` for each name in :data:`BASELINES`.
    """
    predictions = baseline_predictions(y_reference, y_current, classes, seed=seed)
    return {
        name: evaluate(y_current, y_pred, proba, classes, positive=positive, n_boot=n_boot, seed=seed)
        for name, (y_pred, proba) in predictions.items()
    }
