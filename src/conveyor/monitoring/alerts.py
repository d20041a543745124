"""Alert rules over a monitoring summary, and the webhook that carries fired ones to a person."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from conveyor.monitoring.settings import AlertRules
from conveyor.training.subgroups import SubgroupReport

__all__ = ["Alert", "evaluate_rules", "post_webhook"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """One fired rule: its name, the measured value, the threshold it reached, and a sentence."""

    rule: str
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reaches(value: float, threshold: float) -> bool:
    return value >= threshold - 1e-9  # 0.95 - 0.85 is 0.0999...: a drop of 0.1 reaches a rule of 0.1


def evaluate_rules(
    rules: AlertRules,
    *,
    drift_share: float | None,
    drifted_columns: list[str],
    metric: str,
    score: float | None,
    champion_score: float | None,
    ood_share: float | None,
    coverage: dict[str, Any] | None = None,
    subgroups: SubgroupReport | None = None,
) -> list[Alert]:
    """The rules that fire; a measure that is None (no labels, no champion test value) fires nothing. ``score`` is
    ``metric`` (``training.metric``) on the labelled batch, ``champion_score`` the champion's on its test split. Each
    fired rule is logged at WARNING. ``coverage`` is the prediction sets' report on the labelled inputs
    (:meth:`conveyor.models.conformal.MondrianConformal.evaluate`); ``subgroups`` the champion per subgroup of
    them (:func:`conveyor.training.subgroups.subgroup_report`)."""
    fired: list[Alert] = []
    if rules.drift_share is not None and drift_share is not None and _reaches(drift_share, rules.drift_share):
        shown = ", ".join(drifted_columns[:8]) + (" ..." if len(drifted_columns) > 8 else "")
        fired.append(
            Alert(
                "drift_share",
                drift_share,
                rules.drift_share,
                f"{drift_share:.0%} of columns drifted (rule: {rules.drift_share:.0%}): {shown}",
            )
        )
    if rules.metric_drop is not None and score is not None and champion_score is not None:
        drop = champion_score - score
        if _reaches(drop, rules.metric_drop):
            fired.append(
                Alert(
                    "metric_drop",
                    drop,
                    rules.metric_drop,
                    f"{metric} {score:.3f} on the batch is {drop:.3f} below the champion's test {metric} "
                    f"{champion_score:.3f} (rule: {rules.metric_drop:.3f})",
                )
            )
    if rules.ood_share is not None and ood_share is not None and _reaches(ood_share, rules.ood_share):
        fired.append(
            Alert(
                "ood_share",
                ood_share,
                rules.ood_share,
                f"{ood_share:.0%} of inputs are out of the training distribution (rule: {rules.ood_share:.0%})",
            )
        )
    below = coverage is not None and coverage["high"] is not None and coverage["high"] < coverage["target"]
    if rules.coverage and coverage is not None and below:
        fired.append(
            Alert(
                "coverage",
                coverage["coverage"],
                coverage["target"],
                f"the prediction sets held the true class for {coverage['coverage']:.1%} of {coverage['n']} "
                f"labelled inputs, below the {coverage['target']:.0%} promised (95% interval "
                f"[{coverage['low']:.3f}, {coverage['high']:.3f}]): the cases have shifted from the calibration",
            )
        )
    behind = subgroups.behind if subgroups is not None else []
    if rules.subgroup and subgroups is not None and subgroups.whole is not None and behind:
        worst = behind[0]
        shown = "; ".join(
            f"{g.attribute} {g.value!r}: {g.metric:.3f} [{g.metric_interval.low:.3f}, {g.metric_interval.high:.3f}] "
            f"on {g.n}"
            for g in behind[:5]
            if g.metric is not None and g.metric_interval is not None
        )
        more = f" and {len(behind) - 5} more" if len(behind) > 5 else ""
        fired.append(
            Alert(
                "subgroup",
                float(worst.metric or 0.0),
                subgroups.whole,
                f"{len(behind)} subgroup(s) fall behind the whole batch's {subgroups.metric} {subgroups.whole:.3f} by "
                f"more than their 95% interval: {shown}{more}",
            )
        )
    for alert in fired:
        log.warning("monitoring alert %s: %s", alert.rule, alert.message)
    return fired


def post_webhook(url: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """POST ``payload`` as JSON to ``url``; never raises (a dead webhook must not lose the monitoring run).

    Returns:
        ``{"url", "sent": bool, "status"}`` or ``{"url", "sent": False, "error"}``.
    """
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "conveyor-monitor"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("monitoring webhook %s failed: %s", url, exc)
        return {"url": url, "sent": False, "error": str(exc)}
    return {"url": url, "sent": 200 <= status < 300, "status": status}
