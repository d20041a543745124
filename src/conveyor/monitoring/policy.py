"""The retrain policy: whether the newly labelled data, the drift or the performance drop call for training again."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.monitoring.alerts import Alert
from conveyor.monitoring.settings import RetrainPolicy

__all__ = ["RetrainDecision", "decide_retrain"]


@dataclass(frozen=True)
class RetrainDecision:
    """``retrain`` and every reason behind it (or why not)."""

    retrain: bool
    reason: str
    reasons: list[str] = field(default_factory=list)
    new_labelled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_retrain(policy: RetrainPolicy, alerts: list[Alert], new_labelled: int) -> RetrainDecision:
    """Decide from the fired alerts and the labelled images added since the champion's training data.

    Drift alone retrains only with ``min_labelled_for_drift`` new labelled images to learn the new distribution from
    (otherwise it stays an alert for a person); a performance drop always can (its labels are the new data).
    """
    fired = {a.rule for a in alerts}
    reasons: list[str] = []
    if new_labelled >= policy.min_new_labelled:
        reasons.append(
            f"{new_labelled} new labelled images since the champion's data (policy: {policy.min_new_labelled})"
        )
    for rule in ("metric_drop", "coverage"):  # the sets' coverage falling is a shift its labels can recalibrate on
        if policy.on_performance_drop and rule in fired:
            reasons.append(next(a.message for a in alerts if a.rule == rule))
    if policy.on_drift and "drift_share" in fired:
        if new_labelled >= policy.min_labelled_for_drift:
            reasons.append(next(a.message for a in alerts if a.rule == "drift_share"))
        else:
            reasons.append(
                f"drift, but only {new_labelled} new labelled images (policy: {policy.min_labelled_for_drift}): "
                "not retraining, label more of the new data"
            )
            retrain_reasons = [r for r in reasons if not r.startswith("drift, but")]
            return RetrainDecision(bool(retrain_reasons), "; ".join(reasons), reasons, new_labelled)
    if not reasons:
        why = f"no rule fired and {new_labelled} new labelled images (policy: {policy.min_new_labelled})"
        return RetrainDecision(False, why, [why], new_labelled)
    return RetrainDecision(True, "; ".join(reasons), reasons, new_labelled)
