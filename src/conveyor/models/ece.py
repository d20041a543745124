"""Top-label expected calibration error, shared by the CNN's temperature scaling and the evaluation of every model."""

from __future__ import annotations

import numpy as np

__all__ = ["chance_ece", "top_label_ece"]


def top_label_ece(proba: np.ndarray, codes: np.ndarray, n_bins: int = 10) -> float:
    """Over ``n_bins`` equal-width confidence bins ``(b/n, (b+1)/n]`` (0 in the first), the sample-weighted mean of
    |accuracy - mean confidence|, the confidence being the top probability and correct meaning its class (the first
    on a tie) is ``codes`` (class indices)."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == codes).astype(np.float64)
    bins, confidence_sum = _binned(confidence, n_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / len(codes))


_CHUNK_CELLS = 2_000_000  # (draw x item) cells at a time: memory stays ~tens of MB on any test split


def chance_ece(confidence: np.ndarray, n_bins: int = 10, draws: int = 200, seed: int = 0) -> float:
    """The top-label ECE a perfectly calibrated model with these confidences shows by chance alone: the median over
    ``draws`` simulations in which each item is right with probability equal to its confidence.

    An ECE is an average over few items per bin, so it is never 0 on a finite set: on the 45 test images of the
    yes/no MRI set, the network's confidences give 0.073. An ECE near this value is as small as the set can tell.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    n = confidence.size
    if n == 0:
        raise ValueError("chance_ece: no confidences")
    if not np.all((confidence >= 0.0) & (confidence <= 1.0)):  # NaN fails too
        raise ValueError("chance_ece: confidences must be probabilities in [0, 1]")
    bins, confidence_sum = _binned(confidence, n_bins)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    eces = []
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        correct = (rng.random((size, n)) < confidence).astype(np.float64)
        keys = (bins + n_bins * np.arange(size)[:, None]).ravel()
        correct_sum = np.bincount(keys, weights=correct.ravel(), minlength=size * n_bins).reshape(size, n_bins)
        eces.append(np.abs(correct_sum - confidence_sum).sum(axis=1) / n)
    return float(np.median(np.concatenate(eces)))


def _binned(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's bin ``(b/n, (b+1)/n]`` (0 in the first) and the sum of the confidences in each bin."""
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.intp) - 1, 0, n_bins - 1)
    return bins, np.bincount(bins, weights=confidence, minlength=n_bins)
