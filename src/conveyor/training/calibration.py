"""Calibration from out-of-fold scores: the winner is fitted once on all training data, and its confidence is
calibrated on the cross-validated scores the search already computed for it.

``CalibratedClassifierCV(cv=k, ensemble=False)`` gives the same kind of model but fits the classifier k + 1 more times
to get those scores; on a large table that refitting cost more than the whole search of the small candidates.
The maps are scikit-learn's: Platt's sigmoid (with Platt's smoothed targets, fitted as scikit-learn fits it) or
isotonic regression, on the decision function when the classifier has one (else its probabilities), one map per
class (one-vs-rest) for more than two classes, the probabilities then normalised to sum to one.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from conveyor.models.scores import decision_scores

__all__ = ["OutOfFoldCalibrated", "decision_scores", "platt"]


def platt(scores: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid ``P(positive | s) = 1 / (1 + exp(a s + b))``, fitted as scikit-learn's ``sigmoid``
    calibration fits it: Platt's smoothed targets, scores over 30 rescaled, L-BFGS on the log loss."""
    from scipy.optimize import minimize

    F = np.asarray(scores, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(F)))) if len(F) and np.max(np.abs(F)) >= 30 else 1.0
    F = F / scale
    positive = np.asarray(target) > 0
    prior1 = float(positive.sum())
    prior0 = float(len(F) - prior1)
    T = np.where(positive, (prior1 + 1.0) / (prior1 + 2.0), 1.0 / (prior0 + 2.0))

    def loss_grad(ab: np.ndarray) -> tuple[float, np.ndarray]:
        raw = -(ab[0] * F + ab[1])  # log-odds of the positive class
        p = expit(raw)
        loss = float(np.sum(np.logaddexp(0.0, raw) - T * raw))
        g = p - T  # d loss / d raw
        return loss, np.array([-(g @ F), -g.sum()])

    start = np.array([0.0, np.log((prior0 + 1.0) / (prior1 + 1.0))])
    found = minimize(
        loss_grad, start, method="L-BFGS-B", jac=True, options={"gtol": 1e-6, "ftol": 64 * np.finfo(float).eps}
    )
    return float(found.x[0] / scale), float(found.x[1])


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
            else:
                self.maps_.append(platt(s, target))
        return self

    def _map(self, index: int, s: np.ndarray) -> np.ndarray:
        found = self.maps_[index]
        if self.method == "isotonic":
            return np.asarray(found.predict(s), dtype=np.float64)
        a, b = found
        return np.asarray(expit(-(a * s + b)), dtype=np.float64)

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
