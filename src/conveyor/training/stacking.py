"""The stacked candidate: the search's finalists combined (:class:`conveyor.models.stacking.StackedClassifier`),
scored by the same grouped folds that scored them, so it joins the candidate table like any family and wins only on
its CV score.

Its CV score comes from the finalists' out-of-fold scores: on each fold, the combiner is fitted on the other folds'
out-of-fold scores and scores this one. The finalists' parameters were chosen on those same folds, so the estimate is
a little optimistic; the candidate table's "test - CV" column shows how much.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from conveyor.features.store import ROI_PREFIX
from conveyor.models.scores import decision_scores
from conveyor.models.stacking import StackedClassifier, combiner, stack_inputs
from conveyor.training.evaluate import Scorer

__all__ = ["STACK", "StackFit", "fit_stack", "stack_table"]

STACK = "stack"
"""The stacked candidate's family name in the candidate table."""


@dataclass(frozen=True)
class StackFit:
    """The fitted stack, its score on each fold, its out-of-fold scores (for calibration) and its fitting time."""

    estimator: StackedClassifier
    table: str
    fold_scores: list[float]
    oof_scores: np.ndarray
    seconds: float


def stack_table(extractors: Sequence[str], tables: Sequence[str]) -> str | None:
    """The feature table a stack of bases on ``extractors`` reads: theirs when they share one, else ``all`` (or
    ``roi-all``) when it is among ``tables``; None when they span the whole image and a region, or no such table."""
    if len(set(extractors)) == 1:
        return extractors[0]
    roi = {e.startswith(ROI_PREFIX) for e in extractors}
    if len(roi) > 1:
        return None
    table = f"{ROI_PREFIX}all" if roi == {True} else "all"
    return table if table in tables else None


def base_columns(extractor: str, table: str, columns: Sequence[str]) -> np.ndarray:
    """The positions in ``table``'s columns of the columns a base trained on ``extractor`` reads, in their order
    (``all`` holds each extractor's columns behind ``<name>__``)."""
    if extractor == table:
        return np.arange(len(columns))
    prefix = f"{extractor.removeprefix(ROI_PREFIX)}__"
    return np.array([i for i, name in enumerate(columns) if name.startswith(prefix)])


def fit_stack(
    bases: Sequence[tuple[str, Any, np.ndarray]],
    table: str,
    columns: Sequence[str],
    y: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    scorer: Scorer,
    seed: int,
) -> StackFit:
    """Fit the stack of ``bases`` (extractor, estimator fitted on the whole training split, its out-of-fold scores)
    on ``table``, and score it on ``splits`` (the search's final folds)."""
    began = time.perf_counter()
    oofs = [oof for _, _, oof in bases]
    inputs = stack_inputs(oofs)
    out = np.zeros((len(y), len(np.unique(y))))
    fold_scores = []
    for train, held in splits:
        fold = combiner(seed).fit(inputs[train], y[train])
        scores = decision_scores(fold, inputs[held])
        out[held, : scores.shape[1]] = scores
        fold_scores.append(scorer(y[held], fold.predict(inputs[held]), scores))
    estimator = StackedClassifier(
        [est for _, est, _ in bases], [base_columns(ex, table, columns) for ex, _, _ in bases], seed
    ).fit(oofs, y)
    return StackFit(estimator, table, fold_scores, out, time.perf_counter() - began)
