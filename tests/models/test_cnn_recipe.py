"""The CNN's training recipe, one behaviour per test: the residual network, the learning-rate schedule, early stopping,
the grouped validation fold, batch augmentation, test-time augmentation, temperature scaling, the time budget and the
thread count.

Images are tiny (32x32, or 16x16 where only shapes matter) and networks narrow (width 4-8), fitted for a few epochs on
one thread, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conveyor.models.cnn import (
    CNNClassifier,
    _augment_batch,
    _build_network,
    _fit_temperature,
    _grouped_split,
    _learning_rate,
    _planned_epochs,
    _softmax,
    _to_tensor,
)
from conveyor.workspace import available_cores
from tests.models.test_cnn import blobs


def tiny(**params: object) -> CNNClassifier:
    defaults: dict[str, object] = {"width": 4, "batch_size": 16, "max_epochs": 3, "n_threads": 1}
    return CNNClassifier(**{**defaults, **params})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return blobs(20, seed=3)  # 40 images of 32x32: 20 "blob", 20 "none"


# ---------------------------------------------------------------------------------------------------- network


@pytest.mark.parametrize(
    ("in_channels", "n_classes", "width", "parameters"),
    [
        # stem 176; blocks 4,672 + 14,528 + 57,728 + 230,144; head 2 * 256 + 2
        (1, 2, 16, 307_762),
        (1, 4, 16, 308_276),  # two more rows of 256 + 1 in the head
        (3, 2, 16, 308_050),  # the stem's conv sees three channels: 2 * 9 * 16 more
        (1, 2, 8, 77_466),
    ],
)
def test_resnet_small_parameter_count(in_channels: int, n_classes: int, width: int, parameters: int) -> None:
    network = _build_network("resnet_small", in_channels, n_classes, width)
    assert sum(p.numel() for p in network.parameters()) == parameters


def test_resnet_small_is_the_default_and_takes_16_pixel_images() -> None:
    assert CNNClassifier().architecture == "resnet_small"
    network = _build_network("resnet_small", 1, 3, 4).eval()
    assert network(torch.zeros(2, 1, 16, 16)).shape == (2, 3)  # 1/16 size: one cell left before pooling


# --------------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.25),  # warm-up: base * (step + 1) / warmup_steps
        (1, 0.5),
        (3, 1.0),  # the last warm-up step reaches base
        (4, 1.0),  # the cosine starts at base
        (9, 0.5),  # halfway through the 10 cosine steps
        (14, 0.0),  # its end
        (20, 0.0),  # past it
    ],
)
def test_learning_rate_warms_up_then_follows_half_a_cosine(step: int, expected: float) -> None:
    assert _learning_rate(1.0, step, warmup_steps=4, total_steps=14) == pytest.approx(expected, abs=1e-12)


def test_warm_up_rises_linearly_from_base_over_its_length() -> None:
    rates = [_learning_rate(3e-3, step, warmup_steps=5, total_steps=50) for step in range(5)]
    np.testing.assert_allclose(rates, [6e-4, 1.2e-3, 1.8e-3, 2.4e-3, 3e-3])


@pytest.mark.parametrize(
    ("epoch", "elapsed", "epoch_seconds", "budget", "expected"),
    [
        (3, 30.0, 10.0, None, 30),  # no budget: max_epochs
        (3, 30.0, 10.0, 1000.0, 30),  # a budget that does not bind
        (3, 30.0, 10.0, 100.0, 10),  # 70 s left at 10 s an epoch: 7 more
        (3, 30.0, 10.0, 99.0, 9),  # only whole epochs count
        (3, 95.0, 10.0, 100.0, 3),  # no time for another: stop now
        (3, 120.0, 10.0, 100.0, 3),  # past the budget already
    ],
)
def test_planned_epochs_end_with_the_time_budget(
    epoch: int, elapsed: float, epoch_seconds: float, budget: float | None, expected: int
) -> None:
    assert _planned_epochs(epoch, elapsed, epoch_seconds, budget, max_epochs=30) == expected


def test_training_follows_the_schedule_step_by_step(data: tuple) -> None:
    # 40 images, 8 validate: 32 train in 2 batches an epoch; 3 epochs are 6 steps, the first epoch's 2 warm up.
    X, y = data
    model = tiny(learning_rate=1e-2).fit(X, y)
    last_steps = [1, 3, 5]  # each epoch's last step
    expected = [_learning_rate(1e-2, step, 2, 6) for step in last_steps]
    assert [row["lr"] for row in model.history_] == pytest.approx(expected)
    assert expected == pytest.approx(
        [1e-2, 1e-2 * (1 + math.cos(math.pi / 4)) / 2, 1e-2 * (1 - math.cos(math.pi / 4)) / 2]
    )


def test_a_constant_schedule_keeps_the_learning_rate(data: tuple) -> None:
    X, y = data
    model = tiny(learning_rate=1e-2, schedule="constant").fit(X, y)
    assert [row["lr"] for row in model.history_] == [1e-2, 1e-2, 1e-2]


# ------------------------------------------------------------------------------------------- stopping, budget


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(data: tuple, patience: int) -> None:
    # learning_rate=0: the weights never change, so epoch 1's validation loss is never beaten.
    X, y = data
    model = tiny(learning_rate=0.0, patience=patience, max_epochs=20).fit(X, y)
    assert (model.stop_reason_, model.best_epoch_, len(model.history_)) == ("early_stopping", 1, 1 + patience)


def test_the_time_budget_stops_training_and_keeps_the_best_epoch(data: tuple) -> None:
    X, y = data
    model = tiny(time_budget_s=1e-3, max_epochs=10).fit(X, y)
    assert (model.stop_reason_, model.best_epoch_, len(model.history_)) == ("time_budget", 1, 1)


# -------------------------------------------------------------------------------------------- validation fold


def test_grouped_split_keeps_every_group_on_one_side() -> None:
    # 60 images in 20 groups of 3, one class per group; classes of 30.
    codes = np.repeat([0, 1], 30)
    groups = np.repeat(np.arange(20), 3)
    train, val = _grouped_split(codes, np.array(["a", "b"]), groups, 0.2, np.random.default_rng(0))
    assert set(groups[train]).isdisjoint(groups[val])
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(60))
    # Each class needs round(0.2 * 30) = 6 validation images: two groups of 3.
    assert np.bincount(codes[val]).tolist() == [6, 6]


def test_grouped_split_of_single_images_matches_the_stratified_share() -> None:
    codes = np.array([0] * 25 + [1] * 10)
    train, val = _grouped_split(codes, np.array(["a", "b"]), np.arange(35), 0.2, np.random.default_rng(1))
    assert np.bincount(codes[val]).tolist() == [5, 2]
    assert train.size + val.size == 35


def test_grouped_split_refuses_a_class_held_by_one_group() -> None:
    codes = np.array([0] * 6 + [1] * 6)
    groups = np.array([0] * 6 + [1, 2, 3, 4, 5, 6])  # class "a" is one patient: it cannot be on both sides
    with pytest.raises(ValueError, match="val_groups: class 'a' has 6 sample\\(s\\) in 1 group\\(s\\)"):
        _grouped_split(codes, np.array(["a", "b"]), groups, 0.2, np.random.default_rng(0))


def test_fit_validates_on_whole_groups_and_keeps_the_held_out_scores(data: tuple) -> None:
    X, y = data
    groups = np.arange(40) // 4  # ten groups of four images, each of one class
    model = tiny(max_epochs=1).fit(X, y, val_groups=groups)
    in_validated_groups = np.isin(groups, groups[model.val_index_])
    assert np.array_equal(np.flatnonzero(in_validated_groups), model.val_index_)  # whole groups, nothing else
    assert np.bincount(y[model.val_index_] == "blob").tolist() == [4, 4]  # round(0.2 * 20): one group per class
    np.testing.assert_allclose(model.val_proba_, model.predict_proba(X[model.val_index_]), atol=1e-6)


def test_val_groups_must_match_the_images(data: tuple) -> None:
    X, y = data
    with pytest.raises(ValueError, match=r"val_groups: expected one group per image \(40\), got \(39,\)"):
        tiny().fit(X, y, val_groups=np.arange(39))


# ------------------------------------------------------------------------------------------------ augmentation


def test_batch_augmentation_keeps_the_shape_and_range_in_channels_last_order() -> None:
    batch = _to_tensor(np.random.default_rng(0).random((5, 16, 16, 3), dtype=np.float32))
    out = _augment_batch(batch, torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, batch)


def test_batch_augmentation_keeps_each_image_in_its_row() -> None:
    # Flat images of distinct levels stay flat under flips and affines (edges repeat): only the intensity gain
    # (0.9-1.1) and offset (+-0.05) move them, so row i stays near level i and its label still applies.
    levels = torch.linspace(0.2, 0.8, 7)
    batch = levels.view(7, 1, 1, 1).expand(7, 1, 16, 16).contiguous()
    out = _augment_batch(batch, torch.Generator().manual_seed(1))
    means = out.mean(dim=(1, 2, 3))
    assert torch.all((means - levels).abs() <= 0.1 * levels + 0.05 + 1e-6)
    assert torch.all(out.std(dim=(1, 2, 3)) < 1e-5)


def test_batch_augmentation_repeats_with_the_same_seed_and_flips_about_half() -> None:
    half = torch.zeros(200, 1, 16, 16)
    half[..., :8] = 1.0  # left half bright
    first = _augment_batch(half, torch.Generator().manual_seed(2))
    second = _augment_batch(half, torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    flipped = (first[..., 8:].mean(dim=(1, 2, 3)) > first[..., :8].mean(dim=(1, 2, 3))).float().mean()
    assert 0.35 < float(flipped) < 0.65


def test_fit_with_batch_augmentation_repeats_with_the_same_seed(data: tuple) -> None:
    X, y = data
    first, second = tiny(max_epochs=2, seed=4).fit(X, y), tiny(max_epochs=2, seed=4).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


# ------------------------------------------------------------------------------------ test-time augmentation


@pytest.fixture(scope="module")
def with_tta(data: tuple) -> CNNClassifier:
    X, y = data
    return tiny(max_epochs=2).fit(X, y)


def test_tta_averages_the_logits_of_the_image_and_its_mirror(with_tta: CNNClassifier, data: tuple) -> None:
    X = data[0][:6]
    with torch.inference_mode():
        plain = with_tta.model_(_to_tensor(X)).numpy()
        mirrored = with_tta.model_(_to_tensor(np.ascontiguousarray(X[:, :, ::-1]))).numpy()
    expected = _softmax((plain + mirrored) / 2, with_tta.temperature_)
    np.testing.assert_allclose(with_tta.predict_proba(X), expected, atol=1e-6)


def test_with_tta_an_image_and_its_mirror_get_the_same_answer(with_tta: CNNClassifier, data: tuple) -> None:
    X = data[0]
    np.testing.assert_allclose(with_tta.predict_proba(X), with_tta.predict_proba(X[:, :, ::-1]), atol=1e-6)


def test_a_model_pickled_before_tta_predicts_without_it(with_tta: CNNClassifier, data: tuple) -> None:
    import pickle

    old = pickle.loads(pickle.dumps(with_tta))
    del old.tta_  # what a model fitted before test-time augmentation lacks
    X = data[0][:4]
    with torch.inference_mode():
        logits = old.model_(_to_tensor(X)).numpy()
    np.testing.assert_allclose(old.predict_proba(X), _softmax(logits, old.temperature_), atol=1e-6)


# ------------------------------------------------------------------------------------------ temperature scaling


def test_temperature_scaling_lowers_the_nll_of_overconfident_logits() -> None:
    # Labels drawn from softmax(z); the logits given are 3z (overconfident).
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.0, (2000, 4))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    codes = np.array([rng.choice(4, p=row) for row in p])
    logits = torch.as_tensor(3 * z)
    temperature = _fit_temperature(logits.float().numpy(), codes)
    before = float(F.cross_entropy(logits, torch.as_tensor(codes)))
    after = float(F.cross_entropy(logits / temperature, torch.as_tensor(codes)))
    assert temperature > 2.5 and after < 0.8 * before


# ---------------------------------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, available_cores()),  # one fit alone: every core
        ("1", 1),  # joblib's share in a worker among others
        ("9999", available_cores()),  # never more than the cores
        ("many", available_cores()),  # unreadable: ignored
    ],
)
def test_default_threads_follow_omp_num_threads(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int
) -> None:
    from conveyor.models.cnn import _default_threads

    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert _default_threads() == expected


# ----------------------------------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"augment": "mixup"}, r"augment: expected one of \['batch', 'monai', 'none'\]"),
        ({"schedule": "step"}, r"schedule: expected one of \['cosine', 'constant'\]"),
        ({"tta": "yes"}, "tta: expected True or False"),
    ],
)
def test_recipe_parameters_are_checked(params: dict, message: str, data: tuple) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**params).fit(*data)
