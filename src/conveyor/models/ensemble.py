"""Several networks of one recipe, trained with consecutive seeds and averaged: a small training split's network is
a lottery ticket.

On 146 training images (the yes/no MRI set) one network's test balanced accuracy ranged 0.805-0.911 over five seeds
(sd 0.044): the seed draws the validation fold it stops and calibrates on, its initial weights, its batch order and
its augmentation. The mean of k networks' calibrated probabilities varies about k times less, for k times the
training time. A large split (where one network is stable and one fit already costs minutes) keeps one network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

__all__ = ["SeedEnsemble"]

_OWN = ("estimator", "networks", "up_to")


class SeedEnsemble(ClassifierMixin, BaseEstimator):
    """``networks`` clones of ``estimator`` with seeds ``seed .. seed + networks - 1``, their probabilities averaged.

    Parameters
    ----------
    estimator : classifier with a ``seed`` parameter that holds out its own validation fold
        (``fit(X, y, val_groups=...)``, then ``val_index_`` and ``val_proba_``), e.g. ``CNNClassifier``.
    networks : int, default=5
        Members trained when the training split has at most ``up_to`` images.
    up_to : int or None, default=1000
        Largest training split that gets ``networks`` members; a larger one gets one. None: no limit.

    An estimator with a ``time_budget_s`` parameter shares it equally among the members that train; one with
    ``progress`` on names each member's bars (``"network 2/5"``).
    ``set_params`` passes a name that is not one of these three to ``estimator`` (``learning_rate=...`` is
    ``estimator__learning_rate=...``), so a grid of the network's parameters searches the ensemble unchanged.

    Attributes
    ----------
    members_ : list
        The fitted members, in seed order.
    classes_ : ndarray
        The members' classes (the column order of ``predict_proba``).
    val_index_ : ndarray
        Every training position some member held out for validation, ascending.
    val_proba_ : ndarray of shape (len(val_index_), n_classes)
        For each of them, the mean calibrated probabilities of the members that held it out (none of which trained
        on it): held-out scores on several validation folds at once, not on one.
    history_ : list of dict
        The members' learning curves side by side, one row per epoch: ``epoch`` and each member's values as
        ``network<i>_<name>`` (a member that stopped earlier has no values in the later rows).
    """

    def __init__(self, estimator: Any = None, networks: int = 5, up_to: int | None = 1000) -> None:
        self.estimator = estimator
        self.networks = networks
        self.up_to = up_to

    def set_params(self, **params: Any) -> SeedEnsemble:
        own = {name: value for name, value in params.items() if name in _OWN or "__" in name}
        passed = {f"estimator__{name}": value for name, value in params.items() if name not in own}
        return super().set_params(**own, **passed)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        if self.estimator is not None:
            tags.input_tags = get_tags(self.estimator).input_tags
        return tags

    def fit(self, X: Any, y: Any, *, val_groups: Any = None) -> SeedEnsemble:
        """Fit the members one after another (each uses every core it is given)."""
        if self.estimator is None:
            raise ValueError("estimator: a classifier to train several of is required")
        if not isinstance(self.networks, int) or isinstance(self.networks, bool) or self.networks < 1:
            raise ValueError(f"networks: expected an integer >= 1, got {self.networks!r}")
        if self.up_to is not None and (
            not isinstance(self.up_to, int) or isinstance(self.up_to, bool) or self.up_to < 1
        ):
            raise ValueError(f"up_to: expected an integer >= 1 or None, got {self.up_to!r}")
        labels = np.asarray(y)
        count = self.networks if self.up_to is None or len(labels) <= self.up_to else 1
        params = self.estimator.get_params()
        shared = {} if params.get("time_budget_s") is None else {"time_budget_s": params["time_budget_s"] / count}
        extra = {} if val_groups is None else {"val_groups": val_groups}
        members = []
        for i in range(count):
            named = {"progress": f"network {i + 1}/{count}"} if count > 1 and params.get("progress") else {}
            member = clone(self.estimator).set_params(seed=int(params["seed"]) + i, **shared, **named)
            members.append(member.fit(X, labels, **extra))
        classes = members[0].classes_
        sums = np.zeros((len(labels), len(classes)))
        held = np.zeros(len(labels))
        for member in members:
            sums[member.val_index_] += np.asarray(member.val_proba_, dtype=np.float64)
            held[member.val_index_] += 1
        rows = np.flatnonzero(held)
        self.members_ = members
        self.classes_ = classes
        self.val_index_ = rows
        self.val_proba_ = sums[rows] / held[rows, None]
        self.history_ = _side_by_side([getattr(member, "history_", []) for member in members])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """The mean of the members' (calibrated) probabilities."""
        check_is_fitted(self, "members_")
        return np.asarray(np.mean([member.predict_proba(X) for member in self.members_], axis=0))

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_[self.predict_proba(X).argmax(axis=1)])


def _side_by_side(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per epoch with each member's values under ``network<i>_``; one member keeps its rows as they are."""
    if len(histories) == 1:
        return list(histories[0])
    epochs = max((len(history) for history in histories), default=0)
    rows: list[dict[str, Any]] = []
    for epoch in range(epochs):
        row: dict[str, Any] = {"epoch": epoch + 1}
        for i, history in enumerate(histories):
            if epoch < len(history):
                row.update({f"network{i}_{k}": v for k, v in history[epoch].items() if k != "epoch"})
        rows.append(row)
    return rows
