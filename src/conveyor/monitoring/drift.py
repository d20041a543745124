"""Data drift per column with Evidently's own tests, and its HTML report, built once per run.

Evidently does not read images; conveyor hands it tables: the champion's feature columns and image-level statistics.
The numbers come from Evidently's per-column drift tests (``evidently.legacy.calculations.stattests``), chosen as its
``DataDriftPreset`` chooses them (reference up to 1,000 rows: K-S for numbers, chi-square or a z-test for few values;
beyond: normed Wasserstein distance and Jensen-Shannon; thresholds p < 0.05 or distance >= 0.1), so the verdicts
match the report's. They are computed directly because Evidently's ``Report.run`` spends most of its time drawing
plots (about 6 s for 1,000 rows x 50 columns here, and growing with both), while the tests alone take a few seconds
for 10,000 rows x 200 columns. The HTML report is then drawn once, on the most drifted columns, with the same test
per column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from conveyor.errors import ConveyorError
from conveyor.workspace import atomic_path

__all__ = ["ColumnDrift", "DriftResult", "column_drift", "drift_report_html", "drift_table"]

ColumnKind = Literal["numerical", "categorical"]


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's drift test of one column: ``score`` is a p-value (drift when below ``threshold``) or a distance
    (drift when at or above it), as ``method`` says."""

    column: str
    group: str  # "features", "image" or "prediction"
    kind: ColumnKind
    method: str
    score: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftResult:
    """The drift tests of every column and the share that drifted."""

    columns: list[ColumnDrift] = field(default_factory=list)

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def share(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    def by_group(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for c in self.columns:
            entry = out.setdefault(c.group, {"columns": 0, "drifted": []})
            entry["columns"] += 1
            if c.drifted:
                entry["drifted"].append(c.column)
        for entry in out.values():
            entry["share"] = len(entry["drifted"]) / entry["columns"]
        return out

    def ranked(self) -> list[ColumnDrift]:
        """Drifted columns first, then by how far each is from its verdict (most drift-like first)."""

        def strength(c: ColumnDrift) -> float:
            is_p_value = _is_p_value(c.method)
            return (1.0 - c.score) if is_p_value else c.score

        return sorted(self.columns, key=lambda c: (not c.drifted, -strength(c)))


def _is_p_value(method: str) -> bool:
    return method in {
        "ks",
        "z",
        "chisquare",
        "fisher_exact",
        "anderson",
        "cramer_von_mises",
        "g_test",
        "t_test",
        "mannw",
        "epps_singleton",
        "empirical_mmd",
    }


def _registered(c: ColumnDrift) -> bool:
    """Whether Evidently can be told ``c.method`` by name for this column type (its default z-test for a two-valued
    numerical column is registered for categorical columns only: there the report's own default picks it anyway)."""
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    try:
        get_registered_stattest(c.method, ColumnType.Numerical if c.kind == "numerical" else ColumnType.Categorical)
    except Exception:  # StatTestNotFoundError / StatTestInvalidFeatureTypeError
        return False
    return True


def column_drift(
    reference: pd.Series,
    current: pd.Series,
    kind: ColumnKind,
    *,
    group: str = "features",
    threshold: float | None = None,
) -> ColumnDrift:
    """Evidently's default drift test for one column (missing values dropped first).

    Raises:
        ConveyorError: the reference or the current column has no value.
    """
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    ref, cur = reference.dropna(), current.dropna()
    if ref.empty or cur.empty:
        which = "reference" if ref.empty else "current"
        raise ConveyorError(f"drift of column {reference.name!r}: the {which} data has no value")
    column_type = ColumnType.Numerical if kind == "numerical" else ColumnType.Categorical
    if kind == "categorical":
        ref, cur = ref.astype(str), cur.astype(str)
    with np.errstate(divide="ignore", invalid="ignore"):  # constant columns: Evidently divides by a zero spread
        test = get_stattest(ref, cur, column_type, None)
        result = test(ref, cur, column_type, threshold)
    score = float(result.drift_score)
    if math.isnan(score):  # a constant column on both sides: nothing moved
        score, drifted = (1.0, False) if _is_p_value(test.name) else (0.0, False)
    else:
        drifted = bool(result.drifted)
    return ColumnDrift(str(reference.name), group, kind, test.name, score, float(result.actual_threshold), drifted)


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: Mapping[str, ColumnKind],
    *,
    groups: Mapping[str, str] | None = None,
    threshold: float | None = None,
) -> DriftResult:
    """The drift test of every column in ``kinds`` (columns of both frames), in that order.

    Cost: one pass over each reference column (sorting, for the distance tests), so it grows linearly with the
    reference, and nothing else does. Columns with no value on either side are skipped.
    """
    result = DriftResult()
    for column, kind in kinds.items():
        ref, cur = reference[column], current[column]
        if ref.isna().all() or cur.isna().all():
            continue
        group = (groups or {}).get(column, "features")
        result.columns.append(column_drift(ref, cur, kind, group=group, threshold=threshold))
    return result


def drift_report_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    drift: DriftResult,
    path: Path,
    *,
    max_columns: int = 24,
    max_reference_rows: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Draw Evidently's data-drift report of the ``max_columns`` most drifted columns to ``path`` (written atomically).

    Each column is drawn with the test that :func:`drift_table` ran on it. A reference longer than
    ``max_reference_rows`` is drawn from a seeded sample of that many rows (the plots cost grows with the rows; the
    numbers in the JSON summary always come from the whole reference).

    Returns:
        What the report shows: ``columns``, ``reference_rows``, ``sampled`` and Evidently's own drifted share of them.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    chosen: Sequence[ColumnDrift] = drift.ranked()[:max_columns]
    if not chosen:
        raise ConveyorError("the drift report needs at least one column with values on both sides")
    names = [c.column for c in chosen]
    sampled = len(reference) > max_reference_rows
    ref = reference.sample(max_reference_rows, random_state=seed) if sampled else reference
    ref, cur = ref[names].copy(), current[names].copy()
    numerical = [c.column for c in chosen if c.kind == "numerical"]
    categorical = [c.column for c in chosen if c.kind == "categorical"]
    for name in categorical:
        ref[name], cur[name] = ref[name].astype(str), cur[name].astype(str)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=names,
        per_column_method={c.column: c.method for c in chosen if _registered(c)},
        per_column_threshold={c.column: c.threshold for c in chosen},
    )
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(cur.reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(ref.reset_index(drop=True), data_definition=definition),
    )
    with atomic_path(path) as tmp:
        snapshot.save_html(str(tmp))
    share = None
    for metric in snapshot.dict()["metrics"]:
        if str(metric.get("metric_name", "")).startswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    return {"columns": names, "reference_rows": len(ref), "sampled": sampled, "evidently_drift_share": share}
