"""Calibration from out-of-fold scores: the winner is fitted once on all training data, and its confidence is
calibrated on the cross-validated scores the search already computed for it.

``CalibratedClassifierCV(cv=k, ensemble=False)`` gives the same kind of model but fits the classifier k + 1 more times
to get those scores; on a large table that refitting cost more than the whole search of the small candidates.
The maps are scikit-learn's: Platt's sigmoid (a logistic regression on the score) or isotonic regression, one per
class (one-vs-rest) for more than two classes, the probabilities then normalised to sum to one.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["OutOfFoldCalibrated", "decision_scores"]


def decision_scores(estimator: Any, X: Any) -> np.ndarray:
    """The estimator's per-class scores, (n, classes): probabilities when it has them, else its decision function
    (one column per class; a binary decision function becomes ``[-d, d]``)."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(X), dtype=np.float64)
    decision = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if decision.ndim == 1:
        return np.column_stack([-decision, decision])
    return decision


class OutOfFoldCalibrated(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose scores are mapped to calibrated probabilities.

    Parameters
    ----------
    estimator : classifier
        Already fitted on all the training data (used as it is, never refitted).
    method : {"sigmoid", "isotonic"}
        The calibration map.

    ``fit(scores, y)`` takes the out-of-fold scores of the same kind of classifier (:func:`decision_scores` of the
    fold models on their held-out parts), with ``y`` encoded as ``0 .. classes-1``; ``predict_proba(X)`` scores X
    with ``estimator`` and applies the maps.
    """

    def __init__(self, estimator: Any = None, method: Literal["sigmoid", "isotonic"] = "sigmoid") -> None:
        self.estimator = estimator
        self.method = method

    def fit(self, scores: np.ndarray, y: np.ndarray) -> OutOfFoldCalibrated:
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        scores = np.asarray(scores, dtype=np.float64)
        y = np.asarray(y)
        if scores.ndim != 2 or scores.shape[0] != len(y):
            raise ValueError(f"scores must be (n, classes) with n = len(y) = {len(y)}, got {scores.shape}")
        self.classes_ = np.arange(scores.shape[1])
        columns = [1] if scores.shape[1] == 2 else list(range(scores.shape[1]))
        self.maps_: list[Any] = []
        for column in columns:
            target = (y == column).astype(int)
            s = scores[:, column]
            if self.method == "isotonic":
                self.maps_.append(IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, target))
            elif len(np.unique(target)) < 2:  # a class absent from the scores: constant probability
                self.maps_.append(float(target.mean()))
            else:
                self.maps_.append(LogisticRegression(C=1e6).fit(s.reshape(-1, 1), target))
        return self

    def _map(self, index: int, s: np.ndarray) -> np.ndarray:
        found = self.maps_[index]
        if isinstance(found, float):
            return np.full(len(s), found)
        if self.method == "isotonic":
            return np.asarray(found.predict(s), dtype=np.float64)
        return np.asarray(found.predict_proba(s.reshape(-1, 1))[:, 1], dtype=np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "maps_")
        scores = decision_scores(self.estimator, X)
        if scores.shape[1] == 2:
            positive = self._map(0, scores[:, 1])
            return np.column_stack([1.0 - positive, positive])
        proba = np.column_stack([self._map(i, scores[:, i]) for i in range(scores.shape[1])])
        totals = proba.sum(axis=1, keepdims=True)
        uniform = np.full_like(proba, 1.0 / proba.shape[1])
        return np.where(totals > 0, proba / np.where(totals > 0, totals, 1.0), uniform)

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_[self.predict_proba(X).argmax(axis=1)])
