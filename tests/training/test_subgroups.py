"""Subgroup performance: each group's metric with its interval beside the whole, small groups unscored, and the
test split's subgroups reported by training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.training.evaluate import Interval, evaluate
from conveyor.training.subgroups import TOO_FEW, falls_behind, subgroup_report
from conveyor.training.train import TrainResult, train
from tests.training.test_train import small_settings

CLASSES = ["no", "yes"]


def _confident(labels: list[str], right: list[bool]) -> np.ndarray:
    """Probabilities that put 0.9 on the true class where ``right``, else on the other one."""
    rows = []
    for label, ok in zip(labels, right, strict=True):
        yes = 0.9 if (label == "yes") == ok else 0.1
        rows.append([1 - yes, yes])
    return np.array(rows)


@pytest.mark.parametrize(
    ("whole", "interval", "behind"),
    [
        (0.9, Interval(0.5, 0.7), True),
        (0.9, Interval(0.5, 0.9), False),  # touching the whole is within its interval
        (0.9, Interval(0.85, 0.95), False),
        (0.9, None, False),
        (None, Interval(0.1, 0.2), False),
    ],
)
def test_a_group_falls_behind_when_its_interval_is_wholly_below_the_whole(
    whole: float | None, interval: Interval | None, behind: bool
) -> None:
    assert falls_behind(whole, interval) is behind


def test_each_group_is_scored_as_evaluate_scores_its_items() -> None:
    labels = ["no", "yes"] * 30
    right = [True] * 50 + [False, True] * 5
    values = [{"scanner": "A"}] * 40 + [{"scanner": "B"}] * 20
    proba = _confident(labels, right)

    report = subgroup_report(labels, proba, CLASSES, values, metric="balanced_accuracy", min_cases=20, n_boot=200)

    predicted = [CLASSES[i] for i in proba.argmax(axis=1)]
    b = evaluate(labels[40:], predicted[40:], proba[40:], CLASSES, n_boot=200)
    found = {g.value: g for g in report.groups}
    assert [(g.attribute, g.value, g.n) for g in report.groups] == [("scanner", "A", 40), ("scanner", "B", 20)]
    assert found["B"].metric == b.balanced_accuracy and found["B"].metric_interval == b.intervals["balanced_accuracy"]
    assert found["B"].accuracy == pytest.approx(15 / 20)
    assert found["A"].accuracy == 1.0
    assert report.whole == pytest.approx(55 / 60) and report.n == 60


def test_a_group_under_min_cases_says_too_few_cases_and_has_no_score() -> None:
    labels = ["no", "yes"] * 15
    values = [{"sex": "F"}] * 27 + [{"sex": "M"}] * 3

    report = subgroup_report(labels, _confident(labels, [True] * 30), CLASSES, values, metric="f1", min_cases=20)

    small = report.groups[1]
    assert (small.value, small.n, small.note, small.metric, small.metric_interval) == ("M", 3, TOO_FEW, None, None)
    assert not small.behind


def test_a_much_worse_group_falls_behind_the_whole() -> None:
    labels = ["no", "yes"] * 100
    right = [True] * 160 + [False, False, True, False] * 10  # site B: 10 of 40 right
    values = [{"site": "A"}] * 160 + [{"site": "B"}] * 40

    report = subgroup_report(labels, _confident(labels, right), CLASSES, values, metric="accuracy", n_boot=500)

    assert [g.value for g in report.behind] == ["B"]
    assert report.behind[0].metric == 0.25 and report.whole == pytest.approx(170 / 200)


def test_an_attribute_with_one_value_and_items_without_values_are_not_groups() -> None:
    labels = ["no", "yes"] * 20
    values = [{"format": "png", "site": "A"}] * 30 + [None] * 5 + [{"format": "png", "site": "B"}] * 5

    report = subgroup_report(labels, _confident(labels, [True] * 40), CLASSES, values, metric="f1", min_cases=5)

    assert [(g.attribute, g.value, g.n) for g in report.groups] == [("site", "A", 30), ("site", "B", 5)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    """Demo data through a labels CSV that fixes the test split (the first 14 cases of each class) and names each
    image's scanner: B for the first 2 cases of each class (4 test images), A for the rest."""
    root = tmp_path_factory.mktemp("subgroups")
    settings = small_settings(root / "ws", subgroups={"min_cases": 10})
    paths = generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    lines = ["path,label,split,scanner"]
    for path in paths:
        index = int(path.stem.rsplit("_", 1)[1])
        split = "test" if index < 14 else "train"
        scanner = "B" if index < 2 else "A"
        lines.append(f"{path.relative_to(root / 'src').as_posix()},{path.parent.name},{split},{scanner}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    ingest(root / "src", settings, labels_csv=root / "labels.csv")
    return settings, train(settings)


def test_training_reports_the_test_splits_subgroups(trained) -> None:  # type: ignore[no-untyped-def]
    _, result = trained
    report = result.subgroups
    assert report.n == 28 and report.whole == result.calibrated.balanced_accuracy
    assert [(g.attribute, g.value, g.n, g.note) for g in report.groups] == [
        ("scanner", "A", 24, None),
        ("scanner", "B", 4, TOO_FEW),
    ]
    scanner_a = report.groups[0]
    assert scanner_a.metric is not None and scanner_a.metric_interval.low <= scanner_a.metric_interval.high
    assert result.to_dict()["subgroups"]["groups"][1] == {
        "attribute": "scanner", "value": "B", "n": 4, "metric": None, "metric_low": None, "metric_high": None,
        "accuracy": None, "accuracy_low": None, "accuracy_high": None, "note": TOO_FEW, "behind": False,
    }  # fmt: skip


def test_the_subgroups_are_an_artifact_of_the_training_run(trained) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    from conveyor.tracking.setup import configure_mlflow

    settings, result = trained
    configure_mlflow(settings)
    path = MlflowClient().download_artifacts(result.parent_run_id, "subgroups.json")
    assert json.loads(Path(path).read_text()) == result.subgroups.to_dict()
