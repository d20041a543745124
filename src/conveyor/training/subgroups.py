"""Subgroup performance: the model's metric on each group of a labelled set (each scanner, modality, sex, age band,
site, ... that ingest recorded, :mod:`conveyor.data.subgroups`), each with its 95% bootstrap interval beside the
whole set's value, so a clinician can see where the model is weaker than its headline number.

Pure: labels, probabilities and each item's subgroup values in, a typed report out. Training reports it for the
winner on the test split, monitoring for the champion on each labelled batch, where the ``subgroup`` alert rule fires
for a group that :func:`falls_behind` the whole.

A group with fewer than ``min_cases`` items gets no score ("too few cases"): its interval would be too wide to say
anything, and a score on three cases invites reading noise. An attribute with a single value is the whole set again
and is not repeated; an item without a value for an attribute (an image stored before conveyor recorded subgroups)
is in no group of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conveyor.training.evaluate import Interval, Labels, Metrics, evaluate

__all__ = ["MAX_VALUES", "TOO_FEW", "GroupResult", "SubgroupReport", "falls_behind", "subgroup_report"]

TOO_FEW = "too few cases"
MAX_VALUES = 20
"""Groups reported per attribute (the largest); the rest are counted in ``omitted``."""


def falls_behind(whole: float | None, interval: Interval | None) -> bool:
    """Whether a group falls behind the whole by more than its own uncertainty: its metric's 95% interval lies
    wholly below the whole set's value. False when either is unknown."""
    return whole is not None and interval is not None and interval.high < whole


@dataclass(frozen=True)
class GroupResult:
    """One group (an attribute's value) and how the model does on it; scores are None when ``note`` says why."""

    attribute: str
    value: str
    n: int
    metric: float | None = None  # the report's metric
    metric_interval: Interval | None = None
    accuracy: float | None = None
    accuracy_interval: Interval | None = None
    note: str | None = None  # "too few cases", or why the metric cannot be computed
    behind: bool = False  # falls_behind the whole

    def to_dict(self) -> dict[str, Any]:
        def bounds(interval: Interval | None) -> tuple[float | None, float | None]:
            return (None, None) if interval is None else (interval.low, interval.high)

        metric_low, metric_high = bounds(self.metric_interval)
        accuracy_low, accuracy_high = bounds(self.accuracy_interval)
        return {"attribute": self.attribute, "value": self.value, "n": self.n, "metric": self.metric,
                "metric_low": metric_low, "metric_high": metric_high, "accuracy": self.accuracy,
                "accuracy_low": accuracy_low, "accuracy_high": accuracy_high, "note": self.note,
                "behind": self.behind}  # fmt: skip


@dataclass(frozen=True)
class SubgroupReport:
    """Every group's result beside the whole set's ``metric`` and accuracy."""

    metric: str
    min_cases: int
    n: int
    whole: float | None  # the metric on every item (None: not computable, e.g. ROC-AUC with one class)
    whole_accuracy: float
    groups: list[GroupResult]
    omitted: dict[str, int] = field(default_factory=dict)  # attribute -> its smaller groups not reported

    @property
    def behind(self) -> list[GroupResult]:
        """The groups that fall behind the whole, worst first."""
        return sorted((g for g in self.groups if g.behind), key=lambda g: g.metric or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "min_cases": self.min_cases, "n": self.n, "whole": self.whole,
                "whole_accuracy": self.whole_accuracy, "groups": [g.to_dict() for g in self.groups],
                "omitted": self.omitted}  # fmt: skip


def subgroup_report(
    y_true: Labels,
    proba: np.ndarray,
    classes: Labels,
    values: Sequence[Mapping[str, str] | None],
    *,
    metric: str,
    positive: str | None = None,
    min_cases: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
) -> SubgroupReport:
    """Score the arg-max labels of ``proba`` on the whole set and on each subgroup of it.

    Args:
        y_true: the true labels; a label not among ``classes`` (new to the model) counts as a class it never
            predicts, as monitoring scores a batch.
        proba: (n, len(classes)) probabilities in ``classes`` order.
        classes: the model's classes.
        values: per item, its subgroup values (attribute -> value), or None when unknown.
        metric: ``training.metric``, reported with accuracy.
        min_cases: groups with fewer items are listed with their n and "too few cases", unscored.
        n_boot, seed: the bootstrap of the 95% intervals (:func:`~conveyor.training.evaluate.evaluate`).

    Raises:
        ValueError: lengths differ, or what :func:`~conveyor.training.evaluate.evaluate` refuses.
    """
    labels = [str(y) for y in y_true]
    proba = np.asarray(proba, dtype=np.float64)
    if not len(labels) == len(proba) == len(values):
        raise ValueError(f"y_true, proba and values: lengths differ ({len(labels)}, {len(proba)}, {len(values)})")
    model_classes = [str(c) for c in classes]
    unknown = sorted(set(labels) - set(model_classes))
    all_classes = model_classes + unknown
    full = np.hstack([proba, np.zeros((len(proba), len(unknown)))]) if unknown else proba
    predicted = [model_classes[i] for i in proba.argmax(axis=1)]

    def score(rows: list[int]) -> Metrics:
        return evaluate(
            [labels[i] for i in rows], [predicted[i] for i in rows], full[rows], all_classes, positive=positive,
            n_boot=n_boot, seed=seed,
        )  # fmt: skip

    whole = score(list(range(len(labels))))
    whole_value = getattr(whole, metric)
    members: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, found in enumerate(values):
        for attribute, value in (found or {}).items():
            members[attribute][value].append(i)
    groups: list[GroupResult] = []
    omitted: dict[str, int] = {}
    for attribute in sorted(members):
        by_value = members[attribute]
        if len(by_value) < 2:
            continue
        ranked = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
        if len(ranked) > MAX_VALUES:
            omitted[attribute] = len(ranked) - MAX_VALUES
        for value, rows in ranked[:MAX_VALUES]:
            groups.append(_group(attribute, value, rows, score, metric, whole_value, min_cases))
    return SubgroupReport(metric, min_cases, len(labels), whole_value, whole.accuracy, groups, omitted)


def _group(
    attribute: str, value: str, rows: list[int], score: Any, metric: str, whole: float | None, min_cases: int
) -> GroupResult:
    if len(rows) < min_cases:
        return GroupResult(attribute, value, len(rows), note=TOO_FEW)
    found: Metrics = score(rows)
    value_of, interval = getattr(found, metric), found.intervals.get(metric)
    note = None if value_of is not None else f"no {metric}: the group holds one class"
    return GroupResult(
        attribute, value, len(rows), value_of, interval, found.accuracy, found.intervals.get("accuracy"), note,
        falls_behind(whole, interval),
    )  # fmt: skip
