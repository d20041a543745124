"""Model families: a name, an estimator factory and the grid it searches.

The candidate set is open: :func:`register_family` adds one, and the training loop crosses every family with every
input it accepts (``"features"``: a feature table; ``"image"``: preprocessed pixels) without knowing which family
it runs. Every tabular family is a pipeline with standardisation inside it, so the scaler is fitted on each
cross-validation fold's training part only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

if TYPE_CHECKING:
    from conveyor.config import Settings

__all__ = ["FAMILIES", "SELECTED", "Family", "family", "register_family", "with_selection"]


@dataclass(frozen=True)
class Family:
    """A model family.

    Attributes:
        name: its name in tables, MLflow and settings.
        build: makes a fresh, unfitted estimator (``seed`` in, so results repeat).
        grid: the parameter grid, with the estimator's parameter names (``clf__C`` for pipelines).
        input_kind: ``"features"`` or ``"image"``.
        search: ``"kfold"`` (stratified k-fold CV on the training split), ``"holdout"`` (one stratified
            validation split, then a refit on the whole training split: for families too slow for k fits per grid
            point) or ``"validation"`` (one fit per grid point on the whole training split: the estimator holds out
            its own validation fold, keeping ``fit(..., val_groups=...)``'s groups whole, and exposes its held-out
            scores as ``val_index_`` and ``val_proba_``; the best point's model is final).
        search_for_settings: where the settings choose the search (``training.cnn.refit``), what it is under them.
        configure: sets the built estimator's parameters and picks the grid from the settings (a family with
            settings of its own); without it, ``build`` and ``grid`` are used as they are.
    """

    name: str
    build: Callable[[int], BaseEstimator]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    input_kind: Literal["features", "image"] = "features"
    search: Literal["kfold", "holdout", "validation"] = "kfold"
    configure: Callable[[BaseEstimator, Settings], tuple[BaseEstimator, dict[str, list[Any]]]] | None = None
    search_for_settings: Callable[[Settings], Literal["kfold", "holdout", "validation"]] | None = None

    def search_under(self, settings: Settings) -> Literal["kfold", "holdout", "validation"]:
        """The search this family runs under the settings (``search`` unless the settings choose)."""
        return self.search if self.search_for_settings is None else self.search_for_settings(settings)

    def estimator_and_grid(self, settings: Settings) -> tuple[BaseEstimator, dict[str, list[Any]]]:
        """A fresh estimator (seeded by ``training.seed``) and the grid to search, as the settings say."""
        estimator = self.build(settings.training.seed)
        if self.configure is None:
            return estimator, self.grid
        return self.configure(estimator, settings)


def _scaled(estimator: BaseEstimator) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", estimator)])


def _logreg(seed: int) -> BaseEstimator:
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed))


def _svm(seed: int) -> BaseEstimator:
    from sklearn.svm import SVC

    return _scaled(SVC(kernel="rbf", class_weight="balanced", random_state=seed))


def _random_forest(seed: int) -> BaseEstimator:
    from sklearn.ensemble import RandomForestClassifier

    return _scaled(RandomForestClassifier(n_estimators=300, class_weight="balanced", random_state=seed, n_jobs=1))


def _hist_gradient_boosting(seed: int) -> BaseEstimator:
    from conveyor.models.boosting import BalancedHistGradientBoosting

    return _scaled(BalancedHistGradientBoosting(class_weight="balanced", random_state=seed, max_iter=200))


def _xgboost(seed: int) -> BaseEstimator:
    from xgboost import XGBClassifier

    return _scaled(XGBClassifier(n_estimators=300, tree_method="hist", n_jobs=1, random_state=seed, verbosity=0))


def _cnn(seed: int) -> BaseEstimator:
    from conveyor.models.cnn import CNNClassifier

    return CNNClassifier(seed=seed)


def _cnn_search(settings: Settings) -> Literal["holdout", "validation"]:
    return "holdout" if settings.training.cnn.refit else "validation"


def _configure_cnn(estimator: BaseEstimator, settings: Settings) -> tuple[BaseEstimator, dict[str, list[Any]]]:
    """``training.cnn``: the architecture, the training recipe, and the search's time budget shared equally by its
    fits (one per grid point, and the refit with ``refit``); with ``networks`` above 1, each fit is a
    :class:`~conveyor.models.ensemble.SeedEnsemble` of that many networks on a split of at most ``ensemble_up_to``
    images (the fit's share of the budget then shared by its networks).

    Raises:
        ConfigError: the grid names a parameter CNNClassifier does not have, or gives one no values.
    """
    from conveyor.errors import ConfigError

    cnn = settings.training.cnn
    grid = {name: list(values) for name, values in cnn.grid.items()}
    known = estimator.get_params()
    for name, values in grid.items():
        if name not in known:
            raise ConfigError(f"training.cnn.grid: CNNClassifier has no parameter {name!r}; it has {sorted(known)}")
        if not values:
            raise ConfigError(f"training.cnn.grid: {name!r} has no values to search")
    fits = math.prod(len(values) for values in grid.values()) + int(cnn.refit)
    estimator.set_params(
        architecture=cnn.architecture, max_epochs=cnn.max_epochs, patience=cnn.patience, min_steps=cnn.min_steps,
        batch_size=cnn.batch_size, augment=cnn.augment, schedule=cnn.schedule, tta=cnn.tta,
        time_budget_s=cnn.time_budget_s / fits, n_threads=cnn.threads, progress=cnn.progress,
    )  # fmt: skip
    if cnn.networks > 1:
        from conveyor.models.ensemble import SeedEnsemble

        return SeedEnsemble(estimator, networks=cnn.networks, up_to=cnn.ensemble_up_to), grid
    return estimator, grid


FAMILIES: dict[str, Family] = {}


def register_family(new: Family) -> Family:
    """Add (or replace) a family in the registry."""
    FAMILIES[new.name] = new
    return new


for _family in (
    Family("logreg", _logreg, {"clf__C": [0.01, 0.1, 1.0, 10.0]}),
    Family("svm", _svm, {"clf__C": [0.3, 1.0, 3.0, 10.0], "clf__gamma": ["scale"]}),
    Family("random_forest", _random_forest, {"clf__max_depth": [None, 10], "clf__min_samples_leaf": [1, 3]}),
    Family(
        "hist_gradient_boosting",
        _hist_gradient_boosting,
        {"clf__learning_rate": [0.05, 0.1], "clf__max_depth": [None, 4]},
    ),
    Family("xgboost", _xgboost, {"clf__max_depth": [3, 6], "clf__learning_rate": [0.05, 0.1]}),
    Family(
        "cnn", _cnn, input_kind="image", search="validation", configure=_configure_cnn, search_for_settings=_cnn_search
    ),
):
    register_family(_family)


SELECTED = "+select"
"""The suffix of a family's feature-selecting variant (``logreg+select``)."""


def _at_most(k: int, X: Any) -> int:
    return min(k, X.shape[1])


def with_selection(base: Family, keep: str, k: int, threshold: str | float) -> Family:
    """``base`` behind a feature selector fitted with it on each training fold: an extra-trees model's impurity
    importance keeps the ``k`` most important features (``top_k``) or those above ``threshold`` (``above``). The
    selector is part of the estimator, so cross-validation scores it without leakage and the registered model carries
    it. Its grid is ``base``'s, under ``model__``.

    Raises:
        ValueError: ``base`` does not take feature tables, or ``keep`` is not top_k or above.
    """
    from functools import partial

    if base.input_kind != "features":
        raise ValueError(f"feature selection needs a feature-table family; {base.name!r} takes {base.input_kind}")
    if keep not in ("top_k", "above"):
        raise ValueError(f"feature selection keeps top_k or above, got {keep!r}")

    def build(family_seed: int) -> BaseEstimator:
        from sklearn.ensemble import ExtraTreesClassifier
        from sklearn.feature_selection import SelectFromModel

        ranker = ExtraTreesClassifier(n_estimators=200, class_weight="balanced", random_state=family_seed, n_jobs=1)
        if keep == "top_k":
            selector = SelectFromModel(ranker, threshold=-float("inf"), max_features=partial(_at_most, k))
        else:
            selector = SelectFromModel(ranker, threshold=threshold)
        return Pipeline([("select", selector), ("model", base.build(family_seed))])

    grid = {f"model__{name}": values for name, values in base.grid.items()}
    return Family(f"{base.name}{SELECTED}", build, grid, "features", base.search)


def family(name: str) -> Family:
    """A registered family by name.

    Raises:
        KeyError: with the names that exist.
    """
    if name not in FAMILIES:
        raise KeyError(f"model family {name!r} does not exist; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
