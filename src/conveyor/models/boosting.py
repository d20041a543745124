"""Histogram gradient boosting with balanced class weights that bins its features in linear time, and that still
splits on a small training set.

scikit-learn (since 1.6) fits the feature bins on weighted quantiles when the fit has sample weights, which
``class_weight="balanced"`` always gives it, and it computes them one percentile at a time (255 sorts of every
column). On a wide feature table that binning costs ten times the boosting itself: measured 19 s against 2 s for
3,600 x 400. Binning on the unweighted quantiles, as LightGBM does, leaves the class weights where they matter (in
the loss: every gradient and hessian stays weighted) and makes the fit as fast as an unweighted one.

scikit-learn's leaf minimum of 20 images also leaves a tree on a small training set (a race's first round, a fold of
the demo's 96 training images) without a single split: every image gets the same class, F1 0.000. The leaf minimum
used is at most an eighth of the training images.
"""

from __future__ import annotations

from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier

__all__ = ["BalancedHistGradientBoosting"]


class BalancedHistGradientBoosting(HistGradientBoostingClassifier):
    """``HistGradientBoostingClassifier`` whose bin edges are the unweighted quantiles of the training features.

    Everything else, the weighted loss included, is scikit-learn's own; the parameters are the same.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> BalancedHistGradientBoosting:
        requested = int(self.min_samples_leaf)  # type: ignore[has-type]
        self.min_samples_leaf = max(1, min(requested, len(X) // 8))
        try:
            return super().fit(X, y, sample_weight)
        finally:
            self.min_samples_leaf = requested  # the parameter stays what was asked (get_params, clone)

    def _bin_data(self, X: Any, sample_weight: Any, is_training_data: bool) -> Any:
        return super()._bin_data(X, None, is_training_data)
