"""The champion against Dummy (by reference) and Dummy (by current) on a labelled batch, and prediction drift.

Scores come from :func:`conveyor.training.evaluate.evaluate` and :func:`conveyor.training.baselines.evaluate_baselines`
(Evidently's definitions of the two dummies), with the training run's positive class, so they compare with the
champion's test figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from conveyor.training.baselines import evaluate_baselines
from conveyor.training.evaluate import Metrics, evaluate
from conveyor.training.gate import metric_value

__all__ = ["PerformanceResult", "compare_with_dummies", "per_class"]

SHOWN = ("model", "dummy_by_reference", "dummy_by_current")


@dataclass
class PerformanceResult:
    """The model and the dummies on one labelled set; ``per_class`` has each class's precision, recall, F1, support."""

    metrics: dict[str, Metrics]
    per_class: dict[str, dict[str, float]]
    classes: list[str]
    unknown_labels: list[str]
    metric: str = "balanced_accuracy"  # training.metric: what "beats" compares

    @property
    def beats_dummies(self) -> bool:
        model = metric_value(self.metrics["model"], self.metric)
        return all(model > metric_value(self.metrics[name], self.metric) for name in SHOWN[1:])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SHOWN:
            m = self.metrics[name]
            out[name] = {
                "f1": m.f1,
                "precision": m.precision,
                "recall": m.recall,
                "accuracy": m.accuracy,
                "balanced_accuracy": m.balanced_accuracy,
                "roc_auc": m.roc_auc,
                "n": m.n,
                "f1_interval": [m.intervals["f1"].low, m.intervals["f1"].high] if "f1" in m.intervals else None,
            }
        out["metric"] = self.metric
        out["per_class"] = self.per_class
        out["beats_dummies"] = self.beats_dummies
        if self.unknown_labels:
            out["unknown_labels"] = self.unknown_labels
        return out


def per_class(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class (0 where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(classes), zero_division=0)
    return {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }


def compare_with_dummies(
    y_reference: Sequence[str],
    y_true: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    positive: str | None,
    metric: str = "balanced_accuracy",
    n_boot: int = 200,
    seed: int = 0,
) -> PerformanceResult:
    """Score the model's arg-max labels and both dummies on ``y_true``.

    Labels the model has never seen (a class folder new to it) are added as classes with probability 0, so the
    batch is scored as it is and the unknown names are reported.
    """
    model_classes = list(classes)
    unknown = sorted({str(y) for y in y_true} - set(model_classes))
    all_classes = model_classes + unknown
    full = np.hstack([proba, np.zeros((len(proba), len(unknown)))]) if unknown else proba
    y_pred = [model_classes[i] for i in np.asarray(proba).argmax(axis=1)]
    model = evaluate(list(y_true), y_pred, full, all_classes, positive=positive, n_boot=n_boot, seed=seed)
    baselines = evaluate_baselines(
        list(y_reference), list(y_true), all_classes, positive=positive, n_boot=n_boot, seed=seed
    )
    metrics = {"model": model, **baselines}
    return PerformanceResult(metrics, per_class(list(y_true), y_pred, all_classes), all_classes, unknown, metric)
