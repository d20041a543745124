"""The scikit-learn estimator contract for every transformer of conveyor.features.

Our transformers take lists of diagrams, diagram bundles or images, not (n_samples, n_features) arrays, and say so in
their tags (``input_tags.two_d_array = False``). For such estimators scikit-learn's ``parametrize_with_checks``
yields only the clone check and skips the rest with a ``SkipTestWarning``: its data-driven checks feed random 2-D
arrays, which are not diagrams. So this module

1. runs ``parametrize_with_checks`` as scikit-learn intends (and pins down what it yields for our tags),
2. calls directly the API checks that need no data, and
3. checks the data-driven parts of the same contract (fit returns self, params untouched, fit idempotent, transform
   pure, order and subset invariance, clone, pickle, pipeline) with valid inputs of each kind.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks, get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from conveyor.features.extractors import EXTRACTORS
from conveyor.features.intensity import IntensityFeatures
from conveyor.features.vectorizers import (
    BettiCurve,
    FunctionalDataAnalysis,
    PersistenceBlock,
    PersistenceEntropy,
    PersistenceImage,
    PersistenceLandscape,
    SummaryStatistics,
)

ESTIMATORS: list[Any] = [
    PersistenceLandscape(),
    PersistenceBlock(),
    FunctionalDataAnalysis(),
    SummaryStatistics(),
    PersistenceImage(),
    BettiCurve(),
    PersistenceEntropy(),
    IntensityFeatures(),
    *(cls() for cls in EXTRACTORS.values()),
    PersistenceBlock(univariate=True),
    EXTRACTORS["block"](fit_grids=True),  # type: ignore[call-arg]
]

# scikit-learn's API checks that use no data, so they apply to any input type; called directly.
DATA_FREE_CHECKS = [
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
]


def ids(estimator: object) -> str:
    return repr(estimator)


with warnings.catch_warnings():
    # Expected: "Can't test estimator ... which requires input of type InputTags(two_d_array=False ...)".
    warnings.simplefilter("ignore", SkipTestWarning)
    _common_checks = parametrize_with_checks(ESTIMATORS)


@_common_checks
def test_sklearn_common_checks(estimator: BaseEstimator, check: Any) -> None:
    check(estimator)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_tags_declare_non_array_input(estimator: BaseEstimator) -> None:
    tags = get_tags(estimator)
    assert tags.input_tags.two_d_array is False
    assert tags.requires_fit is True
    assert tags.transformer_tags is not None and tags.transformer_tags.preserves_dtype == ["float64"]


@pytest.mark.parametrize("estimator", ESTIMATORS[:1], ids=ids)
def test_sklearn_yields_only_the_clone_check_for_these_tags(estimator: BaseEstimator) -> None:
    # If scikit-learn starts yielding data-driven checks for non-array inputs, this fails: enable them then.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        checks = [check for _, check in estimator_checks.estimator_checks_generator(estimator)]
    names = [getattr(check, "func", check).__name__ for check in checks]
    assert names == ["check_estimator_cloneable"]


@pytest.mark.parametrize("check_name", DATA_FREE_CHECKS)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_sklearn_data_free_api_checks(estimator: BaseEstimator, check_name: str) -> None:
    getattr(estimator_checks, check_name)(type(estimator).__name__, clone(estimator))


# ---------------------------------------------------------------------------- the data-driven contract, on diagrams


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_fit_returns_self(data, estimator: BaseEstimator) -> None:
    fresh = clone(estimator)
    assert fresh.fit(data.sample_input(fresh)) is fresh


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_transform_before_fit_raises_not_fitted(data, estimator: BaseEstimator) -> None:
    with pytest.raises(NotFittedError):
        clone(estimator).transform(data.sample_input(estimator))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_fit_leaves_parameters_alone_and_adds_only_underscore_attributes(data, estimator: BaseEstimator) -> None:
    fresh = clone(estimator)
    params_before = joblib.hash(fresh.get_params())
    public_before = {k for k in vars(fresh) if not k.startswith("_")}
    fresh.fit(data.sample_input(fresh))
    assert joblib.hash(fresh.get_params()) == params_before
    added = {k for k in vars(fresh) if not k.startswith("_")} - public_before
    assert added and all(name.endswith("_") for name in added), added


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_fit_is_idempotent(data, estimator: BaseEstimator) -> None:
    X, other = data.sample_input(estimator, seed=1), data.sample_input(estimator, seed=2)
    once = clone(estimator).fit(X).transform(X)
    refitted = clone(estimator).fit(other).fit(X).transform(X)
    np.testing.assert_array_equal(refitted, once)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_transform_does_not_change_the_estimator(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    fitted = clone(estimator).fit(X)
    before = joblib.hash(vars(fitted))
    fitted.transform(data.sample_input(estimator, seed=3))
    assert joblib.hash(vars(fitted)) == before


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_fit_transform_equals_fit_then_transform(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    np.testing.assert_array_equal(
        clone(estimator).fit_transform(X),
        clone(estimator).fit(X).transform(X),
    )


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_rows_follow_sample_order(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    fitted = clone(estimator).fit(X)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_array_equal(fitted.transform([X[i] for i in order]), fitted.transform(X)[order])


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_each_row_depends_only_on_its_sample(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    fitted = clone(estimator).fit(X)
    batch = fitted.transform(X)
    for i, sample in enumerate(X):
        np.testing.assert_array_equal(fitted.transform([sample])[0], batch[i])


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_output_is_float64_with_one_name_per_column(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    fitted = clone(estimator).fit(X)
    out = fitted.transform(X)
    names = fitted.get_feature_names_out()
    assert out.dtype == np.float64 and out.shape == (len(X), names.shape[0])
    assert names.dtype == object and len(set(names.tolist())) == names.shape[0]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_read_only_inputs_are_accepted(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    for sample in X:
        for array in sample.values() if isinstance(sample, dict) else [sample]:
            array.setflags(write=False)
    assert clone(estimator).fit(X).transform(X).shape[0] == len(X)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_pickled_fitted_estimator_gives_the_same_output(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    fitted = clone(estimator).fit(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fitted)).transform(X), fitted.transform(X))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=ids)
def test_works_as_the_first_step_of_a_pipeline(data, estimator: BaseEstimator) -> None:
    X = data.sample_input(estimator)
    pipeline = Pipeline([("features", clone(estimator)), ("scale", StandardScaler())]).fit(X)
    assert pipeline.transform(X).shape == (len(X), pipeline[0].get_feature_names_out().shape[0])
