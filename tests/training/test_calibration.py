"""Calibration from out-of-fold scores equals CalibratedClassifierCV(ensemble=False) on the same folds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

from conveyor.training.calibration import OutOfFoldCalibrated, decision_scores


def out_of_fold(estimator: Any, X: np.ndarray, y: np.ndarray, cv: StratifiedKFold, classes: int) -> np.ndarray:
    scores = np.zeros((len(y), classes))
    for train, held_out in cv.split(X, y):
        scores[held_out] = decision_scores(clone(estimator).fit(X[train], y[train]), X[held_out])
    return scores


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize(
    ("estimator", "classes"),
    [
        (LogisticRegression(max_iter=1000), 2),
        (SVC(), 2),
        (RandomForestClassifier(n_estimators=20, random_state=0), 2),
        (LogisticRegression(max_iter=1000), 3),
    ],
    ids=["logreg", "svm (decision function only)", "forest (probabilities only)", "logreg, three classes"],
)
def test_out_of_fold_calibration_equals_scikit_learns(estimator: Any, classes: int, method: str) -> None:
    X, y = make_classification(n_samples=240, n_features=8, n_informative=5, n_classes=classes, random_state=1)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    reference = CalibratedClassifierCV(clone(estimator), method=method, cv=cv, ensemble=False).fit(X, y)
    ours = OutOfFoldCalibrated(clone(estimator).fit(X, y), method=method)  # type: ignore[arg-type]
    ours.fit(out_of_fold(estimator, X, y, cv, classes), y)
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), rtol=0, atol=1e-6)


def test_scores_must_match_the_labels() -> None:
    with pytest.raises(ValueError, match=r"scores must be \(n, classes\) with n = len\(y\) = 3"):
        OutOfFoldCalibrated(LogisticRegression()).fit(np.zeros((2, 2)), np.array([0, 1, 0]))
