"""A stacked classifier: the search's finalists, each on its own feature columns, combined by a logistic regression
over their scores.

The finalists disagree where their features do (an SVM on the intensity statistics, boosted trees on the persistence
images): a small model over their per-class scores can beat each of them. The combiner is fitted on the finalists'
out-of-fold scores from the search (each image scored by fold models that never saw it), never on scores of models
that trained on the same images, so it learns how far each base can be trusted on new images; its inputs are
standardised, since an SVM's decision values and a forest's probabilities live on different scales.

A binary base contributes one column (its positive-class score: the other is its negative), a multi-class base one
per class.

A stack may also combine a network on the pixels with the tabular finalists: its input is then
:class:`ImagesAndFeatures` (the preprocessed images and their feature vectors, row for row), and the network's
entry in ``columns`` is :data:`PIXEL_INPUT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from conveyor.models.scores import decision_scores

__all__ = ["PIXEL_INPUT", "ImagesAndFeatures", "StackedClassifier", "combiner", "stack_inputs"]

PIXEL_INPUT = "pixels"
"""A base's ``columns`` entry that says it reads the images, not feature columns."""


class ImagesAndFeatures:
    """Images and their feature vectors, row for row: the input of a stack whose bases read either.

    Indexing with a slice, an index array or a mask selects the same rows of both (``pixels`` may be a lazy
    :class:`conveyor.training.pixels.ImageRows`, read only when a base converts it)."""

    def __init__(self, pixels: Any, features: Any) -> None:
        if len(pixels) != len(features):
            raise ValueError(f"{len(pixels)} images but {len(features)} feature vectors")
        self.pixels = pixels
        self.features = np.asarray(features, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, rows: Any) -> ImagesAndFeatures:
        if isinstance(rows, (int, np.integer)):
            rows = [int(rows)]
        return ImagesAndFeatures(self.pixels[rows], self.features[rows])


def _on_pixels(columns: Any) -> bool:
    """Whether a base's ``columns`` entry says it reads the images."""
    return isinstance(columns, str) and columns == PIXEL_INPUT


def stack_inputs(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The combiner's inputs from each base's per-class scores ((n, classes) each, as
    :func:`conveyor.models.scores.decision_scores` gives them): a binary base's positive column only."""
    columns = [s[:, 1:] if s.shape[1] == 2 else s for s in (np.asarray(part, dtype=np.float64) for part in scores)]
    return np.hstack(columns)


def combiner(seed: int) -> Pipeline:
    """A logistic regression over standardised scores: few parameters, so a few hundred images fit it."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed)
    )


class StackedClassifier(ClassifierMixin, BaseEstimator):
    """Fitted base classifiers, each reading ``columns[i]`` of X, and a combiner over their scores.

    Parameters
    ----------
    bases : list of fitted classifiers
        Used as they are (already fitted on the whole training split), never refitted.
    columns : list of integer arrays or PIXEL_INPUT
        The columns of X each base reads, in its own training order; :data:`PIXEL_INPUT` for a base on the images
        (X is then :class:`ImagesAndFeatures`, and the other bases read its ``features``).
    seed : int
        The combiner's random state.

    ``fit(oof_scores, y)`` fits the combiner on the bases' out-of-fold scores (one (n, classes) array per base, in
    ``bases``' order) and labels coded ``0 .. classes-1``.
    """

    def __init__(self, bases: list[Any] | None = None, columns: list[Any] | None = None, seed: int = 0) -> None:
        self.bases = bases
        self.columns = columns
        self.seed = seed

    def fit(self, oof_scores: Sequence[np.ndarray], y: np.ndarray) -> StackedClassifier:
        if self.bases is None or self.columns is None or len(self.bases) != len(self.columns):
            raise ValueError("a stack needs as many column sets as bases")
        odd = [c for c in self.columns if isinstance(c, str) and c != PIXEL_INPUT]
        if odd:
            raise ValueError(f"a base's columns are column positions or {PIXEL_INPUT!r}, got {odd[0]!r}")
        if len(oof_scores) != len(self.bases):
            raise ValueError(f"{len(oof_scores)} out-of-fold score arrays for {len(self.bases)} bases")
        y = np.asarray(y)
        self.combiner_ = combiner(self.seed).fit(stack_inputs(oof_scores), y)
        self.classes_ = self.combiner_.classes_
        return self

    @property
    def reads_pixels(self) -> bool:
        """Whether a base reads the images (X must then be :class:`ImagesAndFeatures`)."""
        return any(_on_pixels(cols) for cols in self.columns or [])

    def base_scores(self, X: Any) -> np.ndarray:
        """The combiner's inputs for X: each base's scores on its own columns (or on the images)."""
        assert self.bases is not None and self.columns is not None
        if isinstance(X, ImagesAndFeatures):
            pixels, features = X.pixels, X.features
        elif self.reads_pixels:
            raise ValueError("this stack has a base on the images: give it ImagesAndFeatures, not a feature matrix")
        else:
            pixels, features = None, np.asarray(X)
        return stack_inputs(
            [
                decision_scores(base, pixels if _on_pixels(cols) else features[:, cols])
                for base, cols in zip(self.bases, self.columns, strict=True)
            ]
        )

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "combiner_")
        return np.asarray(self.combiner_.decision_function(self.base_scores(X)))

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "combiner_")
        return np.asarray(self.combiner_.predict_proba(self.base_scores(X)))

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "combiner_")
        return np.asarray(self.combiner_.predict(self.base_scores(X)))
