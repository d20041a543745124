"""A classifier's per-class scores, whatever kind it is: what calibration maps, and what a stack combines."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["decision_scores"]


def decision_scores(estimator: Any, X: Any) -> np.ndarray:
    """The estimator's per-class scores, (n, classes), as scikit-learn's calibration takes them: its decision function
    when it has one (a binary one becomes ``[-d, d]``), else its probabilities."""
    if not hasattr(estimator, "decision_function"):
        return np.asarray(estimator.predict_proba(X), dtype=np.float64)
    decision = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if decision.ndim == 1:
        return np.column_stack([-decision, decision])
    return decision
