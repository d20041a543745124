"""Permutation importance of a fitted model on the test split: per extractor group and per feature.

A feature's (or a group's) importance is how much ``training.metric`` drops on the test split when its values are
shuffled across the images, breaking its link to the label while keeping its distribution (mean and standard
deviation over ``repeats`` shuffles). A group is shuffled as a whole, rows together, so correlated features inside
it cannot stand in for each other. Near zero: the model does not use it; below zero: it only adds noise.

Each shuffle costs one prediction of the whole test split, so per feature it is computed for at most
``max_features`` columns, and only while ``budget_s`` seconds last: the columns of the most important groups first,
in order (the rest are reported as not computed). The groups are always computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from conveyor.training.evaluate import Scorer

__all__ = ["Importance", "group_of", "importance_png", "permutation_importance"]


@dataclass(frozen=True)
class Importance:
    """The metric on the intact test split, and the drops when groups and features are shuffled, largest first."""

    metric: str
    baseline: float
    groups: pd.DataFrame  # group, features, drop, drop_std
    features: pd.DataFrame  # feature, group, drop, drop_std (the computed ones)
    not_computed: int  # features left out of the per-feature pass (the budget)


def group_of(column: str, default: str) -> str:
    """The extractor a column comes from: the prefix of ``<extractor>__<name>`` (the ``all`` table), else
    ``default`` (a single extractor's table)."""
    return column.split("__", 1)[0] if "__" in column else default


def permutation_importance(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    columns: list[str],
    scorer: Scorer,
    *,
    default_group: str,
    repeats: int = 5,
    max_features: int = 200,
    budget_s: float | None = None,
    seed: int = 0,
) -> Importance:
    """Importance of each extractor group and of (at most ``max_features``) features, on (X, y) (``y``: class codes).

    Raises:
        ValueError: ``columns`` does not match X's width.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] != len(columns):
        raise ValueError(f"columns: {len(columns)} names for {X.shape[1]} features")
    rng = np.random.default_rng(seed)

    def score(matrix: np.ndarray) -> float:
        proba = predict_proba(matrix)
        return scorer(y, proba.argmax(axis=1), proba)

    baseline = score(X)

    def drops(indices: np.ndarray) -> tuple[float, float]:
        values = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[:, indices] = X[rng.permutation(len(X))][:, indices]
            values.append(baseline - score(shuffled))
        return float(np.mean(values)), float(np.std(values))

    group_names = [group_of(c, default_group) for c in columns]
    members: dict[str, np.ndarray] = {g: np.flatnonzero(np.array(group_names) == g) for g in dict.fromkeys(group_names)}
    group_rows = [(g, len(idx), *drops(idx)) for g, idx in members.items()]
    groups = pd.DataFrame(group_rows, columns=["group", "features", "drop", "drop_std"])
    groups = groups.sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)
    chosen: list[int] = []
    for g in groups["group"]:
        if len(chosen) >= max_features:
            break
        chosen.extend(members[g][: max_features - len(chosen)].tolist())
    began = time.perf_counter()
    feature_rows = []
    for j in chosen:
        if budget_s is not None and time.perf_counter() - began > budget_s:
            break
        feature_rows.append((columns[j], group_names[j], *drops(np.array([j]))))
    features = pd.DataFrame(feature_rows, columns=["feature", "group", "drop", "drop_std"])
    features = features.sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)
    return Importance(scorer.metric, baseline, groups, features, len(columns) - len(feature_rows))


def importance_png(importance: Importance, path: Path, top: int = 20) -> Path:
    """A two-panel bar chart: the groups, and the ``top`` features, by mean drop (with the shuffles' spread)."""
    from conveyor.training.evaluate import _figure, _save

    figure = _figure(11, 0.3 * max(len(importance.groups), min(top, len(importance.features))) + 2)
    left, right = figure.subplots(1, 2)
    for ax, frame, name, title in (
        (left, importance.groups, "group", "extractor groups"),
        (right, importance.features.head(top), "feature", f"top {top} features"),
    ):
        ax.barh(frame[name][::-1], frame["drop"][::-1], xerr=frame["drop_std"][::-1], color="#4c72b0")
        ax.set_title(title)
        ax.set_xlabel(f"drop of test {importance.metric} when shuffled")
        ax.axvline(0.0, color="black", linewidth=0.8)
    return _save(figure, path)
