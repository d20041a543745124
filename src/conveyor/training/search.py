"""Model search: which (feature table, family, parameters) to train, chosen by cross-validation on the training split.

The candidate table is every feature input (each extractor, and ``all`` side by side) crossed with every tabular
family; each candidate has its family's grid. Three modes choose from that same table:

* ``race`` (the default): successive halving across all candidates at once. Round 0 gives every candidate
  ``race.points_per_candidate`` grid points drawn at random, scored by ``race.folds``-fold CV on a small stratified
  subset of the training split; each round keeps the best ``1/race.factor`` of the configurations and triples the
  subset, so a candidate clearly out of the race costs a few fits on a few images. The ``race.finalists`` best
  candidates, those within ``race.within_se`` pooled standard errors of the leader in the last round, then search
  their whole grid with ``cv_folds``-fold CV on the whole training split: the scores the winner is chosen and
  reported by are exactly those of ``grid`` for the candidates that reach the final.
* ``grid``: every candidate's whole grid with ``cv_folds``-fold CV on the whole training split (the reference; slow).
* ``refit``: the previous search's ``race.refit_candidates`` best candidates, each with the parameters that search
  chose, cross-validated again on today's training split and the best refitted: what a retrain on a grown dataset
  does when nothing calls for a new search.

Every fit of a search (all candidates, all folds, all rounds) goes through one joblib pool. Nothing here touches
MLflow, files or the database: the caller loads the tables and records the outcome.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from conveyor.training.calibration import decision_scores
from conveyor.training.evaluate import Scorer

__all__ = [
    "SEARCH_MODES",
    "CandidateScore",
    "Config",
    "RoundSummary",
    "SearchMode",
    "SearchOutcome",
    "choose_mode",
    "race_schedule",
    "search",
    "stratified_subset",
]

SearchMode = Literal["race", "grid", "refit"]
SEARCH_MODES: tuple[str, ...] = ("race", "grid", "refit")


@dataclass(frozen=True)
class Config:
    """One candidate (feature table x family) at one point of its grid."""

    extractor: str
    family: str
    params: tuple[tuple[str, Any], ...]

    @property
    def candidate(self) -> str:
        return f"{self.family}@{self.extractor}"

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass
class CandidateScore:
    """A candidate's best configuration and its CV score, at the round it reached.

    ``stage`` is ``"final"`` for candidates scored by ``cv_folds``-fold CV on the whole training split (their scores
    compare with each other), else ``"round K"``: eliminated there, scored on ``n`` images by ``folds`` folds.
    """

    extractor: str
    family: str
    params: dict[str, Any]
    cv_mean: float
    cv_std: float
    n: int
    folds: int
    stage: str
    fits: int
    fit_seconds: float
    oof_scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.family}@{self.extractor}"

    @property
    def final(self) -> bool:
        return self.stage == "final"


@dataclass(frozen=True)
class RoundSummary:
    """One round of the search: its subset size, folds, and how many configurations went in and came out."""

    round: int
    n: int
    folds: int
    configs: int
    kept: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("round", "n", "folds", "configs", "kept", "seconds")}


@dataclass
class SearchOutcome:
    """The ranking (finalists by CV score, best first, then the eliminated by the round they reached) and how the
    search went."""

    mode: str
    ranking: list[CandidateScore]
    rounds: list[RoundSummary]
    fits: int
    seconds: float

    @property
    def finalists(self) -> list[CandidateScore]:
        return [c for c in self.ranking if c.final]


@dataclass(frozen=True)
class _Task:
    config: Config
    train: np.ndarray
    val: np.ndarray
    fold: int


Progress = Callable[[int, int, str | None, float | None], None]


def stratified_subset(y: np.ndarray, size: int, seed: int, min_per_class: int) -> np.ndarray:
    """Indices of a stratified subset of about ``size`` items, each class in proportion (at least ``min_per_class``).

    One seeded permutation per class, cut at the class's share: a larger ``size`` with the same seed gives a
    superset, so the rounds of a race see growing, nested subsets.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    taken = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        order = rng.permutation(members)
        share = max(min_per_class, round(size * len(members) / n))
        taken.append(order[: min(share, len(members))])
    return np.sort(np.concatenate(taken))


def race_schedule(n: int, n_classes: int, factor: int, min_samples: int, folds: int) -> list[int]:
    """Subset sizes of the race rounds, smallest first: ``n / factor**k`` for every k >= 1 that leaves at least
    ``min_samples`` images (and two per class per fold); a training split too small for that gets one screening
    round on all of it."""
    floor = max(min_samples, 2 * folds * n_classes)
    sizes: list[int] = []
    size = n // factor
    while size >= floor:
        sizes.insert(0, size)
        size //= factor
    return sizes or [n]


def _grid_points(grid: dict[str, list[Any]]) -> list[tuple[tuple[str, Any], ...]]:
    from sklearn.model_selection import ParameterGrid

    return [tuple(sorted(point.items())) for point in ParameterGrid(grid)] if grid else [()]


def _fit_fold(
    estimator: Any, X: Any, y: np.ndarray, task: _Task, scorer: Scorer, keep_scores: bool, parent: int
) -> Any:
    """Fit a clone on the task's training part; its score (``training.metric``) on the held-out part (and its
    scores there, when kept)."""
    from sklearn.base import clone

    from conveyor.compute import in_this_process
    from conveyor.workspace import exit_with_parent

    exit_with_parent(parent)  # a worker of a killed search stops, instead of fitting on for minutes
    start = time.perf_counter()
    model = clone(estimator).set_params(**task.config.params_dict())
    with in_this_process():
        model.fit(X[task.train], y[task.train])
    held_out = X[task.val]
    predicted = model.predict(held_out)
    scores = decision_scores(model, held_out) if keep_scores or scorer.needs_scores else None
    score = scorer(y[task.val], predicted, scores)
    return score, scores if keep_scores else None, time.perf_counter() - start


def _indexed(index: int, *args: Any) -> tuple[int, Any]:
    return index, _fit_fold(*args)


class _Pool:
    """The one joblib pool of a search, counting fits for the progress callback."""

    def __init__(self, jobs: int, estimators: dict[str, Any], tables: dict[str, Any], y: np.ndarray) -> None:
        from joblib import Parallel

        self.parallel = Parallel(n_jobs=jobs, return_as="generator_unordered")
        self.estimators, self.tables, self.y = estimators, tables, y
        self.done = 0
        self.total = 0
        self.best: tuple[str, float] | None = None
        self.on_progress: Progress | None = None

    def __enter__(self) -> _Pool:
        self.parallel.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.parallel.__exit__(*exc)

    def run(
        self, tasks: list[_Task], scorer: Scorer, keep_scores: bool
    ) -> list[tuple[_Task, float, np.ndarray | None, float]]:
        from joblib import delayed

        results: list[Any] = [None] * len(tasks)
        calls = (
            delayed(_indexed)(
                i,
                self.estimators[t.config.family],
                self.tables[t.config.extractor],
                self.y,
                t,
                scorer,
                keep_scores,
                os.getpid(),
            )
            for i, t in enumerate(tasks)
        )
        for index, outcome in self.parallel(calls):
            results[index] = (tasks[index], *outcome)
            self.done += 1
            if self.on_progress is not None:
                best = self.best
                self.on_progress(self.done, self.total, best[0] if best else None, best[1] if best else None)
        return results


def cv_splits(
    y: np.ndarray, subset: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of ``subset``; with ``groups``, no group on both sides of a fold (``StratifiedGroupKFold``)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        cv: Any = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return [(subset[tr], subset[va]) for tr, va in cv.split(np.zeros(len(subset)), y[subset])]
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return [(subset[tr], subset[va]) for tr, va in cv.split(np.zeros(len(subset)), y[subset], groups[subset])]


def _scored(results: list[tuple[_Task, float, np.ndarray | None, float]]) -> dict[Config, dict[str, Any]]:
    """Per configuration: fold scores, seconds and (when kept) the out-of-fold scores in training-split order."""
    out: dict[Config, dict[str, Any]] = {}
    for task, score, scores, seconds in results:
        entry = out.setdefault(task.config, {"scores": {}, "seconds": 0.0, "parts": []})
        entry["scores"][task.fold] = score
        entry["seconds"] += seconds
        if scores is not None:
            entry["parts"].append((task.val, scores))
    for entry in out.values():
        folds = [entry["scores"][k] for k in sorted(entry["scores"])]
        entry["mean"], entry["std"] = float(np.mean(folds)), float(np.std(folds))
    return out


def _best_first(scored: dict[Config, dict[str, Any]], order: list[Config]) -> list[Config]:
    """Configurations by mean score, best first; ties keep their order in ``order`` (as GridSearchCV's ranking)."""
    position = {c: i for i, c in enumerate(order)}
    return sorted(scored, key=lambda c: (-scored[c]["mean"], position[c]))


def search(
    mode: SearchMode,
    families: dict[str, tuple[Any, dict[str, list[Any]]]],
    tables: dict[str, Any],
    y: np.ndarray,
    *,
    folds: int,
    scorer: Scorer,
    seed: int,
    factor: int = 3,
    min_samples: int = 100,
    race_folds: int = 3,
    points_per_candidate: int = 1,
    finalists: int = 3,
    within_se: float = 2.0,
    previous: Sequence[dict[str, Any]] = (),
    jobs: int = -1,
    on_progress: Progress | None = None,
    groups: np.ndarray | None = None,
) -> SearchOutcome:
    """Search the candidate table (every table in ``tables`` x every family) in ``mode``.

    Args:
        families: per family name, an unfitted estimator (its parameters set from the settings) and its grid.
        tables: the training split's feature matrix per input name, rows in ``y``'s order.
        y: class codes ``0 .. classes-1`` of the training split.
        scorer: the task's primary metric (``training.metric``), what every fold is scored by.
        groups: per training image, its CV group (:func:`conveyor.data.versions.cv_groups`): every fold keeps a group
            on one side. None: plain stratified folds.
        finalists, within_se: ``race`` sends at most ``finalists`` candidates to the final, and only those whose
            last-round score is within ``within_se`` pooled standard errors of the leader's (0: the top ones, however
            far behind).
        previous: for ``refit``, the previous search's ranking, best first: dicts with ``extractor``, ``family``,
            ``params``; those no longer in the table are skipped.

    Raises:
        ValueError: ``refit`` without a usable previous candidate, or an unknown mode.
    """
    start = time.perf_counter()
    estimators = {name: estimator for name, (estimator, _) in families.items()}
    candidate_points: dict[tuple[str, str], list[tuple[tuple[str, Any], ...]]] = {}
    for name, (_, grid) in families.items():
        for extractor in tables:
            candidate_points[(extractor, name)] = _grid_points(grid)
    everything = [Config(ex, fam, p) for (ex, fam), points in candidate_points.items() for p in points]
    rounds: list[RoundSummary] = []
    eliminated: list[CandidateScore] = []
    n = len(y)
    full = np.arange(n)
    with _Pool(jobs, estimators, tables, y) as pool:
        pool.on_progress = on_progress
        if mode == "grid":
            final_configs = everything
        elif mode == "refit":
            final_configs = _previous_configs(previous, candidate_points, finalists)
        elif mode == "race":
            final_configs = _race(
                pool, candidate_points, y, seed=seed, factor=factor, min_samples=min_samples, race_folds=race_folds,
                points_per_candidate=points_per_candidate, finalists=finalists, within_se=within_se, folds=folds,
                scorer=scorer, groups=groups,
                rounds=rounds, eliminated=eliminated,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown search mode {mode!r}; one of {SEARCH_MODES}")
        splits = cv_splits(y, full, folds, seed, groups)
        tasks = [_Task(c, tr, va, k) for c in final_configs for k, (tr, va) in enumerate(splits)]
        pool.total = pool.done + len(tasks)
        began = time.perf_counter()
        scored = _scored(pool.run(tasks, scorer, keep_scores=True))
        n_classes = len(np.unique(y))
        best_of: dict[str, Config] = {}
        for config in _best_first(scored, final_configs):
            best_of.setdefault(config.candidate, config)
        final: list[CandidateScore] = []
        for config in best_of.values():
            entry = scored[config]
            oof = np.zeros((n, n_classes))
            for val, part in entry["parts"]:
                oof[val, : part.shape[1]] = part
            fits = sum(len(scored[c]["scores"]) for c in scored if c.candidate == config.candidate)
            seconds = sum(scored[c]["seconds"] for c in scored if c.candidate == config.candidate)
            final.append(
                CandidateScore(
                    config.extractor, config.family, config.params_dict(), entry["mean"], entry["std"], n, folds,
                    "final", fits, seconds, oof,
                )
            )  # fmt: skip
        rounds.append(RoundSummary(len(rounds), n, folds, len(final_configs), len(final), time.perf_counter() - began))
        fits = pool.done
    final.sort(key=lambda c: (-c.cv_mean, c.cv_std))
    eliminated.sort(key=lambda c: (-int(c.stage.split()[-1]), -c.cv_mean))
    return SearchOutcome(mode, final + eliminated, rounds, fits, time.perf_counter() - start)


def _previous_configs(
    previous: Sequence[dict[str, Any]],
    candidate_points: dict[tuple[str, str], list[tuple[tuple[str, Any], ...]]],
    count: int,
) -> list[Config]:
    configs: list[Config] = []
    for entry in previous:
        key = (str(entry["extractor"]), str(entry["family"]))
        if key not in candidate_points:
            continue
        configs.append(Config(key[0], key[1], tuple(sorted(dict(entry["params"]).items()))))
        if len(configs) == count:
            break
    if not configs:
        raise ValueError("refit: none of the previous search's candidates is in today's candidate table")
    return configs


def _race(
    pool: _Pool,
    candidate_points: dict[tuple[str, str], list[tuple[tuple[str, Any], ...]]],
    y: np.ndarray,
    *,
    seed: int,
    factor: int,
    min_samples: int,
    race_folds: int,
    points_per_candidate: int,
    finalists: int,
    within_se: float,
    folds: int,
    scorer: Scorer,
    rounds: list[RoundSummary],
    eliminated: list[CandidateScore],
    groups: np.ndarray | None,
) -> list[Config]:
    """Successive halving over configurations on growing subsets; the finalists' whole grids, to score in full."""
    rng = np.random.default_rng(seed)
    alive: list[Config] = []
    for (extractor, fam), points in candidate_points.items():
        chosen = rng.choice(len(points), size=min(points_per_candidate, len(points)), replace=False)
        alive += [Config(extractor, fam, points[i]) for i in sorted(chosen)]
    if len(candidate_points) <= finalists:  # nothing to race: every candidate is a finalist
        return [Config(ex, fam, p) for (ex, fam), points in candidate_points.items() for p in points]
    n_classes = len(np.unique(y))
    sizes = race_schedule(len(y), n_classes, factor, min_samples, race_folds)
    counts = [len(alive)]
    for _ in sizes[1:]:
        counts.append(max(finalists, math.ceil(counts[-1] / factor)))
    last_scored: dict[Config, dict[str, Any]] = {}
    for index, size in enumerate(sizes):
        began = time.perf_counter()
        subset = stratified_subset(y, size, seed, min_per_class=race_folds)
        splits = cv_splits(y, subset, race_folds, seed, groups)
        tasks = [_Task(c, tr, va, k) for c in alive for k, (tr, va) in enumerate(splits)]
        mean_grid = sum(len(p) for p in candidate_points.values()) / len(candidate_points)
        planned = sum(counts[index + 1 :]) * race_folds + round(finalists * mean_grid * folds)
        pool.total = pool.done + len(tasks) + planned
        scored = _scored(pool.run(tasks, scorer, keep_scores=False))
        ranked = _best_first(scored, alive)
        top = ranked[0]
        pool.best = (top.candidate, scored[top]["mean"])
        keep = max(finalists, math.ceil(len(ranked) / factor)) if index < len(sizes) - 1 else len(ranked)
        survivors, out = ranked[:keep], ranked[keep:]
        _record_eliminated(out, survivors, scored, len(subset), race_folds, index, eliminated)
        rounds.append(RoundSummary(index, len(subset), race_folds, len(ranked), keep, time.perf_counter() - began))
        alive = survivors
        last_scored = scored
    chosen_candidates: list[tuple[str, str]] = []
    best_config: dict[tuple[str, str], Config] = {}
    for config in alive:  # best first
        key = (config.extractor, config.family)
        if key not in chosen_candidates:
            chosen_candidates.append(key)
            best_config[key] = config
    leader = last_scored[best_config[chosen_candidates[0]]]

    def in_reach(key: tuple[str, str]) -> bool:
        """Within ``within_se`` standard errors of the leader's mean (their errors pooled): not clearly out."""
        entry = last_scored[best_config[key]]
        pooled = math.sqrt((leader["std"] ** 2 + entry["std"] ** 2) / race_folds)
        return bool(within_se <= 0 or entry["mean"] >= leader["mean"] - within_se * pooled)

    finals = [key for key in chosen_candidates[:finalists] if in_reach(key)]
    rest = [key for key in chosen_candidates if key not in finals]
    losers = [c for c in alive if (c.extractor, c.family) in rest]
    _record_eliminated(losers, [c for c in alive if c not in losers], last_scored, len(subset), race_folds,
                       len(sizes) - 1, eliminated)  # fmt: skip
    return [Config(ex, fam, p) for ex, fam in finals for p in candidate_points[(ex, fam)]]


def _record_eliminated(
    out: list[Config],
    survivors: list[Config],
    scored: dict[Config, dict[str, Any]],
    n: int,
    folds: int,
    index: int,
    eliminated: list[CandidateScore],
) -> None:
    """A candidate leaves the race when its last configuration does; it is recorded with its best one."""
    alive = {c.candidate for c in survivors}
    done = {c.name for c in eliminated}
    for config in out:  # best first
        if config.candidate in alive or config.candidate in done:
            continue
        done.add(config.candidate)
        entry = scored[config]
        eliminated.append(
            CandidateScore(
                config.extractor, config.family, config.params_dict(), entry["mean"], entry["std"], n, folds,
                f"round {index}", len(entry["scores"]), entry["seconds"],
            )
        )  # fmt: skip


def choose_mode(
    requested: str,
    *,
    previous: tuple[int, list[str], list[str]] | None,
    n_train: int,
    extractors: list[str],
    families: list[str],
    drift: bool,
    new_search_share: float,
    new_search_on_drift: bool,
    metric_changed: bool = False,
) -> tuple[SearchMode, str]:
    """The search a retrain runs, and why.

    ``requested`` is a mode, or ``auto``: ``refit`` unless there is no previous search to refit, the candidate table
    changed since it (``previous`` = its training-split size, extractors and families), the training split grew by
    ``new_search_share`` or more of what it searched, ``training.metric`` changed since it (its ranking answers another
    question), or the monitor saw drift (with ``new_search_on_drift``); each of those runs a ``race``.
    """
    if requested in SEARCH_MODES:
        if requested == "refit" and previous is None:
            return "race", "refit asked, but no previous search to refit: racing every candidate"
        return requested, f"asked for {requested}"  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"unknown search mode {requested!r}; one of {(*SEARCH_MODES, 'auto')}")
    if previous is None:
        return "race", "no previous search to refit"
    searched, old_extractors, old_families = previous
    if sorted(old_extractors) != sorted(extractors) or sorted(old_families) != sorted(families):
        return "race", "the candidate table changed since the last search"
    if metric_changed:
        return "race", "training.metric changed since the last search: its ranking was by another metric"
    share = (n_train - searched) / max(searched, 1)
    if share >= new_search_share:
        return "race", (
            f"the training split grew by {share:.0%} since the last search "
            f"({searched} -> {n_train}; a new search from {new_search_share:.0%})"
        )
    if drift and new_search_on_drift:
        return "race", "the monitor saw drift: the best candidate may have changed"
    return "refit", (
        f"the training split grew by {share:.0%} since the last search ({searched} -> {n_train}; under the "
        f"{new_search_share:.0%} that calls for a new search) and no drift: refitting its best candidates"
    )
