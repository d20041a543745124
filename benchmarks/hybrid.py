"""The hybrid candidate of issue 16, measured against what conveyor ships: the network's embedding (the 256 pooled
activations its last layer reads) and the feature table fed to one classifier, beside the mixed stack (a logistic
regression over the SVM's out-of-fold scores and the network's held-out scores) and the network alone.

A network's embedding means something only for that one network: networks fitted on different folds learn different
coordinates, so there are no out-of-fold embeddings over the whole training split to fit a classifier on. The hybrid
is therefore fitted, like the mixed stack, on the network's own validation fold (images it did not train on), scored
by grouped 5-fold CV within that fold, then refitted on all of it and scored on the test split.

For each real set beside the checkout: ingest into a temporary workspace (conveyor's split), the default extractors'
features, the SVM on ``all`` searched on the training split's grouped folds, one network fit (``training.cnn``'s
defaults), then the table (CV balanced accuracy on the validation fold +- sd, test balanced accuracy and F1 or
macro-F1, fit seconds). On the 146 training images of the yes/no set the validation fold is about 30 images.

Usage: python benchmarks/hybrid.py [--sets 4class,yes_no]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.features.store import compute_features
from conveyor.models.families import family
from conveyor.models.scores import decision_scores
from conveyor.models.stacking import combiner, stack_inputs
from conveyor.training.search import cv_splits
from conveyor.training.train import PIXELS, _dataset, _load_inputs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"4class": DATA / "brain_mri_4class_train", "yes_no": DATA / "brain_mri_yes_no"}


def embedding(network: Any, images: Any) -> np.ndarray:
    """The inputs of the network's last linear layer (its pooled activations), 64 images at a time."""
    from conveyor.models.cnn import _to_tensor

    grabbed: list[np.ndarray] = []
    hook = network.model_[-1].linear.register_forward_hook(lambda _m, i, _o: grabbed.append(i[0].numpy().copy()))
    network.model_.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), 64):
                network.model_(_to_tensor(np.asarray(images[start : start + 64])))
    finally:
        hook.remove()
    return np.concatenate(grabbed)


def linear(seed: int) -> Any:
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced", random_state=seed)
    )


def run_set(name: str, source: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"hybrid-{name}-") as tmp:
        # One network: an embedding means something only for the network that made it (no seed ensemble).
        settings = Settings(home=Path(tmp) / "ws", training={"cnn": {"progress": False, "networks": 1}})
        ingest(source, settings)
        compute_features(settings)
        data = _dataset(settings, None)
        y, seed = data.y_train, settings.training.seed
        y_test = np.array([data.classes.index(label) for label in data.test_labels])
        positive = None if data.positive is None else data.classes.index(data.positive)

        def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
            if positive is None:
                return float(f1_score(truth, predicted, average="macro"))
            return float(f1_score(truth, predicted, pos_label=positive))

        splits = cv_splits(y, np.arange(len(y)), data.folds, seed, data.groups)
        table = _load_inputs(settings, "all", data.version, data.members)
        svm, grid = family("svm").estimator_and_grid(settings)
        began = time.perf_counter()
        svm = GridSearchCV(svm, grid, cv=splits, scoring="balanced_accuracy", n_jobs=-1).fit(table.X_train, y)
        svm = svm.best_estimator_
        oof = np.zeros((len(y), len(data.classes)))
        for train, held in splits:
            scores = decision_scores(clone(svm).fit(table.X_train[train], y[train]), table.X_train[held])
            oof[held, : scores.shape[1]] = scores
        svm_seconds = time.perf_counter() - began
        pixels = _load_inputs(settings, PIXELS, data.version, data.members)
        network, _ = family("cnn").estimator_and_grid(settings)
        began = time.perf_counter()
        network = network.fit(pixels.X_train, y, **({} if data.groups is None else {"val_groups": data.groups}))
        network_seconds = time.perf_counter() - began
        rows = np.asarray(network.val_index_)
        y_rows = y[rows]
        inner = cv_splits(y_rows, np.arange(len(rows)), 5, seed, None if data.groups is None else data.groups[rows])
        began = time.perf_counter()
        fold_embedding, test_embedding = embedding(network, pixels.X_train[rows]), embedding(network, pixels.X_test)
        embed_ms = 1e3 * (time.perf_counter() - began) / (len(rows) + len(y_test))
        both, both_test = np.hstack([fold_embedding, table.X_train[rows]]), np.hstack([test_embedding, table.X_test])
        candidates: dict[str, tuple[Callable[[], Any], np.ndarray, np.ndarray]] = {
            "mixed stack (what conveyor ships)": (
                lambda: combiner(seed),
                stack_inputs([oof[rows], network.val_proba_]),
                stack_inputs([decision_scores(svm, table.X_test), network.predict_proba(pixels.X_test)]),
            ),
            "hybrid: logistic, embedding + all": (lambda: linear(seed), both, both_test),
            "hybrid: logistic, embedding alone": (lambda: linear(seed), fold_embedding, test_embedding),
            "hybrid: boosted trees, embedding + all": (
                lambda: HistGradientBoostingClassifier(class_weight="balanced", random_state=seed),
                both,
                both_test,
            ),
        }
        print(f"\n{name}: {len(y)} training images, the network's validation fold {len(rows)}, {len(y_test)} test")
        print(f"embedding: {embed_ms:.2f} ms per image, {fold_embedding.shape[1]} values")
        metric = "F1" if positive is not None else "macro-F1"
        print(f"| candidate | CV bal. acc. (val fold) | test bal. acc. | test {metric} | fit s |")
        print("|---|---:|---:|---:|---:|")
        network_test = network.predict_proba(pixels.X_test).argmax(axis=1)
        print(f"| SVM on all alone | | {balanced_accuracy_score(y_test, svm.predict(table.X_test)):.3f} | "
              f"{f1(y_test, svm.predict(table.X_test)):.3f} | {svm_seconds:.0f} |")  # fmt: skip
        print(f"| network alone | | {balanced_accuracy_score(y_test, network_test):.3f} | "
              f"{f1(y_test, network_test):.3f} | {network_seconds:.0f} |")  # fmt: skip
        for label, (make, X_fold, X_test) in candidates.items():
            began = time.perf_counter()
            fold_scores = []
            for train, held in inner:
                model = make().fit(X_fold[train], y_rows[train])
                fold_scores.append(balanced_accuracy_score(y_rows[held], model.predict(X_fold[held])))
            predicted = make().fit(X_fold, y_rows).predict(X_test)
            print(f"| {label} | {np.mean(fold_scores):.3f} +- {np.std(fold_scores):.3f} | "
                  f"{balanced_accuracy_score(y_test, predicted):.3f} | {f1(y_test, predicted):.3f} | "
                  f"{time.perf_counter() - began:.1f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    for name in args.sets.split(","):
        if not SETS[name].is_dir():
            print(f"{name}: skipped, the set is not at {SETS[name]}", file=sys.stderr)
            continue
        run_set(name, SETS[name])


if __name__ == "__main__":
    main()
