"""Prediction sets with a coverage guarantee: class-conditional (Mondrian) split-conformal prediction over a fitted
classifier's probabilities, with crepes.

Calibration: the probabilities of images the classifier never saw (a held-out part of the training split), scored
``1 - p(true class)`` and kept per true class. For a new image, a class enters the set when the image is at least as
conforming as a share ``1 - coverage`` of that class's calibration cases (a non-smoothed p-value, so answers are
deterministic). Per class, the set then holds the true class with probability at least ``coverage``, whatever the
classifier, as long as new images are exchangeable with the calibration ones: coverage falling below target on
labelled cases is a sign that they no longer are (a shift).

Why crepes and not MAPIE: crepes takes the non-conformity scores and the Mondrian categories as plain arrays, so the
registered model stores its calibration as numbers (``conformal.json``) and computes sets in the serving process from
the probabilities it already has; MAPIE wraps the estimator and refits or re-predicts through it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MondrianConformal", "binomial_interval", "calibration_part"]


@dataclass(frozen=True)
class MondrianConformal:
    """Calibration scores per class, and the prediction sets they give at any coverage.

    Args:
        classes: the classifier's classes, in its probability columns' order.
        scores: per calibration image, ``1 - p(its true class)``.
        labels: per calibration image, its true class's index in ``classes``.
    """

    classes: list[str]
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def fit(cls, proba: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> MondrianConformal:
        """Calibrate on held-out probabilities (n, classes) and true class indices.

        Raises:
            ValueError: shapes that disagree, or no calibration case.
        """
        proba, y = np.asarray(proba, dtype=np.float64), np.asarray(labels, dtype=np.int64)
        if proba.ndim != 2 or proba.shape[1] != len(classes) or len(y) != len(proba) or not len(y):
            raise ValueError(f"calibration: probabilities {proba.shape} for {len(y)} labels and {len(classes)} classes")
        return cls(list(classes), 1.0 - proba[np.arange(len(y)), y], y)

    def counts(self) -> dict[str, int]:
        """Calibration cases per class."""
        found = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(found[i]) for i, name in enumerate(self.classes)}

    def sets(self, proba: np.ndarray, coverage: float) -> np.ndarray:
        """Membership (n, classes) of each class in each image's prediction set at ``coverage``.

        Raises:
            ValueError: coverage outside (0, 1), or probabilities of another number of classes.
        """
        from crepes import ConformalClassifier

        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
        proba = np.atleast_2d(np.asarray(proba, dtype=np.float64))
        if proba.shape[1] != len(self.classes):
            raise ValueError(f"probabilities of {proba.shape[1]} classes for a model of {len(self.classes)}")
        conformal = ConformalClassifier().fit(self.scores, bins=self.labels)
        alphas = 1.0 - proba
        columns = [
            conformal.predict_set(alphas, bins=np.full(len(proba), c), confidence=coverage, smoothing=False)[:, c]
            for c in range(len(self.classes))
        ]
        return np.column_stack(columns).astype(bool)

    def labelled_sets(self, proba: np.ndarray, coverage: float) -> list[list[str]]:
        """Each image's prediction set as class names, most probable first."""
        member = self.sets(proba, coverage)
        proba = np.atleast_2d(proba)
        order = np.argsort(-proba, axis=1, kind="stable")
        return [[self.classes[c] for c in row if inside[c]] for row, inside in zip(order, member, strict=True)]

    def evaluate(self, proba: np.ndarray, labels: Sequence[int], coverage: float) -> dict[str, Any]:
        """On labelled images: the share whose set holds the true class (overall and per class, with the 95%
        binomial interval), the share of singleton sets, the mean set size, whether each class met the target (its
        coverage's interval reaches it), and whether it is in every set (:meth:`always_in_set`)."""
        member = self.sets(proba, coverage)
        y = np.asarray(labels, dtype=np.int64)
        covered = member[np.arange(len(y)), y]
        sizes = member.sum(axis=1)
        per_class = {}
        trivial = self.always_in_set(coverage)
        for c, name in enumerate(self.classes):
            mine = covered[y == c]
            low, high = binomial_interval(int(mine.sum()), len(mine))
            per_class[name] = {"n": len(mine), "coverage": float(mine.mean()) if len(mine) else None,
                               "low": low, "high": high, "met": high is None or high >= coverage,
                               "always_in_set": name in trivial}  # fmt: skip
        low, high = binomial_interval(int(covered.sum()), len(covered))
        return {
            "target": coverage,
            "n": len(y),
            "coverage": float(covered.mean()) if len(y) else None,
            "low": low,
            "high": high,
            "singleton_share": float((sizes == 1).mean()) if len(y) else None,
            "empty_share": float((sizes == 0).mean()) if len(y) else None,
            "mean_size": float(sizes.mean()) if len(y) else None,
            "per_class": per_class,
        }

    def always_in_set(self, coverage: float) -> list[str]:
        """The classes in every prediction set at ``coverage``: too few calibration cases for a finite threshold.

        Split conformal keeps a class while its score is at most the ``ceil((n + 1) * coverage)``-th smallest of its
        n calibration scores; with ``n < coverage / (1 - coverage)`` (19 cases at 0.95, 9 at 0.9) there is no such
        score, and the class is never left out: its coverage is 1 by construction, not by the model's merit.
        """
        counts = self.counts()
        return [name for name in self.classes if math.ceil((counts[name] + 1) * coverage - 1e-9) > counts[name]]

    def to_json(self) -> str:
        return json.dumps(
            {"classes": self.classes, "scores": self.scores.tolist(), "labels": self.labels.tolist()}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> MondrianConformal:
        """The calibration of ``conformal.json``.

        Raises:
            ValueError: a field is missing, or the scores and labels disagree.
        """
        data = json.loads(text)
        try:
            classes, scores, labels = data["classes"], np.asarray(data["scores"], float), np.asarray(data["labels"])
        except KeyError as exc:
            raise ValueError(f"conformal.json: field {exc} missing") from exc
        if scores.shape != labels.shape or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(classes):
            raise ValueError("conformal.json: scores and labels disagree, or a label is no class")
        return cls(list(classes), scores, labels.astype(np.int64))


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """The Clopper-Pearson interval of a proportion (exact, conservative); None for no trials."""
    from scipy.stats import beta

    if n == 0:
        return None, None
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1.0 - tail, successes + 1, n - successes))
    return low, high


def calibration_part(
    keys: Sequence[str], labels: Sequence[int], groups: Sequence[Any] | np.ndarray | None, fraction: float
) -> np.ndarray:
    """Which training images to hold out for calibration (a boolean mask): about ``fraction`` of each class, whole
    groups at a time (a patient's images, near-duplicates), groups taken in the order of their smallest key (a
    sha256: stable as data arrive, and independent of file order).

    A group joins while every class it holds is under its target, so no class overshoots by more than one group.
    """
    y = np.asarray(labels)
    group_of = np.asarray(keys if groups is None else groups)
    first: dict[Any, str] = {}
    for key, group in zip(keys, group_of, strict=True):
        if group not in first or key < first[group]:
            first[group] = key
    target = {c: round(fraction * int((y == c).sum())) for c in np.unique(y)}
    taken = dict.fromkeys(target, 0)
    chosen = np.zeros(len(y), dtype=bool)
    for group in sorted(first, key=first.__getitem__):
        members = group_of == group
        classes, counts = np.unique(y[members], return_counts=True)
        if all(taken[c] < target[c] for c in classes):
            chosen |= members
            for c, n in zip(classes, counts, strict=True):
                taken[c] += int(n)
        if all(taken[c] >= target[c] for c in target):
            break
    return chosen
