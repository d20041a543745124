"""The stacked candidate: the search's finalists combined (:class:`conveyor.models.stacking.StackedClassifier`),
scored by the same grouped folds that scored them, so it joins the candidate table like any family and wins only on
its CV score.

A network on the pixels joins the stack too (:func:`fit_mixed_stack`), but it has no out-of-fold scores over the whole
training split: one network fit costs what a whole tabular search does, so it holds out one validation fold of its
own. The mixed stack's combiner is therefore fitted and scored on that fold alone (the tabular finalists' out-of-fold
scores and the network's held-out scores of the same images), with the fold's images split into grouped folds of
their own: no image is scored by a combiner, or a network, that saw it.

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
from conveyor.models.stacking import PIXEL_INPUT, StackedClassifier, combiner, stack_inputs
from conveyor.training.evaluate import Scorer
from conveyor.training.search import cv_splits

__all__ = ["MIXED_PREFIX", "STACK", "StackFit", "fit_mixed_stack", "fit_stack", "mixed_table", "stack_table"]

STACK = "stack"
"""The stacked candidate's family name in the candidate table."""


@dataclass(frozen=True)
class StackFit:
    """The fitted stack, its score on each fold, its out-of-fold scores (for calibration; None for a mixed stack,
    scored on the network's validation fold only) and its fitting time."""

    estimator: StackedClassifier
    table: str
    fold_scores: list[float]
    oof_scores: np.ndarray | None
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
    fold_scores, out = _combiner_cv(stack_inputs(oofs), y, splits, scorer, seed)
    estimator = StackedClassifier(
        [est for _, est, _ in bases], [base_columns(ex, table, columns) for ex, _, _ in bases], seed
    ).fit(oofs, y)
    return StackFit(estimator, table, fold_scores, out, time.perf_counter() - began)


MIXED_PREFIX = f"{PIXEL_INPUT}+"
"""The start of a mixed stack's input name (:func:`mixed_table`)."""


def mixed_table(table: str) -> str:
    """The input name of a stack of a network and tabular bases on ``table``: the pixels and that table."""
    return MIXED_PREFIX + table


def fit_mixed_stack(
    bases: Sequence[tuple[str, Any, np.ndarray]],
    network: Any,
    table: str,
    columns: Sequence[str],
    y: np.ndarray,
    groups: np.ndarray | None,
    folds: int,
    scorer: Scorer,
    seed: int,
) -> StackFit | None:
    """The stack of tabular ``bases`` (as for :func:`fit_stack`) and a fitted ``network`` (its held-out
    ``val_index_`` and ``val_proba_``), fitted and scored on the network's validation fold split into up to ``folds``
    grouped folds; None when that fold is too small to split in two (fewer than two images, or groups, of a class)."""
    began = time.perf_counter()
    rows = np.asarray(network.val_index_)
    y_rows = y[rows]
    groups_rows = None if groups is None else groups[rows]
    smallest = min(
        len(np.unique(groups_rows[y_rows == c])) if groups_rows is not None else int(np.sum(y_rows == c))
        for c in np.unique(y)
    )
    k = min(folds, smallest)
    if k < 2:
        return None
    oofs = [oof[rows] for _, _, oof in bases] + [np.asarray(network.val_proba_, dtype=np.float64)]
    splits = cv_splits(y_rows, np.arange(len(rows)), k, seed, groups_rows)
    fold_scores, _ = _combiner_cv(stack_inputs(oofs), y_rows, splits, scorer, seed)
    estimator = StackedClassifier(
        [est for _, est, _ in bases] + [network],
        [base_columns(ex, table, columns) for ex, _, _ in bases] + [PIXEL_INPUT],
        seed,
    ).fit(oofs, y_rows)
    return StackFit(estimator, mixed_table(table), fold_scores, None, time.perf_counter() - began)


def _combiner_cv(
    inputs: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], scorer: Scorer, seed: int
) -> tuple[list[float], np.ndarray]:
    """A combiner fitted on each split's training part and scored on its held part: the fold scores and every held
    image's scores."""
    out = np.zeros((len(y), len(np.unique(y))))
    fold_scores = []
    for train, held in splits:
        fold = combiner(seed).fit(inputs[train], y[train])
        scores = decision_scores(fold, inputs[held])
        out[held, : scores.shape[1]] = scores
        fold_scores.append(scorer(y[held], fold.predict(inputs[held]), scores))
    return fold_scores, out
