"""Held-out metrics with bootstrap intervals, calibration error, and the confusion-matrix and ROC plots.

Pure functions: labels and probabilities in, numbers (or one PNG file, at the edge) out. The training loop calls
:func:`evaluate` on the test split of every candidate and on every dummy baseline (:mod:`conveyor.training.baselines`),
monitoring calls it on each newly labelled batch.

Definitions follow scikit-learn 1.9 with ``zero_division=0``: a 0/0 precision, recall or F1 is 0, never a warning.

* Two classes: F1, precision and recall of the positive class (:func:`positive_class`); ROC-AUC of
  ``proba[:, positive]``.
* More classes: macro F1, precision and recall over the classes that occur in ``y_true`` or ``y_pred`` (scikit-learn's
  ``average="macro"`` with its default ``labels``); ROC-AUC one-vs-rest, macro over the classes that occur in
  ``y_true`` (equal to ``roc_auc_score(multi_class="ovr")`` when every class occurs; scikit-learn gives NaN otherwise).
* Balanced accuracy: mean recall over the classes that occur in ``y_true``, as ``balanced_accuracy_score``.
* ROC-AUC is the Mann-Whitney statistic (ties count one half), which is exactly scikit-learn's trapezoidal area.

Why everything is derived from confusion counts: the 95% intervals come from ``n_boot`` bootstrap resamples of the
test items, and a resample is just a vector of multiplicities (how often each item was drawn). Confusion counts and
the tie-grouped rank sums of ROC-AUC are then sums of those multiplicities over fixed groups of items, so a thousand
resamples cost a few numpy reductions over an (items x resamples) array instead of a thousand scikit-learn calls (and
no BLAS products, whose threads spin on a busy machine). The point estimate is the same code with every multiplicity 1,
so an interval is always an interval of exactly the reported statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from conveyor.workspace import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "INTERVAL_LEVEL",
    "METRICS",
    "METRIC_LABELS",
    "Interval",
    "Labels",
    "Metrics",
    "Scorer",
    "confusion_matrix_png",
    "evaluate",
    "expected_calibration_error",
    "positive_class",
    "roc_curve_png",
]

Labels: TypeAlias = Sequence[str] | np.ndarray
"""Class names: a list, or a 1-D array (what ``predict`` returns, or a fitted model's ``classes_``)."""

INTERVAL_LEVEL = 0.95
"""Coverage of the bootstrap percentile intervals (2.5th to 97.5th percentile)."""

METRICS = ("balanced_accuracy", "f1", "accuracy", "roc_auc")
"""What ``training.metric`` may name: the one meaning of "better" that selection, the gate, the monitor's alert and
the rollout policy share."""

METRIC_LABELS = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "accuracy": "accuracy", "roc_auc": "ROC-AUC"}

_DICT_ORDER = ("f1", "accuracy", "balanced_accuracy", "precision", "recall", "roc_auc", "ece", "ece_chance")
# Resamples are processed in chunks of at most this many (item x resample) cells, so memory stays ~tens of MB
# whatever the size of the test set.
_CHUNK_CELLS = 2_000_000
_PROBA_TOL = 1e-6


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` for one metric."""

    low: float
    high: float


@dataclass(frozen=True)
class Metrics:
    """What one labelling (a model's or a baseline's) scores on one labelled set.

    Attributes:
        f1, precision, recall: of the positive class (two classes) or macro (more).
        accuracy, balanced_accuracy: as scikit-learn.
        roc_auc: None when it cannot be computed: no probabilities given, or a single class in ``y_true``.
        intervals: 95% bootstrap percentile intervals by metric name (the five label metrics, and ``roc_auc`` when
            computable); empty when ``n_boot`` was 0. A percentile interval need not contain the point estimate when
            the bootstrap distribution is skewed (e.g. a metric at its bound).
        ece: expected calibration error of the max-probability confidence (10 equal bins); None without
            probabilities.
        n: number of items evaluated.
        ece_chance: the ECE a perfectly calibrated model with the same confidences would show on these n items by
            chance alone (:func:`conveyor.models.ece.chance_ece`): an ``ece`` near it is as low as n items can show.
    """

    f1: float
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    roc_auc: float | None
    intervals: dict[str, Interval]
    ece: float | None
    n: int
    ece_chance: float | None = None

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{name: value}`` for MLflow's ``log_metrics``; None values are left out.

        Each metric with an interval also gives ``<name>_low`` and ``<name>_high``; ``n`` is included. A prefix is
        joined with ``_`` unless it already ends in a separator (``_ . / -``): ``"test"`` and ``"test_"`` both give
        ``test_f1``, ``test_f1_low``, ...
        """
        if prefix and not prefix.endswith(("_", ".", "/", "-")):
            prefix += "_"
        out: dict[str, float] = {}
        for name in _DICT_ORDER:
            value = getattr(self, name)
            if value is None:
                continue
            out[f"{prefix}{name}"] = float(value)
            interval = self.intervals.get(name)
            if interval is not None:
                out[f"{prefix}{name}_low"] = float(interval.low)
                out[f"{prefix}{name}_high"] = float(interval.high)
        out[f"{prefix}n"] = float(self.n)
        return out


# ---------------------------------------------------------------------------------------------------------- inputs


def _check_classes(classes: Labels) -> tuple[str, ...]:
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"classes: expected a sequence of class names, got the single string {classes!r}")
    names = tuple(classes)
    if len(names) < 2:
        raise ValueError(f"classes: expected at least two class names, got {list(names)}")
    if len(set(names)) != len(names):
        repeated = sorted({str(c) for c in names if names.count(c) > 1})
        raise ValueError(f"classes: names must be unique, {repeated} repeated in {list(names)}")
    return names


def _encode(labels: Labels, classes: tuple[str, ...], name: str) -> np.ndarray:
    """Class indices (intp) of ``labels``, or ValueError naming the labels that are not classes."""
    if isinstance(labels, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of labels, got the single string {labels!r}")
    values = list(labels)
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.fromiter((lookup.get(v, -1) for v in values), dtype=np.intp, count=len(values))
    if (codes < 0).any():
        unknown = sorted({repr(v) for v, c in zip(values, codes, strict=True) if c < 0})
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{name}: label(s) {shown} not among the classes {list(classes)}")
    return codes


def _check_proba(proba: object, n: int, k: int) -> np.ndarray:
    array = np.asarray(proba, dtype=np.float64)
    if array.shape != (n, k):
        raise ValueError(
            f"proba: expected shape ({n}, {k}) (one row per item, one column per class in `classes` order), "
            f"got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("proba: contains NaN or infinite values")
    if array.size and (array.min() < -_PROBA_TOL or array.max() > 1 + _PROBA_TOL):
        raise ValueError(f"proba: expected probabilities in [0, 1], got values in [{array.min()}, {array.max()}]")
    return array


def positive_class(classes: Labels, configured: str | None = None) -> str | None:
    """The class whose F1, precision, recall and ROC-AUC are reported for a two-class problem.

    Binary: ``configured`` when given, else the last of the sorted class names, so that the usual names order
    themselves ("no" < "yes", "negative" < "positive", "no_tumour" < "tumour"). More than two classes: None (metrics
    are macro averages), though a configured name must still be one of the classes.

    Raises:
        ValueError: ``configured`` is not one of ``classes`` (the message lists them), or ``classes`` is malformed.
    """
    names = _check_classes(classes)
    if configured is not None and configured not in names:
        raise ValueError(f"positive class {configured!r} is not one of the classes {list(names)}")
    if len(names) != 2:
        return None
    if configured is not None:
        return configured
    return sorted(names)[-1]


# ------------------------------------------------------------------------------------------------- weighted stats


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of ``keys`` and the start of each run of equal keys in that order."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return order, starts


class _Confusion:
    """Confusion counts (m, k, k) [true, predicted] from (n, m) item multiplicities (one column per resample)."""

    def __init__(self, t: np.ndarray, p: np.ndarray, k: int) -> None:
        pairs = t * k + p
        self.order, self.starts = _groups(pairs)
        self.codes = pairs[self.order][self.starts]
        self.k = k

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat(weights[self.order], self.starts, axis=0)  # (pairs present, m)
        counts = np.zeros((self.k * self.k, weights.shape[1]), dtype=np.float64)
        counts[self.codes] = sums
        return counts.T.reshape(-1, self.k, self.k)


class _Auc:
    """Weighted Mann-Whitney ROC-AUC of ``scores`` for the items where ``positive`` is true; NaN where undefined.

    For each positive item, the weight of negatives scored lower plus half the weight of tied negatives comes from
    one cumulative sum over the negatives sorted by score, read at two ``searchsorted`` positions; all in integers,
    so it is exact.
    """

    def __init__(self, positive: np.ndarray, scores: np.ndarray) -> None:
        self.pos = np.flatnonzero(positive)
        neg = np.flatnonzero(~positive)
        self.neg = neg[np.argsort(scores[neg], kind="stable")]
        neg_scores = scores[self.neg]
        self.lower = np.searchsorted(neg_scores, scores[self.pos], side="left")
        self.upper = np.searchsorted(neg_scores, scores[self.pos], side="right")

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        m = weights.shape[1]
        cumulative = np.zeros((len(self.neg) + 1, m), dtype=np.int64)
        np.cumsum(weights[self.neg], axis=0, out=cumulative[1:])
        pos_weights = weights[self.pos]
        twice_wins = np.einsum("ib,ib->b", pos_weights, cumulative[self.lower] + cumulative[self.upper])
        pairs = pos_weights.sum(axis=0) * cumulative[-1]
        return np.divide(twice_wins, 2.0 * pairs, out=np.full(m, np.nan), where=pairs > 0)


class _MacroAuc:
    """One-vs-rest ROC-AUC averaged over the classes present (with some negatives) in each column; NaN if none."""

    def __init__(self, t: np.ndarray, proba: np.ndarray) -> None:
        self.per_class = [_Auc(t == c, proba[:, c]) for c in range(proba.shape[1])]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        total = np.zeros(weights.shape[1])
        count = np.zeros(weights.shape[1])
        for auc in self.per_class:
            values = auc(weights)
            defined = ~np.isnan(values)
            total[defined] += values[defined]
            count += defined
        return np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _label_metrics(counts: np.ndarray, positive: int | None) -> dict[str, np.ndarray]:
    """The five label metrics, each (m,), from confusion counts (m, k, k), or (m, k, k + 1) whose last column counts
    answers that are no class (failed predictions: in the support, never a hit)."""
    tp = np.diagonal(counts, axis1=1, axis2=2)
    support = counts.sum(axis=2)
    predicted = counts.sum(axis=1)[:, : counts.shape[1]]
    recall = _ratio(tp, support)
    precision = _ratio(tp, predicted)
    f1 = _ratio(2 * tp, support + predicted)
    in_true = support > 0
    out = {
        "accuracy": tp.sum(axis=1) / support.sum(axis=1),
        "balanced_accuracy": (recall * in_true).sum(axis=1) / in_true.sum(axis=1),
    }
    if positive is not None:
        out.update(f1=f1[:, positive], precision=precision[:, positive], recall=recall[:, positive])
    else:
        seen = (support + predicted) > 0
        n_seen = seen.sum(axis=1)
        out.update(
            f1=(f1 * seen).sum(axis=1) / n_seen,
            precision=(precision * seen).sum(axis=1) / n_seen,
            recall=(recall * seen).sum(axis=1) / n_seen,
        )
    return out


def _resample_weights(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """(n, count) multiplicities of the n items in ``count`` resamples drawn with replacement (one per column).

    Items along the first axis keep each group of items a contiguous block of rows, so the group sums below
    (``reduceat``, ``cumsum``) run over contiguous memory.
    """
    drawn = rng.integers(0, n, size=(count, n))
    drawn *= count
    drawn += np.arange(count)[:, None]
    return np.bincount(drawn.ravel(), minlength=n * count).reshape(n, count)


def _percentile_interval(values: np.ndarray) -> Interval | None:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    half = (1 - INTERVAL_LEVEL) / 2 * 100
    low, high = np.percentile(values, [half, 100 - half])
    return Interval(float(low), float(high))


# ------------------------------------------------------------------------------------------------------ public API


class Scorer:
    """The task's primary metric on class codes: what the search ranks candidates by and what a rollout compares.

    The same definitions as :func:`evaluate` (they share the code), on items weighted by multiplicity columns, so a
    whole batch of resamples or permutations is one call. ``scores`` are any per-class scores whose order ranks the
    items (probabilities or decision values): ROC-AUC needs them, the label metrics ignore them. A predicted code of
    ``n_classes`` or more is an answer that matches no class (a failed prediction): always wrong.
    """

    def __init__(self, metric: str, n_classes: int, positive: int | None) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
        self.metric, self.n_classes, self.positive = metric, n_classes, positive

    @property
    def needs_scores(self) -> bool:
        return self.metric == "roc_auc"

    def values(self, t: np.ndarray, p: np.ndarray, scores: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
        """The metric under each column of ``weights`` (n, m): (m,) values, NaN where undefined."""
        t, p = np.asarray(t, dtype=np.intp), np.asarray(p, dtype=np.intp)
        if self.metric == "roc_auc":
            if scores is None:
                raise ValueError("roc_auc: needs the per-class scores of the items")
            scores = np.asarray(scores, dtype=np.float64)
            if self.positive is not None:
                return _Auc(t == self.positive, scores[:, self.positive])(weights)
            return _MacroAuc(t, scores)(weights)
        k = self.n_classes + 1  # the extra code: a failed answer
        counts = _Confusion(t, np.minimum(p, self.n_classes), k)(weights)[:, : self.n_classes, :]
        return _label_metrics(counts, self.positive)[self.metric]

    def __call__(self, t: np.ndarray, p: np.ndarray, scores: np.ndarray | None = None) -> float:
        """The metric of every item once (0.0 where undefined, e.g. ROC-AUC of one class: ranks last)."""
        value = float(self.values(t, p, scores, np.ones((len(t), 1), dtype=np.int64))[0])
        return 0.0 if np.isnan(value) else value


def expected_calibration_error_codes(proba: np.ndarray, codes: np.ndarray, n_bins: int = 10) -> float:
    """:func:`expected_calibration_error` of class indices (see :func:`conveyor.models.ece.top_label_ece`)."""
    from conveyor.models.ece import top_label_ece  # the models package imports scikit-learn: only when used

    return top_label_ece(proba, codes, n_bins)


def _chance_ece(confidence: np.ndarray) -> float:
    from conveyor.models.ece import chance_ece  # the models package imports scikit-learn: only when used

    return chance_ece(confidence)


def expected_calibration_error(y_true: Labels, proba: np.ndarray, classes: Labels, n_bins: int = 10) -> float:
    """Expected calibration error of the max-probability confidence.

    Confidence is ``proba.max(axis=1)``, correctness is ``proba.argmax(axis=1) == y_true`` (the first class wins a
    tie); items go to ``n_bins`` equal-width bins ``(i/n_bins, (i+1)/n_bins]`` and ECE is
    ``sum_b n_b / n * |accuracy_b - mean confidence_b|``. 0 is perfectly calibrated; a model that says 0.8 and is right
    half the time scores 0.3. Why: clinicians read the probability shown beside a prediction, so it should mean what
    it says.

    Args:
        y_true: true labels, each one of ``classes``.
        proba: (n, len(classes)) probabilities in ``classes`` order.
        classes: class names, the column order of ``proba``.
        n_bins: number of confidence bins.

    Raises:
        ValueError: empty input, a label not in ``classes``, ``proba`` of the wrong shape or outside [0, 1], or
            ``n_bins`` < 1.
    """
    names = _check_classes(classes)
    if n_bins < 1:
        raise ValueError(f"n_bins: expected at least 1, got {n_bins}")
    t = _encode(y_true, names, "y_true")
    if len(t) == 0:
        raise ValueError("y_true: empty, nothing to evaluate")
    return expected_calibration_error_codes(_check_proba(proba, len(t), len(names)), t, n_bins)


def evaluate(
    y_true: Labels,
    y_pred: Labels,
    proba: np.ndarray | None,
    classes: Labels,
    *,
    positive: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Metrics:
    """Score one labelling of a labelled set, with 95% bootstrap percentile intervals.

    Args:
        y_true: true labels, each one of ``classes``.
        y_pred: predicted labels, same length.
        proba: (n, len(classes)) probabilities in ``classes`` order, or None (no ROC-AUC, no ECE).
        classes: every class name the model knows (at least two), the column order of ``proba``.
        positive: the positive class of a two-class problem (default :func:`positive_class`); ignored, though
            checked, for more classes.
        n_boot: number of bootstrap resamples of the items (0: no intervals).
        seed: seed of the ``numpy.random.Generator`` that draws the resamples; same inputs and seed, same intervals.

    Returns:
        The point estimates, their intervals (ROC-AUC's from the resamples where it is defined), ECE and n.

    Raises:
        ValueError: lengths differ or are 0, a label is not in ``classes``, ``proba`` has the wrong shape or is not
            probabilities, ``positive`` is not a class, or ``n_boot`` < 0.
    """
    names = _check_classes(classes)
    k = len(names)
    t = _encode(y_true, names, "y_true")
    p = _encode(y_pred, names, "y_pred")
    n = len(t)
    if len(p) != n:
        raise ValueError(f"y_true and y_pred: lengths differ ({n} and {len(p)})")
    if n == 0:
        raise ValueError("y_true: empty, nothing to evaluate")
    if n_boot < 0:
        raise ValueError(f"n_boot: expected 0 or more resamples, got {n_boot}")
    scores = None if proba is None else _check_proba(proba, n, k)
    pos_name = positive_class(names, positive)
    pos = None if pos_name is None else names.index(pos_name)

    confusion = _Confusion(t, p, k)
    auc: _Auc | _MacroAuc | None = None
    if scores is not None and np.unique(t).size >= 2:
        auc = _Auc(t == pos, scores[:, pos]) if pos is not None else _MacroAuc(t, scores)

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        out = _label_metrics(confusion(weights), pos)
        if auc is not None:
            out["roc_auc"] = auc(weights)
        return out

    point = {name: float(values[0]) for name, values in stats(np.ones((n, 1), dtype=np.int64)).items()}

    intervals: dict[str, Interval] = {}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, _CHUNK_CELLS // n)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n_boot, chunk):
            parts.append(stats(_resample_weights(rng, n, min(chunk, n_boot - start))))
        for name in point:
            interval = _percentile_interval(np.concatenate([part[name] for part in parts]))
            if interval is not None:
                intervals[name] = interval

    return Metrics(
        f1=point["f1"],
        accuracy=point["accuracy"],
        balanced_accuracy=point["balanced_accuracy"],
        precision=point["precision"],
        recall=point["recall"],
        roc_auc=point.get("roc_auc"),
        intervals=intervals,
        ece=None if scores is None else expected_calibration_error_codes(scores, t),
        n=n,
        ece_chance=None if scores is None else _chance_ece(scores.max(axis=1)),
    )


# ------------------------------------------------------------------------------------------------------------ plots


def _figure(width: float, height: float) -> Figure:
    # A bare Figure renders with the Agg canvas on savefig and never touches pyplot's global state or the GUI
    # backend, so it is safe in a server thread and in a notebook alike (matplotlib's advice for web servers);
    # ``matplotlib.use("Agg")`` would switch the backend of the whole process instead.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=100)
    return path


def confusion_matrix_png(y_true: Labels, y_pred: Labels, classes: Labels, path: Path, title: str = "") -> Path:
    """Draw the confusion matrix (rows true, columns predicted, ``classes`` order) with the count in each cell.

    Returns:
        ``path``, written atomically (parent folders created).

    Raises:
        ValueError: lengths differ or are 0, or a label is not in ``classes``.
    """
    names = _check_classes(classes)
    t = _encode(y_true, names, "y_true")
    p = _encode(y_pred, names, "y_pred")
    if len(p) != len(t):
        raise ValueError(f"y_true and y_pred: lengths differ ({len(t)} and {len(p)})")
    if len(t) == 0:
        raise ValueError("y_true: empty, nothing to plot")
    k = len(names)
    counts = np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    side = max(4.0, 1.5 + 0.7 * k)
    figure = _figure(side + 1.0, side)
    ax = figure.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax, shrink=0.8)
    names_text = [str(c) for c in names]
    tilt = k > 3  # long names overlap when there are many columns
    ax.set_xticks(range(k), labels=names_text, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), labels=names_text)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or f"Confusion matrix (n={len(t)})")
    threshold = counts.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                color="white" if counts[i, j] > threshold else "black",
            )
    return _save(figure, path)


def roc_curve_png(
    y_true: Labels,
    proba: np.ndarray,
    classes: Labels,
    path: Path,
    title: str = "",
    *,
    positive: str | None = None,
) -> Path:
    """Draw the ROC curve: the positive class's for two classes, one-vs-rest per class for more; AUC in the legend.

    Classes absent from ``y_true`` have no curve (a ROC curve needs positives and negatives). Call it when
    :attr:`Metrics.roc_auc` is not None.

    Returns:
        ``path``, written atomically (parent folders created).

    Raises:
        ValueError: a label not in ``classes``, ``proba`` of the wrong shape, ``positive`` not a class, or fewer than
            two classes present in ``y_true``.
    """
    from sklearn.metrics import roc_curve

    names = _check_classes(classes)
    t = _encode(y_true, names, "y_true")
    scores = _check_proba(proba, len(t), len(names))
    present = np.unique(t)
    if present.size < 2:
        only = "no items" if present.size == 0 else f"only class {names[int(present[0])]!r}"
        raise ValueError(f"y_true: {only}; a ROC curve needs at least two classes present")
    pos_name = positive_class(names, positive)
    curves = [names.index(pos_name)] if pos_name is not None else [int(c) for c in present]

    figure = _figure(5.5, 5.0)
    ax = figure.add_subplot()
    ones = np.ones((len(t), 1), dtype=np.int64)
    for c in curves:
        is_c = t == c
        fpr, tpr, _ = roc_curve(is_c, scores[:, c])
        area = float(_Auc(is_c, scores[:, c])(ones)[0])
        label = f"{names[c]} (AUC {area:.3f})" if pos_name is not None else f"{names[c]} vs rest (AUC {area:.3f})"
        ax.plot(fpr, tpr, linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.500)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title or f"ROC (n={len(t)})")
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)
