"""The registration gate, a pure decision: may the new best model be registered?

* it must beat every naive baseline: the lower end of its test interval of ``training.metric`` above the best
  baseline's value;
* if a champion exists, the champion's value on this same test split must not exceed the top of the challenger's
  interval (the challenger beats or ties it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.training.evaluate import Metrics

__all__ = ["GateDecision", "judge_gate", "metric_value"]


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger passed, why not, and the numbers behind it."""

    passed: bool
    metric: str
    value: float
    interval: tuple[float, float]
    best_baseline: str
    best_baseline_value: float
    champion_version: int | None
    champion_value: float | None
    dataset_version: str
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval)
        return out


def metric_value(metrics: Metrics, name: str) -> float:
    """A metric by name (NaN when it could not be computed, e.g. ROC-AUC on one class)."""
    value = getattr(metrics, name)
    return float("nan") if value is None else float(value)


def judge_gate(
    metric: str,
    challenger: Metrics,
    baselines: dict[str, Metrics],
    dataset_version: str,
    champion: tuple[int, Metrics] | None = None,
) -> GateDecision:
    """Judge the challenger's test metrics against the baselines and (when there is one) the champion's metrics on
    the same test split."""
    value = metric_value(challenger, metric)
    interval = challenger.intervals.get(metric)
    low, high = (interval.low, interval.high) if interval is not None else (value, value)
    reasons: list[str] = []
    best_baseline = max(baselines, key=lambda name: metric_value(baselines[name], metric))
    baseline_value = metric_value(baselines[best_baseline], metric)
    if not low > baseline_value:
        reasons.append(
            f"test {metric} interval [{low:.3f}, {high:.3f}] does not clear {best_baseline} {metric} "
            f"{baseline_value:.3f}"
        )
    champion_version, champion_value = None, None
    if champion is not None:
        champion_version, champion_value = champion[0], metric_value(champion[1], metric)
        if champion_value > high:
            reasons.append(
                f"champion v{champion_version} scores {metric} {champion_value:.3f} on this test split, above the "
                f"challenger's interval [{low:.3f}, {high:.3f}]"
            )
    return GateDecision(
        not reasons, metric, value, (low, high), best_baseline, baseline_value, champion_version, champion_value,
        dataset_version, reasons,
    )  # fmt: skip
