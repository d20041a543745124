"""Out-of-distribution inputs: far from the training data in the champion's feature space.

The distance is the Mahalanobis distance to the training rows' centre, after standardising each column and with the
Ledoit-Wolf shrunk covariance (well defined when there are more columns than rows). An input is out of distribution
when its distance exceeds the ``quantile`` of the training rows' own distances. Fitting costs O(n d^2) and scoring
O(d^2) per input, so it grows with the reference like the drift tests do, and no more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conveyor.errors import ConveyorError

__all__ = ["OODDetector"]


def _fit_gaussian(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    precision = LedoitWolf(assume_centered=True).fit((X - mean) / scale).precision_
    return mean, scale, precision


def _mahalanobis(Z: np.ndarray, precision: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(((Z @ precision) * Z).sum(axis=1), 0.0))


@dataclass
class OODDetector:
    """Fitted on the reference matrix; ``distances`` and ``flags`` of new rows.

    Args:
        quantile: of the reference distances, the threshold beyond which a row is out of distribution.
        folds: folds of the out-of-fold reference distances.
    """

    quantile: float = 0.99
    folds: int = 5

    def fit(self, reference: np.ndarray) -> OODDetector:
        """Learn centre, scale, shrunk precision and threshold from ``reference`` (n, d) float.

        The threshold is the ``quantile`` of out-of-fold distances (each fifth of the rows measured against a model fit
        on the other four fifths): a row's distance to a model fitted on itself is optimistic, and new inputs would be
        flagged far too often against it.

        Raises:
            ConveyorError: fewer than 3 rows, or no column.
        """
        X = np.asarray(reference, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 3 or X.shape[1] == 0:
            raise ConveyorError(f"out-of-distribution check: need a reference of at least 3 rows, got {X.shape}")
        fill = np.nanmedian(X, axis=0)
        self.fill_ = np.where(np.isnan(fill), 0.0, fill)
        X = self._filled(X)
        folds = min(self.folds, X.shape[0])
        order = np.random.default_rng(0).permutation(X.shape[0])
        held_out = []
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            mean, scale, precision = _fit_gaussian(X[train])
            held_out.append(_mahalanobis((X[test] - mean) / scale, precision))
        self.mean_, self.scale_, self.precision_ = _fit_gaussian(X)
        self.threshold_ = float(np.quantile(np.concatenate(held_out), self.quantile))
        return self

    def _filled(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(X), self.fill_, X)

    def _distances(self, Z: np.ndarray) -> np.ndarray:
        return _mahalanobis(Z, self.precision_)

    def distances(self, current: np.ndarray) -> np.ndarray:
        """Distance of each row of ``current`` (m, d) to the reference."""
        X = self._filled(np.asarray(current, dtype=np.float64))
        if X.ndim != 2 or X.shape[1] != self.mean_.shape[0]:
            raise ConveyorError(
                f"out-of-distribution check: expected rows of {self.mean_.shape[0]} columns, got {X.shape}"
            )
        return self._distances((X - self.mean_) / self.scale_)

    def flags(self, current: np.ndarray) -> np.ndarray:
        """True for each row beyond the threshold."""
        return self.distances(current) > self.threshold_
