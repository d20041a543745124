"""CNNClassifier: learning, determinism, pickling, calibration, early stopping, time budget, errors, architectures.

Data are tiny synthetic 32x32 images made here: "blob" (a faint Gaussian spot on noise) against "none" (noise only),
so a fit takes well under a second per epoch on one thread. Most fits use ``n_threads=1`` so the suite's timing does
not depend on a neighbour busy on the other core.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.utils import estimator_checks, get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from conveyor.models.cnn import (
    CNNClassifier,
    _f1,
    _fit_temperature,
)
from conveyor.models.ece import top_label_ece

HISTORY_KEYS = {"epoch", "train_loss", "val_loss", "val_f1", "lr", "seconds"}


def blobs(n_per_class: int, seed: int, size: int = 32, labels: tuple[str, str] = ("blob", "none")) -> tuple:
    """(X, y): float32 (2n, size, size) in [0, 1]; the first n images hold a faint spot of radius 2-4 pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    X = rng.uniform(0.0, 0.4, (2 * n_per_class, size, size))
    for i in range(n_per_class):
        cy, cx = rng.uniform(6, size - 6, 2)
        radius = rng.uniform(2, 4)
        X[i] += rng.uniform(0.2, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    y = np.array([labels[0]] * n_per_class + [labels[1]] * n_per_class)
    return np.clip(X, 0, 1).astype(np.float32), y


def quick(**params: Any) -> CNNClassifier:
    """A small, fast configuration; ``params`` override it."""
    defaults: dict[str, Any] = {"width": 8, "batch_size": 16, "max_epochs": 3, "n_threads": 1}
    return CNNClassifier(**{**defaults, **params})


@pytest.fixture(scope="module")
def train() -> tuple:
    return blobs(40, seed=0)


@pytest.fixture(scope="module")
def held_out() -> tuple:
    return blobs(50, seed=1)


@pytest.fixture(scope="module")
def fitted(train: tuple) -> CNNClassifier:
    """One model fitted for 6 epochs, shared by the tests that only read it."""
    X, y = train
    return quick(max_epochs=6).fit(X, y)


# ------------------------------------------------------------------------------------------------------ learning


def test_learns_the_blob_task(fitted: CNNClassifier, held_out: tuple) -> None:
    X, y = held_out
    assert fitted.history_[fitted.best_epoch_ - 1]["val_f1"] > 0.8
    assert (fitted.predict(X) == y).mean() > 0.8


def test_history_has_one_row_per_epoch_with_exact_keys(fitted: CNNClassifier) -> None:
    assert [row["epoch"] for row in fitted.history_] == list(range(1, len(fitted.history_) + 1))
    for row in fitted.history_:
        assert set(row) == HISTORY_KEYS
        assert all(isinstance(row[key], float) for key in HISTORY_KEYS - {"epoch"})
        assert row["train_loss"] > 0 and row["val_loss"] > 0 and 0 <= row["val_f1"] <= 1 and row["seconds"] > 0


def test_best_epoch_has_the_lowest_validation_loss(fitted: CNNClassifier) -> None:
    losses = [row["val_loss"] for row in fitted.history_]
    assert fitted.best_epoch_ == int(np.argmin(losses)) + 1


def test_epoch_callback_receives_each_history_row(train: tuple) -> None:
    X, y = train
    rows: list[dict[str, Any]] = []
    model = quick(max_epochs=2).fit(X, y, epoch_callback=rows.append)
    assert rows == model.history_
    rows[0]["epoch"] = 99  # a copy: the callback cannot change the history
    assert model.history_[0]["epoch"] == 1


def test_three_classes_give_three_columns_in_sorted_label_order() -> None:
    X_a, _ = blobs(15, seed=2)
    X = np.concatenate([X_a, np.full((15, 32, 32), 0.9, dtype=np.float32)])
    y = np.array(["b"] * 15 + ["c"] * 15 + ["a"] * 15)
    model = quick(max_epochs=1).fit(X, y)
    assert model.classes_.tolist() == ["a", "b", "c"]
    assert model.predict_proba(X).shape == (45, 3)


def test_rgb_images_are_accepted(train: tuple) -> None:
    X, y = train
    rgb = np.repeat(X[..., None], 3, axis=-1)
    model = quick(max_epochs=1).fit(rgb, y)
    assert model.n_channels_ == 3
    assert model.predict_proba(rgb[:2]).shape == (2, 2)


# ------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_bitwise_identical_predictions(train: tuple, held_out: tuple) -> None:
    X, y = train
    first = CNNClassifier(width=8, max_epochs=2, seed=7).fit(X, y)  # every core: the default thread count
    second = CNNClassifier(width=8, max_epochs=2, seed=7).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(held_out[0]), second.predict_proba(held_out[0]))
    assert first.history_[-1]["train_loss"] == second.history_[-1]["train_loss"]
    assert first.temperature_ == second.temperature_


def test_another_seed_gives_another_model(train: tuple, held_out: tuple) -> None:
    X, y = train
    first, second = quick(max_epochs=1, seed=1).fit(X, y), quick(max_epochs=1, seed=2).fit(X, y)
    assert not np.array_equal(first.predict_proba(held_out[0]), second.predict_proba(held_out[0]))


def test_fit_leaves_torch_global_state_as_it_was(train: tuple) -> None:
    X, y = train
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    quick(max_epochs=1, n_threads=1 if threads > 1 else 2).fit(X, y)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.rand(3), expected_next)


# ------------------------------------------------------------------------------------------------------ pickle


def test_pickle_round_trip_predicts_identically(fitted: CNNClassifier, held_out: tuple) -> None:
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.predict_proba(held_out[0]), fitted.predict_proba(held_out[0]))
    assert loaded.temperature_ == fitted.temperature_ and loaded.classes_.tolist() == fitted.classes_.tolist()


def test_a_model_pickled_before_min_steps_existed_loads_with_its_parameters(fitted: CNNClassifier) -> None:
    state = fitted.__getstate__()
    del state["min_steps"]
    loaded = CNNClassifier.__new__(CNNClassifier)
    loaded.__setstate__(state)
    assert loaded.get_params()["min_steps"] == 0


def test_joblib_round_trip_predicts_identically(fitted: CNNClassifier, held_out: tuple, tmp_path) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(held_out[0]), fitted.predict(held_out[0]))
    np.testing.assert_array_equal(loaded.predict_proba(held_out[0]), fitted.predict_proba(held_out[0]))


def test_pickle_holds_numpy_weights_not_a_module_nor_the_data(fitted: CNNClassifier, train: tuple) -> None:
    state = fitted.__getstate__()
    assert "model_" not in state
    assert all(isinstance(value, np.ndarray) for value in state["_weights"].values())
    assert len(pickle.dumps(fitted)) < train[0].nbytes  # the 80 training images are not inside
    assert isinstance(fitted.model_, torch.nn.Module)  # pickling did not strip the live estimator


def test_loading_predicting_and_fitting_the_default_cnn_need_no_monai(fitted: CNNClassifier, tmp_path) -> None:
    # The server loads the pickle in a fresh process: the default network must not pull in MONAI (~5 s, MLflow...);
    # nor must training it, with its augmentation on the batch tensor.
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(fitted))
    script = (
        "import pickle, sys, numpy as np; "
        f"model = pickle.loads(open({str(path)!r}, 'rb').read()); "
        "proba = model.predict_proba(np.zeros((1, 32, 32), dtype=np.float32)); "
        "print(proba.shape, 'monai' in sys.modules); "
        "from conveyor.models.cnn import CNNClassifier; "
        "X = np.random.default_rng(0).random((8, 16, 16), dtype=np.float32); "
        "CNNClassifier(width=2, max_epochs=1, n_threads=1).fit(X, np.array(['a', 'b'] * 4)); "
        "print('monai' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["(1,", "2)", "False", "False"]


def test_unfitted_estimator_pickles(train: tuple) -> None:
    loaded = pickle.loads(pickle.dumps(quick(width=4)))
    assert loaded.get_params()["width"] == 4
    with pytest.raises(NotFittedError):
        loaded.predict_proba(train[0][:1])


# ------------------------------------------------------------------------------------------------- calibration


def test_probabilities_are_calibrated_rows_summing_to_one(fitted: CNNClassifier, held_out: tuple) -> None:
    proba = fitted.predict_proba(held_out[0])
    assert proba.dtype == np.float64 and proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert fitted.temperature_ > 0
    assert 0 <= fitted.val_ece_before_ <= 1 and 0 <= fitted.val_ece_after_ <= 1


def test_predict_is_the_argmax_of_predict_proba(fitted: CNNClassifier, held_out: tuple) -> None:
    proba = fitted.predict_proba(held_out[0])
    np.testing.assert_array_equal(fitted.predict(held_out[0]), fitted.classes_[proba.argmax(axis=1)])


def test_single_image_batch_matches_its_row_in_a_larger_batch(fitted: CNNClassifier, held_out: tuple) -> None:
    X = held_out[0]
    np.testing.assert_allclose(fitted.predict_proba(X[3:4]), fitted.predict_proba(X)[3:4], atol=1e-6)


def test_temperature_recovers_a_known_overconfidence() -> None:
    # Labels drawn from softmax(z); the fitter sees 3z, so the temperature that calibrates it is 3.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    codes = np.array([rng.choice(3, p=row) for row in p])
    assert _fit_temperature((3 * z).astype(np.float32), codes) == pytest.approx(3.0, rel=0.1)


def test_a_small_perfectly_separated_fold_does_not_drive_the_temperature_to_zero() -> None:
    # Plain NLL would be minimised by T -> 0 (all probabilities 0 or 1); the prior on log T keeps it moderate.
    codes = np.array([0, 1] * 8)
    logits = np.where(codes[:, None] == np.arange(2), 3.0, -3.0).astype(np.float32)
    assert 0.3 < _fit_temperature(logits, codes) < 1.0


@pytest.mark.parametrize(
    ("proba", "codes", "expected"),
    [
        # Confidences 0.95, 0.85, 0.65 fall in three bins; |1 - .95|, |0 - .85|, |1 - .65| averaged over 3.
        ([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65]], [0, 1, 1], (0.05 + 0.85 + 0.35) / 3),
        # Same bin (0.8, 0.9]: accuracy 1/2 against mean confidence 0.85.
        ([[0.85, 0.15], [0.15, 0.85]], [0, 0], 0.35),
        ([[1.0, 0.0], [0.0, 1.0]], [0, 1], 0.0),
    ],
)
def test_expected_calibration_error(proba: list, codes: list, expected: float) -> None:
    assert top_label_ece(np.array(proba), np.array(codes)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("codes", "predicted", "n_classes", "expected"),
    [
        ([0, 0, 1, 1], [0, 1, 1, 1], 2, 0.8),  # binary F1 of class 1: precision 2/3, recall 1
        ([0, 0, 1, 1], [0, 0, 0, 1], 2, 2 / 3),
        ([0, 1, 2], [0, 1, 1], 3, (1 + 2 / 3 + 0) / 3),  # macro over three classes
    ],
)
def test_validation_f1(codes: list, predicted: list, n_classes: int, expected: float) -> None:
    assert _f1(np.array(codes), np.array(predicted), n_classes) == pytest.approx(expected)


# ---------------------------------------------------------------------------------- class weights, stopping, budget


def test_class_weights_are_inverse_frequencies(train: tuple) -> None:
    X, y = train
    keep = np.r_[0:30, 40:50]  # 30 "blob", 10 "none"
    model = quick(max_epochs=1).fit(X[keep], y[keep])
    np.testing.assert_allclose(model.class_weight_, [40 / (2 * 30), 40 / (2 * 10)])


def test_early_stopping_when_validation_loss_does_not_improve(train: tuple) -> None:
    # learning_rate=0: the weights never change, so the loss of epoch 1 is never beaten.
    X, y = train
    model = quick(learning_rate=0.0, patience=2, max_epochs=20).fit(X, y)
    assert model.stop_reason_ == "early_stopping"
    assert model.best_epoch_ == 1
    assert len(model.history_) == 1 + 2


def test_min_steps_stretches_the_epochs_and_the_patience_of_a_small_split(train: tuple) -> None:
    # 64 training images in batches of 16: 4 steps an epoch, 12 in 3 epochs; 30 steps need a factor of 3.
    X, y = train
    model = quick(learning_rate=0.0, patience=2, max_epochs=3, min_steps=30).fit(X, y)
    assert (model.max_epochs_, model.patience_) == (9, 6)
    assert model.stop_reason_ == "early_stopping"
    assert len(model.history_) == 1 + 6


def test_min_steps_a_split_already_reaches_changes_nothing(train: tuple) -> None:
    X, y = train
    model = quick(max_epochs=3, patience=5, min_steps=12).fit(X, y)
    assert (model.max_epochs_, model.patience_) == (3, 5)
    assert len(model.history_) == 3


def test_runs_max_epochs_without_a_reason_to_stop(fitted: CNNClassifier) -> None:
    assert len(fitted.history_) == 6 or fitted.stop_reason_ == "early_stopping"
    if len(fitted.history_) == 6:
        assert fitted.stop_reason_ == "max_epochs"


def test_tiny_time_budget_stops_after_one_epoch(train: tuple) -> None:
    X, y = train
    model = quick(time_budget_s=1e-3, max_epochs=10).fit(X, y)
    assert len(model.history_) == 1
    assert model.stop_reason_ == "time_budget" and model.best_epoch_ == 1


# -------------------------------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("architecture", ["densenet", "resnet"])
def test_monai_architecture_fits_one_epoch_and_pickles(architecture: str, train: tuple) -> None:
    X, y = train
    model = quick(architecture=architecture, max_epochs=1).fit(X, y)
    proba = model.predict_proba(X[:3])
    assert proba.shape == (3, 2)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_proba(X[:3]), proba)


def test_numpy_scalar_parameters_from_a_grid_are_accepted(train: tuple) -> None:
    X, y = train
    model = quick(width=np.int64(4), learning_rate=np.float32(1e-3), max_epochs=np.int64(1), seed=np.int64(3))
    assert len(model.fit(X, y).history_) == 1


@pytest.mark.parametrize("augment", ["none", False, "monai", True])
def test_training_with_each_augmentation(train: tuple, augment: str | bool) -> None:
    X, y = train
    assert len(quick(augment=augment, max_epochs=1).fit(X, y).history_) == 1


def test_the_plain_small_network_still_learns_with_the_old_recipe(train: tuple, held_out: tuple) -> None:
    X, y = train
    model = quick(architecture="small", max_epochs=4, schedule="constant", augment="monai", tta=False).fit(X, y)
    assert (model.predict(held_out[0]) == held_out[1]).mean() > 0.8


def test_float64_and_memory_mapped_images_are_accepted(train: tuple, tmp_path) -> None:
    X, y = train
    path = tmp_path / "images.npy"
    np.save(path, X.astype(np.float64))
    mapped = np.load(path, mmap_mode="r")
    model = quick(max_epochs=1).fit(mapped, y)
    np.testing.assert_allclose(model.predict_proba(mapped[:4]), model.predict_proba(X[:4]), atol=1e-6)


class CountingRows:
    """An image array that reads its rows on demand (like ImageRows) and records how many each read took."""

    def __init__(self, images: np.ndarray, reads: list[int], rows: np.ndarray | None = None) -> None:
        self.images, self.reads = images, reads
        self.rows = np.arange(len(images)) if rows is None else rows
        self.shape, self.ndim, self.dtype = (len(self.rows), *images.shape[1:]), images.ndim, images.dtype

    def __getitem__(self, key: Any) -> Any:
        key = key[0] if isinstance(key, tuple) else key
        if isinstance(key, (int, np.integer)):
            return self.images[self.rows[key]]
        return CountingRows(self.images, self.reads, self.rows[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self.reads.append(len(self.rows))
        return self.images[self.rows].astype(dtype or self.images.dtype)


def test_images_read_on_demand_are_read_a_batch_at_a_time_and_give_the_same_model(
    train: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conveyor.models.cnn

    monkeypatch.setattr(conveyor.models.cnn, "_CHECK_CHUNK", 32)  # the value-range check's reads
    X, y = train
    reads: list[int] = []
    lazy = quick(max_epochs=2, batch_size=16).fit(CountingRows(X, reads), y)
    assert max(reads) == 32 and sorted(set(reads)) == [16, 32]  # X has 80 images: never read whole
    eager = quick(max_epochs=2, batch_size=16).fit(X, y)
    np.testing.assert_array_equal(lazy.predict_proba(CountingRows(X, [])), eager.predict_proba(X))


def test_progress_shows_a_bar_per_epoch_on_stderr(train: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = train
    quick(max_epochs=2, progress=True).fit(X, y)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val F1" in err


# ------------------------------------------------------------------------------------------------------- errors


def _images(shape: tuple, value: float = 0.5, dtype: Any = np.float32) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


FIT_ERRORS = [
    ("uint8", _images((8, 32, 32), 128, np.uint8), ["a", "b"] * 4, "expected float images"),
    ("one image 2-D", _images((32, 32)), ["a", "b"], r"expected an array \(N, H, W\)"),
    ("two channels", _images((8, 32, 32, 2)), ["a", "b"] * 4, r"\(N, H, W, 3\)"),
    ("above one", _images((8, 32, 32), 255.0), ["a", "b"] * 4, r"values in \[0, 1\].*max 255"),
    ("nan", _images((8, 32, 32), np.nan), ["a", "b"] * 4, r"values in \[0, 1\]"),
    ("too small", _images((8, 8, 8)), ["a", "b"] * 4, "at least 16x16"),
    ("empty", _images((0, 32, 32)), [], "at least one image"),
    ("one class", _images((8, 32, 32)), ["a"] * 8, "at least two classes"),
    ("labels mismatch", _images((8, 32, 32)), ["a", "b"] * 3, "one label per image"),
    ("too few of a class", _images((8, 32, 32)), ["a"] * 7 + ["b"], "class 'b' has 1 sample.*at least 2 samples"),
    ("continuous y", _images((8, 32, 32)), np.linspace(0, 1, 8), "Unknown label type"),
]


@pytest.mark.parametrize(("X", "y", "message"), [case[1:] for case in FIT_ERRORS], ids=[c[0] for c in FIT_ERRORS])
def test_fit_rejects_bad_input_with_a_clear_message(X: np.ndarray, y: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quick().fit(X, np.asarray(y))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"architecture": "vgg"}, "architecture: expected one of"),
        ({"width": 0}, "width: expected an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"val_fraction": 1.0}, r"val_fraction: expected a number in \(0, 1\)"),
        ({"time_budget_s": 0}, "time_budget_s"),
        ({"n_threads": 0}, "n_threads"),
        ({"seed": -1}, "seed"),
        ({"max_epochs": True}, "max_epochs"),
        ({"min_steps": -1}, "min_steps: expected an integer >= 0"),
    ],
)
def test_fit_rejects_bad_parameters(params: dict, message: str, train: tuple) -> None:
    with pytest.raises(ValueError, match=message):
        quick(**params).fit(*train)


def test_resnet_needs_32_pixels() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        quick(architecture="resnet").fit(_images((8, 24, 24)), np.array(["a", "b"] * 4))


def test_predict_rejects_images_unlike_the_training_ones(fitted: CNNClassifier) -> None:
    with pytest.raises(ValueError, match=r"expected images of 32x32 pixels with 1 channel"):
        fitted.predict_proba(_images((2, 64, 64)))
    with pytest.raises(ValueError, match="with 1 channel"):
        fitted.predict_proba(_images((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="expected float images"):
        fitted.predict_proba(_images((2, 32, 32), 1, np.uint8))


def test_predict_before_fit_raises_not_fitted(train: tuple) -> None:
    with pytest.raises(NotFittedError):
        quick().predict(train[0][:1])


# -------------------------------------------------------------------------------------------- scikit-learn contract

with warnings.catch_warnings():
    # Image input (three_d_array) is not array data scikit-learn can generate: it yields the clone check only.
    warnings.simplefilter("ignore", SkipTestWarning)
    _common_checks = parametrize_with_checks([CNNClassifier()])


@_common_checks
def test_sklearn_common_checks(estimator: CNNClassifier, check: Any) -> None:
    check(estimator)


@pytest.mark.parametrize(
    "check_name",
    [
        "check_estimator_tags_renamed",
        "check_valid_tag_types",
        "check_estimator_repr",
        "check_no_attributes_set_in_init",
        "check_do_not_raise_errors_in_init_or_set_params",
        "check_mixin_order",
        "check_parameters_default_constructible",
        "check_get_params_invariance",
        "check_set_params",
    ],
)
def test_sklearn_data_free_api_checks(check_name: str) -> None:
    getattr(estimator_checks, check_name)("CNNClassifier", CNNClassifier())


def test_tags_declare_image_input() -> None:
    tags = get_tags(CNNClassifier())
    assert tags.input_tags.two_d_array is False and tags.input_tags.three_d_array is True
    assert tags.estimator_type == "classifier"


def test_fit_leaves_parameters_alone_and_clone_is_unfitted(fitted: CNNClassifier) -> None:
    assert fitted.get_params() == quick(max_epochs=6).get_params()
    fresh = clone(fitted)
    assert not hasattr(fresh, "model_")
    added = {name for name in vars(fitted) if not name.startswith("_")} - set(fresh.get_params())
    assert added and all(name.endswith("_") for name in added), added


def test_repr_mentions_changed_parameters_only() -> None:
    assert repr(CNNClassifier(width=8, architecture="resnet")) == "CNNClassifier(architecture='resnet', width=8)"


def test_the_strided_shortcut_computes_what_a_strided_1x1_convolution_does() -> None:
    """Its values and gradients equal torch's strided 1x1 convolution with the same weight (it replaces it to avoid a
    oneDNN heap corruption at under 8 channels on one thread), and its weights keep the same state-dict key."""
    import torch

    from conveyor.models.cnn import _StridedPointwise

    torch.manual_seed(0)
    ours, reference = _StridedPointwise(4, 8, 2), torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
    reference.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 4, 7, 9)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(a), reference(b)
    assert out.shape == (3, 8, 4, 5)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    assert list(ours.state_dict()) == ["weight"]
