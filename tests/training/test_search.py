"""The search: one candidate table, three modes (race, grid, refit), and the policy that picks the mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from conveyor.training.evaluate import Scorer
from conveyor.training.search import choose_mode, race_schedule, search, stratified_subset

FOLDS = 3


def families() -> dict[str, tuple[Any, dict[str, list[Any]]]]:
    logreg = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))])
    svm = Pipeline([("scale", StandardScaler()), ("clf", SVC())])
    return {"logreg": (logreg, {"clf__C": [0.01, 1.0]}), "svm": (svm, {"clf__C": [0.1, 1.0, 10.0]})}


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four tables of 360 rows: two informative, two noise."""
    X, y = make_classification(n_samples=360, n_features=12, n_informative=6, random_state=0)
    noise = np.random.default_rng(0).normal(size=(360, 12))
    return {"good": X, "half": np.hstack([X[:, :3], noise[:, :3]]), "noise": noise, "noise2": noise[:, ::-1]}, y


def run(mode: str, data: tuple[dict[str, np.ndarray], np.ndarray], **options: Any) -> Any:
    tables, y = data
    defaults: dict[str, Any] = {
        "folds": FOLDS, "scorer": Scorer("f1", 2, 1), "seed": 0, "min_samples": 40, "finalists": 2, "jobs": 1
    }  # fmt: skip
    return search(mode, families(), tables, y, **{**defaults, **options})  # type: ignore[arg-type]


def names(outcome: Any) -> list[str]:
    return sorted(c.name for c in outcome.ranking)


TABLE = sorted(f"{fam}@{table}" for fam in ("logreg", "svm") for table in ("good", "half", "noise", "noise2"))


@pytest.mark.parametrize(
    ("n", "expected"),
    [(4500, [166, 500, 1500]), (360, [40, 120]), (96, [96]), (300, [100])],
)
def test_race_schedule_grows_by_the_factor_down_to_the_smallest_subset(n: int, expected: list[int]) -> None:
    assert race_schedule(n, 2, factor=3, min_samples=40 if n == 360 else 100, folds=3) == expected


def test_stratified_subsets_are_nested_and_keep_the_class_shares() -> None:
    y = np.array([0] * 300 + [1] * 100)
    small, large = stratified_subset(y, 40, seed=1, min_per_class=3), stratified_subset(y, 200, seed=1, min_per_class=3)
    assert set(small) <= set(large)
    assert (np.bincount(y[small]).tolist(), np.bincount(y[large]).tolist()) == ([30, 10], [150, 50])


def test_grid_scores_every_candidate_as_grid_search_cv_does(data: Any) -> None:
    tables, y = data
    outcome = run("grid", data)
    assert names(outcome) == TABLE
    assert all(c.final for c in outcome.ranking)
    cv = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    for candidate in outcome.ranking:
        estimator, grid = families()[candidate.family]
        reference = GridSearchCV(estimator, grid, cv=cv, scoring="f1").fit(tables[candidate.extractor], y)
        assert candidate.params == reference.best_params_
        assert candidate.cv_mean == pytest.approx(reference.best_score_)


@pytest.mark.parametrize("metric", ["balanced_accuracy", "roc_auc"])
def test_the_grid_scores_by_the_configured_metric(data: Any, metric: str) -> None:
    tables, y = data
    outcome = run("grid", ({"half": tables["half"]}, y), scorer=Scorer(metric, 2, 1))
    cv = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    for candidate in outcome.ranking:
        estimator, grid = families()[candidate.family]
        reference = GridSearchCV(estimator, grid, cv=cv, scoring=metric).fit(tables["half"], y)
        assert candidate.params == reference.best_params_
        assert candidate.cv_mean == pytest.approx(reference.best_score_)


def test_a_changed_metric_calls_for_a_new_search() -> None:
    chosen, reason = choose_mode(
        "auto", previous=(100, ["a"], ["logreg"]), n_train=101, extractors=["a"], families=["logreg"], drift=False,
        new_search_share=0.5, new_search_on_drift=True, metric_changed=True,
    )  # fmt: skip
    assert chosen == "race"
    assert reason == "training.metric changed since the last search: its ranking was by another metric"


def test_race_ranks_the_same_table_and_its_finalists_score_as_in_the_grid(data: Any) -> None:
    race, grid = run("race", data), run("grid", data)
    assert names(race) == TABLE
    assert [c.stage for c in race.ranking[:2]] == ["final", "final"]
    assert all(c.stage.startswith("round ") for c in race.ranking[2:])
    by_name = {c.name: c for c in grid.ranking}
    for finalist in race.finalists:
        assert (finalist.cv_mean, finalist.params) == (by_name[finalist.name].cv_mean, by_name[finalist.name].params)
    assert race.fits < grid.fits
    assert {c.extractor for c in race.finalists} <= {"good", "half"}


def test_race_rounds_shrink_by_the_factor(data: Any) -> None:
    outcome = run("race", data)
    assert [(r.n, r.folds, r.configs) for r in outcome.rounds] == [(40, 3, 8), (120, 3, 3), (360, 3, 5)]


def test_refit_scores_exactly_the_previous_parameters(data: Any) -> None:
    previous = [
        {"extractor": "half", "family": "svm", "params": {"clf__C": 10.0}},
        {"extractor": "gone", "family": "svm", "params": {"clf__C": 1.0}},  # no longer in the table: skipped
        {"extractor": "good", "family": "logreg", "params": {"clf__C": 0.01}},
    ]
    outcome = run("refit", data, previous=previous)
    assert sorted((c.name, c.params["clf__C"]) for c in outcome.ranking) == [("logreg@good", 0.01), ("svm@half", 10.0)]
    assert outcome.fits == 2 * FOLDS


def test_refit_without_a_usable_previous_candidate_says_so(data: Any) -> None:
    with pytest.raises(ValueError, match="none of the previous search's candidates"):
        run("refit", data, previous=[{"extractor": "gone", "family": "svm", "params": {}}])


def test_finalists_carry_out_of_fold_scores_for_calibration(data: Any) -> None:
    _, y = data
    best = run("race", data).ranking[0]
    assert best.oof_scores is not None and best.oof_scores.shape == (len(y), 2)
    assert np.count_nonzero(best.oof_scores.any(axis=1)) == len(y)  # every row held out once


SAME = (100, ["a", "all"], ["logreg"])


@pytest.mark.parametrize(
    ("requested", "previous", "n_train", "drift", "mode", "why"),
    [
        ("auto", None, 100, False, "race", "no previous search"),
        ("auto", SAME, 120, False, "refit", "grew by 20%"),
        ("auto", SAME, 150, False, "race", "grew by 50%"),
        ("auto", SAME, 110, True, "race", "drift"),
        ("auto", (100, ["a"], ["logreg"]), 100, False, "race", "candidate table changed"),
        ("refit", None, 100, False, "race", "no previous search to refit"),
        ("grid", SAME, 100, False, "grid", "asked for grid"),
        ("refit", SAME, 300, True, "refit", "asked for refit"),
    ],
)
def test_retrain_policy_chooses_the_search(
    requested: str, previous: Any, n_train: int, drift: bool, mode: str, why: str
) -> None:
    chosen, reason = choose_mode(
        requested, previous=previous, n_train=n_train, extractors=["all", "a"], families=["logreg"], drift=drift,
        new_search_share=0.5, new_search_on_drift=True,
    )  # fmt: skip
    assert chosen == mode
    assert why in reason


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown search mode 'fast'"):
        choose_mode("fast", previous=None, n_train=1, extractors=[], families=[], drift=False, new_search_share=0.5,
                    new_search_on_drift=True)  # fmt: skip


@pytest.mark.parametrize(("within_se", "finals"), [(2.0, ["logreg@good", "svm@good"]), (0.0, 4)])
def test_candidates_clearly_behind_the_leader_skip_the_final(data: Any, within_se: float, finals: Any) -> None:
    tables, y = data
    noisy = {"good": tables["good"], "noise": tables["noise"], "noise2": tables["noise2"]}
    outcome = run("race", (noisy, y), finalists=4, within_se=within_se)
    names_in_final = sorted(c.name for c in outcome.finalists)
    assert names_in_final == finals if isinstance(finals, list) else len(names_in_final) == finals


def test_a_search_run_in_this_process_leaves_it_running(data: Any) -> None:
    """With one job the fits run here: the watch that ends orphaned workers must never be started in their caller."""
    from conveyor import workspace

    run("refit", data, previous=[{"extractor": "good", "family": "logreg", "params": {"clf__C": 1.0}}], jobs=1)
    assert workspace._WATCHING_PARENT is False


def test_grouped_folds_never_split_a_group() -> None:
    from conveyor.training.search import cv_splits

    y = np.array([0, 1] * 60)
    groups = np.arange(120) // 4  # 30 patients of 4 images
    for train, val in cv_splits(y, np.arange(120), 3, seed=0, groups=groups):
        assert not set(groups[train]) & set(groups[val])
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(120))


def test_a_grouped_grid_scores_as_grid_search_cv_with_grouped_folds_does(data: Any) -> None:
    from sklearn.model_selection import StratifiedGroupKFold

    tables, y = data
    groups = np.arange(len(y)) // 3
    outcome = run("grid", ({"good": tables["good"]}, y), groups=groups)
    assert sorted(c.name for c in outcome.ranking) == ["logreg@good", "svm@good"]
    cv = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=0)
    for candidate in outcome.ranking:
        estimator, grid = families()[candidate.family]
        reference = GridSearchCV(estimator, grid, cv=cv, scoring="f1").fit(tables["good"], y, groups=groups)
        assert candidate.params == reference.best_params_
        assert candidate.cv_mean == pytest.approx(reference.best_score_)
