"""Top-label expected calibration error, shared by the CNN's temperature scaling and the evaluation of every model."""

from __future__ import annotations

import numpy as np

__all__ = ["top_label_ece"]


def top_label_ece(proba: np.ndarray, codes: np.ndarray, n_bins: int = 10) -> float:
    """Over ``n_bins`` equal-width confidence bins ``(b/n, (b+1)/n]`` (0 in the first), the sample-weighted mean of
    |accuracy - mean confidence|, the confidence being the top probability and correct meaning its class (the first
    on a tie) is ``codes`` (class indices)."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == codes).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.intp) - 1, 0, n_bins - 1)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / len(codes))
