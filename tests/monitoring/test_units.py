"""Pure parts of monitoring: drift tests, OOD, alert rules, retrain policy, webhook, settings."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from conveyor.errors import ConveyorError
from conveyor.monitoring.alerts import Alert, evaluate_rules, post_webhook
from conveyor.monitoring.drift import column_drift, drift_table
from conveyor.monitoring.ood import OODDetector
from conveyor.monitoring.policy import decide_retrain
from conveyor.monitoring.settings import AlertRules, MonitoringSettings, RetrainPolicy
from conveyor.training.evaluate import Interval
from conveyor.training.subgroups import TOO_FEW, GroupResult, SubgroupReport, falls_behind


def frames(n_ref: int, n_cur: int, shift: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(size=n_ref), "b": rng.normal(size=n_ref), "fmt": ["PNG"] * n_ref})
    cur = pd.DataFrame({"a": rng.normal(size=n_cur) + shift, "b": rng.normal(size=n_cur), "fmt": ["PNG"] * n_cur})
    return ref, cur


@pytest.mark.parametrize(
    ("n_ref", "method"),
    [(500, "ks"), (5000, "wasserstein")],  # Evidently's choice: K-S up to 1,000 reference rows, Wasserstein beyond
)
def test_drift_uses_evidentlys_default_test_and_flags_the_moved_column(n_ref: int, method: str) -> None:
    ref, cur = frames(n_ref, 2000, shift=2.0)
    result = drift_table(ref, cur, {"a": "numerical", "b": "numerical", "fmt": "categorical"})
    assert [c.method for c in result.columns[:2]] == [method, method]
    assert result.drifted_columns == ["a"]
    assert result.share == pytest.approx(1 / 3)


def test_a_constant_column_on_both_sides_has_not_drifted() -> None:
    drift = column_drift(pd.Series([8] * 50, name="bit_depth"), pd.Series([8] * 10, name="bit_depth"), "numerical")
    assert drift.drifted is False


def test_a_new_format_is_drift() -> None:
    drift = column_drift(pd.Series(["PNG"] * 50, name="f"), pd.Series(["JPEG"] * 10, name="f"), "categorical")
    assert (drift.method, drift.drifted) == ("z", True)


def test_drift_of_an_empty_column_is_an_error() -> None:
    with pytest.raises(ConveyorError, match="current data has no value"):
        column_drift(pd.Series([1.0, 2.0], name="x"), pd.Series([np.nan], name="x"), "numerical")


def test_ood_flags_far_rows_and_few_near_ones() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(400, 10))
    detector = OODDetector(quantile=0.99).fit(reference)
    near = detector.flags(rng.normal(size=(400, 10))).mean()
    assert near < 0.05
    assert detector.flags(rng.normal(size=(20, 10)) + 6.0).all()


def test_ood_needs_a_reference() -> None:
    with pytest.raises(ConveyorError, match="at least 3 rows"):
        OODDetector().fit(np.zeros((2, 4)))


@pytest.mark.parametrize(
    ("drift_share", "score", "ood_share", "fired"),
    [
        (0.0, 0.95, 0.0, []),
        (0.5, 0.95, 0.0, ["drift_share"]),  # a rule fires at its threshold
        (0.1, 0.85, 0.0, ["metric_drop"]),  # 0.95 - 0.85 = 0.10
        (0.1, None, 0.3, ["ood_share"]),  # no labels: no metric rule
        (0.9, 0.5, 0.9, ["drift_share", "metric_drop", "ood_share"]),
    ],
)
def test_alert_rules(drift_share: float, score: float | None, ood_share: float, fired: list[str]) -> None:
    rules = AlertRules(drift_share=0.5, metric_drop=0.1, ood_share=0.2)
    alerts = evaluate_rules(
        rules, drift_share=drift_share, drifted_columns=["x"], metric="balanced_accuracy", score=score,
        champion_score=0.95, ood_share=ood_share,
    )  # fmt: skip
    assert [a.rule for a in alerts] == fired


def test_the_drop_alert_names_the_metric() -> None:
    rules = AlertRules(drift_share=None, metric_drop=0.1, ood_share=None)
    (alert,) = evaluate_rules(
        rules, drift_share=None, drifted_columns=[], metric="roc_auc", score=0.7, champion_score=0.9, ood_share=None
    )
    assert alert.message == "roc_auc 0.700 on the batch is 0.200 below the champion's test roc_auc 0.900 (rule: 0.100)"


def test_the_old_f1_drop_setting_still_sets_the_rule() -> None:
    assert AlertRules.model_validate({"f1_drop": 0.25}).metric_drop == 0.25


def test_a_rule_set_to_none_never_fires() -> None:
    rules = AlertRules(drift_share=None, metric_drop=None, ood_share=None)
    assert (
        evaluate_rules(
            rules, drift_share=1.0, drifted_columns=[], metric="f1", score=0.0, champion_score=1.0, ood_share=1.0
        )
        == []
    )


def _coverage(covered: int, n: int, target: float = 0.9) -> dict[str, Any]:
    from conveyor.models.conformal import binomial_interval

    low, high = binomial_interval(covered, n)
    return {"target": target, "n": n, "coverage": covered / n, "low": low, "high": high}


def _coverage_alerts(coverage: dict[str, Any], rules: AlertRules | None = None) -> list[Alert]:
    return evaluate_rules(
        rules or AlertRules(drift_share=None, metric_drop=None, ood_share=None), drift_share=None,
        drifted_columns=[], metric="f1", score=None, champion_score=None, ood_share=None, coverage=coverage,
    )  # fmt: skip


def test_coverage_under_target_by_more_than_its_interval_fires() -> None:
    (alert,) = _coverage_alerts(_coverage(70, 100))  # 95% interval [0.60, 0.79]: wholly under 0.9
    assert (alert.rule, alert.value, alert.threshold) == ("coverage", 0.7, 0.9)
    assert alert.message.startswith("the prediction sets held the true class for 70.0% of 100 labelled inputs")


def test_coverage_under_target_within_its_interval_does_not_fire() -> None:
    assert _coverage_alerts(_coverage(16, 20)) == []  # 0.80, but 20 cases: the interval [0.56, 0.94] reaches 0.9


def test_the_coverage_rule_can_be_switched_off() -> None:
    rules = AlertRules(drift_share=None, metric_drop=None, ood_share=None, coverage=False)
    assert _coverage_alerts(_coverage(10, 100), rules) == []


def _subgroup_report(*groups: GroupResult, whole: float | None = 0.9) -> SubgroupReport:
    return SubgroupReport("accuracy", 20, sum(g.n for g in groups), whole, 0.9, list(groups))


def _site(value: str, n: int, metric: float | None, low: float, high: float, whole: float = 0.9) -> GroupResult:
    interval = Interval(low, high)
    return GroupResult("site", value, n, metric, interval, metric, interval, None, falls_behind(whole, interval))


def _subgroup_alerts(report: SubgroupReport, rules: AlertRules | None = None) -> list[Alert]:
    return evaluate_rules(
        rules or AlertRules(drift_share=None, metric_drop=None, ood_share=None), drift_share=None,
        drifted_columns=[], metric="accuracy", score=None, champion_score=None, ood_share=None, subgroups=report,
    )  # fmt: skip


def test_a_subgroup_behind_the_whole_by_more_than_its_interval_fires() -> None:
    report = _subgroup_report(_site("A", 160, 0.97, 0.94, 0.99), _site("B", 40, 0.5, 0.35, 0.65))
    (alert,) = _subgroup_alerts(report)
    assert (alert.rule, alert.value, alert.threshold) == ("subgroup", 0.5, 0.9)
    assert alert.message == (
        "1 subgroup(s) fall behind the whole batch's accuracy 0.900 by more than their 95% interval: "
        "site 'B': 0.500 [0.350, 0.650] on 40"
    )


def test_a_subgroup_whose_interval_reaches_the_whole_does_not_fire() -> None:
    assert _subgroup_alerts(_subgroup_report(_site("B", 25, 0.8, 0.62, 0.93))) == []


def test_a_group_with_too_few_cases_never_fires() -> None:
    assert _subgroup_alerts(_subgroup_report(GroupResult("site", "C", 3, note=TOO_FEW))) == []


def test_the_subgroup_rule_can_be_switched_off() -> None:
    rules = AlertRules(drift_share=None, metric_drop=None, ood_share=None, subgroup=False)
    assert _subgroup_alerts(_subgroup_report(_site("B", 40, 0.5, 0.35, 0.65)), rules) == []


DRIFT = Alert("drift_share", 0.8, 0.5, "80% of columns drifted")
DROP = Alert("metric_drop", 0.3, 0.1, "balanced_accuracy dropped")
UNCOVERED = Alert("coverage", 0.7, 0.9, "the prediction sets held the true class for 70.0%")


@pytest.mark.parametrize(
    ("alerts", "new_labelled", "retrain", "reason_start"),
    [
        ([], 0, False, "no rule fired and 0 new labelled images"),
        ([], 200, True, "200 new labelled images since the champion's data"),
        ([DROP], 5, True, "balanced_accuracy dropped"),
        ([DRIFT], 20, True, "80% of columns drifted"),
        ([DRIFT], 3, False, "drift, but only 3 new labelled images"),
        ([DRIFT, DROP], 3, True, "balanced_accuracy dropped; drift, but only 3"),
        ([UNCOVERED], 5, True, "the prediction sets held the true class for 70.0%"),
    ],
)
def test_retrain_policy(alerts: list[Alert], new_labelled: int, retrain: bool, reason_start: str) -> None:
    decision = decide_retrain(RetrainPolicy(min_new_labelled=200, min_labelled_for_drift=10), alerts, new_labelled)
    assert decision.retrain is retrain
    assert decision.reason.startswith(reason_start)
    assert decision.new_labelled == new_labelled


def test_retrain_policy_can_ignore_drift_and_drops() -> None:
    policy = RetrainPolicy(on_drift=False, on_performance_drop=False)
    assert decide_retrain(policy, [DRIFT, DROP], 50).retrain is False


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Any:
    _Recorder.received = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Recorder.received
    server.shutdown()
    server.server_close()


def test_webhook_posts_json(webhook: Any) -> None:
    url, received = webhook
    result = post_webhook(url, {"alerts": [{"rule": "drift_share"}]})
    assert result == {"url": url, "sent": True, "status": 204}
    assert received == [{"path": "/hook", "type": "application/json", "body": {"alerts": [{"rule": "drift_share"}]}}]


def test_a_dead_webhook_is_reported_not_raised() -> None:
    result = post_webhook("http://127.0.0.1:9/nothing", {"x": 1}, timeout=2)
    assert result["sent"] is False and "error" in result


def test_monitoring_settings_defaults() -> None:
    assert MonitoringSettings().alerts.drift_share == 0.5


def test_the_judgement_is_pure_and_fires_the_rules_it_should() -> None:
    """No workspace, no MLflow, no network: a shifted feature table and a model that misses every tumour."""
    from conveyor.config import Settings
    from conveyor.monitoring.inputs import Champion, Current, Reference
    from conveyor.monitoring.monitor import judge
    from conveyor.tracking.pyfunc import ModelSpec

    rng = np.random.default_rng(0)
    spec = ModelSpec("features", {}, [("stats", {})], ["no_tumour", "tumour"], "tumour", "logreg", "stats", "v1")
    champion = Champion(1, None, spec, {"test_balanced_accuracy": 0.95, "test_f1": 0.95})
    labels = ["no_tumour", "tumour"] * 100
    reference = Reference(
        "v1", [f"r{i}" for i in range(200)], labels, pd.DataFrame({"a": rng.normal(size=200)}), pd.DataFrame()
    )
    proba = np.tile([0.9, 0.1], (40, 1))  # always "no_tumour"
    current = Current(
        "batch",
        "test",
        [f"c{i}" for i in range(40)],
        proba,
        ["tumour"] * 40,
        pd.DataFrame({"a": rng.normal(size=40) + 3}),
    )
    settings = Settings(monitoring={"alerts": {"drift_share": 0.5, "metric_drop": 0.1, "ood_share": 0.2}})  # type: ignore[arg-type]
    judgement = judge(settings, champion, reference, current, new_labelled=40)
    assert judgement.drift_share == 1.0
    assert (judgement.metric, judgement.score, judgement.f1) == ("balanced_accuracy", 0.0, 0.0)
    assert {a.rule for a in judgement.alerts} == {"drift_share", "metric_drop", "ood_share"}
    assert judgement.decision.retrain is True
