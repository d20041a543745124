"""A convolutional network family (PyTorch, MONAI) as a scikit-learn classifier over preprocessed images.

``CNNClassifier`` takes the preprocessed pixels, not features: ``X`` is a float array (N, H, W) (grayscale) or
(N, H, W, 3) (RGB) with values in [0, 1], and ``y`` the labels. It trains on the CPU with MONAI augmentation, a
stratified validation fold carved from the data given to ``fit``, class weights, early stopping on the validation loss,
and temperature scaling on that fold, and it pickles to a plain dict of numpy weights, so the registered model needs
torch (and MONAI only for the MONAI architectures) but never the training data.

Importing this module imports torch (~2 s). MONAI (~5 s: it imports most of its package, MLflow included) is imported
only by ``fit`` with ``augment=True`` and by the ``"densenet"`` / ``"resnet"`` architectures, so serving the default
``"small"`` network needs torch alone.

Determinism: ``fit`` seeds torch (inside ``torch.random.fork_rng``, so the caller's global generator is untouched),
numpy generators for the split and the batch order, and every MONAI random transform (``set_random_state``), and
turns on ``torch.use_deterministic_algorithms`` for its duration. Two fits with the same seed and the same
``n_threads`` on the same torch build give bitwise-identical weights; a different thread count may change float
rounding in reductions.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from conveyor.models.ece import top_label_ece
from conveyor.workspace import available_cores

__all__ = ["ARCHITECTURES", "CNNClassifier"]

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("small", "densenet", "resnet")
"""``small``: conveyor's own ConvNet; ``densenet`` / ``resnet``: small MONAI networks, randomly initialised."""

# The smallest image side each network accepts: its total downsampling (stride-2 stem and pools; ResNet has 5 halvings).
_MIN_SIZE = {"small": 16, "densenet": 16, "resnet": 32}
Images = Any  # an (N, H, W[, C]) float ndarray, a memmap, or a lazy array such as ImageRows (see _check_images)
_CHECK_CHUNK = 256  # images read at a time to check the value range
_BN_STATS_IMAGES = 512  # training images whose activations set BatchNorm's statistics after each epoch
_TEMPERATURE_BOUNDS = (0.05, 20.0)
_LOG_TEMPERATURE_PRIOR_SD = 1.0


# ------------------------------------------------------------------------------------------------------- networks


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _AvgMaxHead(nn.Module):
    """Global average and global max pooling side by side, then a linear layer.

    The max keeps a small bright lesion visible that averaging over the whole slice would dilute.
    """

    def __init__(self, channels: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.linear(self.dropout(pooled))


def _small_cnn(in_channels: int, n_classes: int, width: int) -> nn.Module:
    """Stem (5x5 conv stride 2, max pool: 1/4 size), three stages of two 3x3 conv + BN + ReLU, avg+max head.

    The stem downsamples early because CPU time goes to full-resolution layers: at 128x128 on one thread this trains
    2.3x faster than a net of one 3x3 conv per stage that starts at full size (with a third of the parameters), and a
    lesion 5-10 pixels wide at 128x128 still spans a few cells at 32x32.
    """
    layers: list[nn.Module] = [*_conv_bn_relu(in_channels, width, 5, 2), nn.MaxPool2d(2)]
    channels = width
    for stage in range(1, 4):
        out = width * 2**stage
        layers += [*_conv_bn_relu(channels, out), *_conv_bn_relu(out, out)]
        if stage < 3:
            layers.append(nn.MaxPool2d(2))
        channels = out
    layers.append(_AvgMaxHead(channels, n_classes))
    return nn.Sequential(*layers)


def _build_network(architecture: str, in_channels: int, n_classes: int, width: int) -> nn.Module:
    """A freshly initialised network (from torch's global generator) for (N, in_channels, H, W) input."""
    if architecture == "small":
        return _small_cnn(in_channels, n_classes, width)
    if architecture == "densenet":
        from monai.networks.nets import DenseNet

        return DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=n_classes,
            init_features=width,
            growth_rate=max(1, width // 2),
            block_config=(2, 2, 2),
        )
    if architecture == "resnet":
        from monai.networks.nets import ResNet

        return ResNet(
            block="basic",
            layers=[1, 1, 1, 1],
            block_inplanes=[width, 2 * width, 4 * width, 8 * width],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            num_classes=n_classes,
        )
    raise ValueError(f"architecture: expected one of {list(ARCHITECTURES)}, got {architecture!r}")


def _new_network(config: dict[str, Any]) -> nn.Module:
    """``_build_network(**config)`` with its weights in channels-last order, the layout ``_to_tensor`` feeds it."""
    return _build_network(**config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# ---------------------------------------------------------------------------------------------------------- input


def _check_images(X: ArrayLike, min_size: int) -> Any:
    """X as an (N, H, W) or (N, H, W, C) float array with values in [0, 1], or ValueError.

    Not converted to float32 here: batches are converted one at a time, so a float64 or memory-mapped X, or an
    array-like that reads its rows on demand (``conveyor.training.pixels.ImageRows``: it has ``shape``, ``dtype``
    and ``__getitem__`` returning the same kind, and converts with ``np.asarray``), is never copied whole.
    """
    images: Any = X if isinstance(X, np.ndarray) or _is_lazy_array(X) else np.asarray(X)
    if images.dtype.kind != "f":
        raise ValueError(
            f"X: expected float images with values in [0, 1], got dtype {images.dtype}; "
            "scale integer pixels first (e.g. uint8 / 255)"
        )
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
        raise ValueError(
            f"X: expected an array (N, H, W) of grayscale or (N, H, W, 3) of RGB images, got shape {images.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError("X: expected at least one image, got none")
    if min(images.shape[1:3]) < min_size:
        raise ValueError(f"X: images must be at least {min_size}x{min_size} pixels, got {images.shape[1:3]}")
    low, high = math.inf, -math.inf
    for start in range(0, images.shape[0], _CHECK_CHUNK):
        chunk = np.asarray(images[start : start + _CHECK_CHUNK])
        low, high = float(np.minimum(low, chunk.min())), float(np.maximum(high, chunk.max()))  # NaN propagates
    if not (low >= 0.0 and high <= 1.0):  # also catches NaN, which compares False
        raise ValueError(
            f"X: expected values in [0, 1], got min {low}, max {high}; scale images to [0, 1] (e.g. uint8 / 255)"
        )
    return images


def _is_lazy_array(X: object) -> bool:
    return all(hasattr(X, name) for name in ("shape", "ndim", "dtype", "__getitem__", "__array__"))


def _n_channels(images: Any) -> int:
    return 1 if images.ndim == 3 else int(images.shape[-1])


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W) or (B, H, W, C) float array -> float32 (B, C, H, W) tensor in channels-last memory order."""
    array = np.asarray(batch, dtype=np.float32)
    tensor = torch.from_numpy(array[..., None] if array.ndim == 3 else array).permute(0, 3, 1, 2)
    # channels_last is the (B, H, W, C) layout the numpy batch already has; oneDNN convs run ~1.5x faster on it.
    return tensor.contiguous(memory_format=torch.channels_last)


def _stratified_split(
    codes: np.ndarray, classes: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices with round(val_fraction * n_c) (at least 1) of each class c in validation."""
    train, val = [], []
    for code, label in enumerate(classes):
        members = np.flatnonzero(codes == code)
        n_val = max(1, round(val_fraction * members.size))
        if members.size - n_val < 1:
            needed = next(n for n in range(2, 10_000) if n - max(1, round(val_fraction * n)) >= 1)
            raise ValueError(
                f"y: class '{label}' has {members.size} sample(s); the stratified validation fold "
                f"(val_fraction={val_fraction}) needs at least one of each class in both folds, so every class needs "
                f"at least {needed} samples"
            )
        shuffled = rng.permutation(members)
        val.append(shuffled[:n_val])
        train.append(shuffled[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ torch settings


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run with ``n_threads`` intra-op threads (None: every core this process may use), then restore the old count."""
    wanted = int(n_threads) if n_threads is not None else available_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch and demand deterministic kernels for the block; the caller's generator and flags come back after."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextmanager
def _no_monai_metadata() -> Iterator[None]:
    """MONAI transforms return plain tensors inside the block (MetaTensor bookkeeping costs ~0.4 ms per image)."""
    from monai.data import get_track_meta, set_track_meta

    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def _augmentation(seed: int, image_shape: tuple[int, int]) -> Callable[[torch.Tensor], Any]:
    """MONAI transforms for one channel-first (C, H, W) float32 image in [0, 1], seeded from ``seed``.

    Rotation (up to 15 degrees), shear (0.1), zoom (0.9-1.1) and a shift (up to 5% of the side) are one
    ``RandAffine``: one resampling per image instead of three (``RandRotate``, ``RandZoom``, a shear), so less blur
    and less time. Then a left-right flip and intensity jitter (scale by 0.9-1.1, gamma 0.8-1.25). Returns a
    (C, H, W) tensor; values may leave [0, 1] and are clipped by the caller.
    """
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandFlip, RandScaleIntensity

    transforms = Compose(
        [
            RandAffine(
                prob=0.8,
                rotate_range=math.pi / 12,
                shear_range=(0.1, 0.1),
                scale_range=(0.1, 0.1),
                translate_range=(0.05 * image_shape[0], 0.05 * image_shape[1]),  # in pixels
                padding_mode="border",
            ),
            RandFlip(prob=0.5, spatial_axis=1),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        ]
    )
    transforms.set_random_state(seed=seed)
    return transforms


# ------------------------------------------------------------------------------------------------------ estimator


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A convolutional network over preprocessed images, trained and calibrated on the CPU.

    The deep family beside the topological ones: it learns from the pixels, so a team can see on one table whether
    hand-made topological features or a network win on their images. It is sized for small clinical datasets on a
    few CPU cores: the default ``"small"`` network trains on a few thousand 128x128 images in minutes.

    ``fit`` carves a stratified validation fold from the data it is given, trains with MONAI augmentation and
    inverse-frequency class weights, stops early on the validation loss and keeps the best epoch's weights, then fits
    a temperature on the validation logits so that ``predict_proba`` is calibrated. Everything random is seeded:
    the same ``seed`` (and ``n_threads``) gives the same model.

    Parameters
    ----------
    architecture : {"small", "densenet", "resnet"}, default="small"
        ``"small"``: a 5x5 stride-2 stem, three stages of two conv + BN + ReLU blocks, global average and max
        pooling and a linear head (~290k parameters at ``width=16``). ``"densenet"``: MONAI ``DenseNet`` with
        ``init_features=width``, ``growth_rate=width // 2``, ``block_config=(2, 2, 2)`` (~20k). ``"resnet"``:
        MONAI ``ResNet`` with basic blocks, one per stage, ``width`` to ``8 * width`` channels (~310k). No
        pretrained weights are ever downloaded.
    width : int, default=16
        Channels of the first block; later stages double it.
    learning_rate : float, default=1e-3
        AdamW learning rate (weight decay 1e-4).
    batch_size : int, default=32
        Images per optimiser step; the epoch is split into equal batches of at most this size.
    max_epochs : int, default=30
        Most passes over the training fold.
    patience : int, default=5
        Stop after this many epochs without a lower validation loss.
    val_fraction : float, default=0.2
        Share of each class held out (at least one image per class) for early stopping and calibration.
    augment : bool, default=True
        Augment training batches (affine: rotation, shear, zoom, shift; left-right flip; intensity scale and gamma).
    time_budget_s : float or None, default=None
        Wall-time limit for training: after an epoch, training stops if the next epoch (as long as the last one)
        would end past it. At least one epoch always runs; the best epoch so far is kept.
    seed : int, default=0
        Seeds weight initialisation, dropout, the validation split, batch order and augmentation.
    n_threads : int or None, default=None
        Torch intra-op threads during ``fit`` and ``predict_proba`` (None: every core this process may use).
    progress : bool, default=False
        Show a progress bar per epoch on stderr (batches done, running loss, then the validation loss and F1).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Sorted unique labels; the column order of ``predict_proba``.
    n_channels_ : int
        1 (grayscale) or 3 (RGB), from the training images.
    image_shape_ : tuple of int
        (H, W) of the training images; images to predict must have the same.
    class_weight_ : ndarray of shape (n_classes,)
        Loss weight of each class: ``n_samples / (n_classes * count)`` over the ``y`` given to ``fit``.
    model_ : torch.nn.Module
        The network with the best epoch's weights, in eval mode.
    history_ : list of dict
        One row per epoch: ``epoch`` (from 1), ``train_loss`` and ``val_loss`` (class-weighted cross-entropy),
        ``val_f1`` (macro F1, or binary F1 of the last class when there are two), ``seconds``.
    best_epoch_ : int
        The epoch whose weights were kept (lowest validation loss).
    stop_reason_ : str
        ``"max_epochs"``, ``"early_stopping"`` or ``"time_budget"``.
    temperature_ : float
        Logits are divided by this before the softmax; fitted by LBFGS on the validation NLL with a weak prior on
        log T (normal, sd 1) so that a small, perfectly classified fold cannot drive it to 0; within [0.05, 20].
    val_ece_before_, val_ece_after_ : float
        Expected calibration error (10 equal-width confidence bins) on the validation fold before and after
        temperature scaling.

    Notes
    -----
    Pickling stores the weights as numpy arrays and rebuilds the network on load, so a pickled model is CPU-only
    and independent of the training data.

    Examples
    --------
    >>> model = CNNClassifier(max_epochs=3).fit(images, labels)  # doctest: +SKIP
    >>> model.predict_proba(images[:1])  # doctest: +SKIP
    """

    def __init__(
        self,
        architecture: str = "small",
        width: int = 16,
        learning_rate: float = 1e-3,
        batch_size: int = 32,
        max_epochs: int = 30,
        patience: int = 5,
        val_fraction: float = 0.2,
        augment: bool = True,
        time_budget_s: float | None = None,
        seed: int = 0,
        n_threads: int | None = None,
        progress: bool = False,
    ) -> None:
        self.architecture = architecture
        self.width = width
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.augment = augment
        self.time_budget_s = time_budget_s
        self.seed = seed
        self.n_threads = n_threads
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

    # --------------------------------------------------------------------------------------------------- fit

    def fit(
        self, X: ArrayLike, y: ArrayLike, epoch_callback: Callable[[dict[str, Any]], None] | None = None
    ) -> CNNClassifier:
        """Train on the images, keep the best epoch and calibrate on the validation fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3)
            Float images with values in [0, 1].
        y : array-like of shape (n_samples,)
            Labels; at least two classes, each with enough samples for both folds.
        epoch_callback : callable or None, default=None
            Called after each epoch with a copy of its ``history_`` row (e.g. to log the learning curve).

        Returns
        -------
        self : CNNClassifier
            The fitted classifier.
        """
        self._check_params()
        started = time.perf_counter()
        images = _check_images(X, _MIN_SIZE[self.architecture])
        labels = np.asarray(y)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"y: expected one label per image ({images.shape[0]}), got shape {labels.shape}")
        check_classification_targets(labels)
        classes, codes = np.unique(labels, return_inverse=True)
        if classes.size < 2:
            raise ValueError(f"y: expected at least two classes, got only {classes.tolist()!r}")
        split_seq, order_seq, augment_seq = np.random.SeedSequence(self.seed).spawn(3)
        train_idx, val_idx = _stratified_split(codes, classes, self.val_fraction, np.random.default_rng(split_seq))
        counts = np.bincount(codes, minlength=classes.size)
        class_weight = codes.size / (classes.size * counts)

        image_shape = (int(images.shape[1]), int(images.shape[2]))
        network_config: dict[str, Any] = {
            "architecture": self.architecture,
            "in_channels": _n_channels(images),
            "n_classes": int(classes.size),
            "width": int(self.width),
        }
        with _torch_threads(self.n_threads), _seeded_torch(int(self.seed)):
            model = _new_network(network_config)
            augment = None
            if self.augment:
                augment = _augmentation(int(augment_seq.generate_state(1)[0]), image_shape)
            history, best_state, best_epoch, stop_reason = self._train(
                model,
                images,
                codes,
                train_idx,
                val_idx,
                torch.as_tensor(class_weight, dtype=torch.float32),
                augment,
                np.random.default_rng(order_seq),
                started,
                epoch_callback,
            )
            model.load_state_dict(best_state)
            model.eval()
            val_logits = _logits(model, images, val_idx, self.batch_size)
        val_codes = codes[val_idx]
        temperature = _fit_temperature(val_logits, val_codes)
        # Learned state is set only now, so a fit that fails part-way leaves no mix of old and new attributes.
        self.classes_ = classes
        self.n_channels_ = network_config["in_channels"]
        self.image_shape_ = image_shape
        self.class_weight_ = class_weight
        self.network_config_ = network_config
        self.model_ = model
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.stop_reason_ = stop_reason
        self.temperature_ = temperature
        self.val_ece_before_ = top_label_ece(_softmax(val_logits, 1.0), val_codes)
        self.val_ece_after_ = top_label_ece(_softmax(val_logits, temperature), val_codes)
        return self

    def _check_params(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {list(ARCHITECTURES)}, got {self.architecture!r}")
        for name, minimum in (("width", 1), ("batch_size", 1), ("max_epochs", 1), ("patience", 1), ("seed", 0)):
            value = getattr(self, name)
            if not _is_integer(value) or value < minimum:
                raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
        if not (_is_real(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate: expected a number >= 0, got {self.learning_rate!r}")
        if not (_is_real(self.val_fraction) and 0 < self.val_fraction < 1):
            raise ValueError(f"val_fraction: expected a number in (0, 1), got {self.val_fraction!r}")
        if self.time_budget_s is not None and not (_is_real(self.time_budget_s) and self.time_budget_s > 0):
            raise ValueError(f"time_budget_s: expected None or a number > 0, got {self.time_budget_s!r}")
        if self.n_threads is not None and not (_is_integer(self.n_threads) and self.n_threads >= 1):
            raise ValueError(f"n_threads: expected None or an integer >= 1, got {self.n_threads!r}")

    def _train(
        self,
        model: nn.Module,
        images: Images,
        codes: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        class_weight: torch.Tensor,
        augment: Callable[[torch.Tensor], Any] | None,
        rng: np.random.Generator,
        started: float,
        epoch_callback: Callable[[dict[str, Any]], None] | None,
    ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], int, str]:
        """The epoch loop: returns the history, the best weights, the best epoch and why it stopped."""
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate, weight_decay=1e-4)
        targets = torch.as_tensor(codes, dtype=torch.long)
        n_batches = math.ceil(train_idx.size / self.batch_size)
        stats_idx = np.sort(rng.permutation(train_idx)[:_BN_STATS_IMAGES])
        history: list[dict[str, Any]] = []
        best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
        stop_reason = "max_epochs"
        bars = _EpochBars(self.max_epochs, n_batches) if self.progress else None
        try:
            for epoch in range(1, self.max_epochs + 1):
                epoch_start = time.perf_counter()
                model.train()
                total, seen = 0.0, 0
                if bars is not None:
                    bars.start(epoch)
                # Equal-sized batches (array_split): no trailing batch of one image, which BatchNorm cannot train on.
                for shuffled in np.array_split(rng.permutation(train_idx), n_batches):
                    batch_idx = np.sort(
                        shuffled
                    )  # ascending reads are kinder to a memory-mapped X; order is irrelevant
                    inputs = _batch(images, batch_idx, augment)
                    loss = F.cross_entropy(model(inputs), targets[batch_idx], weight=class_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * batch_idx.size
                    seen += batch_idx.size
                    if bars is not None:
                        bars.batch(total / seen)
                _recompute_batchnorm_stats(model, images, stats_idx, self.batch_size)
                model.eval()
                val_logits = _logits(model, images, val_idx, self.batch_size)
                val_targets = targets[val_idx]
                val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), val_targets, weight=class_weight))
                row = {
                    "epoch": epoch,
                    "train_loss": total / seen,
                    "val_loss": val_loss,
                    "val_f1": _f1(codes[val_idx], val_logits.argmax(axis=1), n_classes=class_weight.shape[0]),
                    "seconds": time.perf_counter() - epoch_start,
                }
                history.append(row)
                if bars is not None:
                    bars.end(row)
                logger.debug("epoch %(epoch)d: train_loss %(train_loss).4f val_loss %(val_loss).4f", row)
                if epoch_callback is not None:
                    epoch_callback(dict(row))
                if val_loss < best_loss:
                    best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
                elif epoch - best_epoch >= self.patience:
                    stop_reason = "early_stopping"
                    break
                elapsed = time.perf_counter() - started
                if (
                    self.time_budget_s is not None
                    and epoch < self.max_epochs
                    and elapsed + row["seconds"] > self.time_budget_s
                ):
                    stop_reason = "time_budget"
                    break
        finally:
            if bars is not None:
                bars.close()
        return history, best_state, best_epoch, stop_reason

    # ----------------------------------------------------------------------------------------------- predict

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Calibrated class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3)
            Float images in [0, 1], the same size and channels as the training images; one image is a batch of 1.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            float64 probabilities, columns in ``classes_`` order, rows summing to 1.
        """
        check_is_fitted(self, "model_")
        images = _check_images(X, _MIN_SIZE[self.network_config_["architecture"]])
        if _n_channels(images) != self.n_channels_ or tuple(images.shape[1:3]) != self.image_shape_:
            raise ValueError(
                f"X: expected images of {self.image_shape_[0]}x{self.image_shape_[1]} pixels with "
                f"{self.n_channels_} channel(s), as in fit, got {images.shape[1]}x{images.shape[2]} with "
                f"{_n_channels(images)}; preprocess them the same way"
            )
        with _torch_threads(self.n_threads):
            self.model_.eval()
            logits = _logits(self.model_, images, np.arange(images.shape[0]), self.batch_size)
        return _softmax(logits, self.temperature_)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable label of each image.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3)
            As for ``predict_proba``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Values from ``classes_``.
        """
        proba = self.predict_proba(X)  # checks that the model is fitted before classes_ is read
        return self.classes_[proba.argmax(axis=1)]

    # -------------------------------------------------------------------------------------------------- pickle

    def __getstate__(self) -> dict[str, Any]:
        # object.__getstate__ returns the live __dict__: copy before replacing the module with plain weights.
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            state["_weights"] = {
                name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()
            }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        weights = state.pop("_weights", None)
        super().__setstate__(state)
        if weights is not None:
            model = _new_network(self.network_config_)
            model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
            model.eval()
            self.model_ = model


# ------------------------------------------------------------------------------------------------------- helpers


class _EpochBars:
    """One progress bar per epoch on stderr (rich): batches done and the running loss, then the validation scores."""

    def __init__(self, max_epochs: int, n_batches: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.max_epochs, self.n_batches = max_epochs, n_batches
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(), console=Console(stderr=True),
        )  # fmt: skip
        self.task: Any = None

    def start(self, epoch: int) -> None:
        if self.task is None:
            self.progress.start()
        self.task = self.progress.add_task(f"epoch {epoch}/{self.max_epochs}", total=self.n_batches, note="")

    def batch(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, note=f"loss {loss:.4f}")

    def end(self, row: dict[str, Any]) -> None:
        note = f"loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  val F1 {row['val_f1']:.3f}"
        self.progress.update(self.task, note=note)
        self.progress.refresh()

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _batch(images: Images, idx: np.ndarray, augment: Callable[[torch.Tensor], Any] | None) -> torch.Tensor:
    """One training batch built now from ``images[idx]``, augmented image by image when ``augment`` is given."""
    tensor = _to_tensor(images[idx])
    if augment is None:
        return tensor
    with _no_monai_metadata():
        augmented = [torch.as_tensor(augment(image)) for image in tensor.contiguous()]
    return torch.stack(augmented).clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)


def _recompute_batchnorm_stats(model: nn.Module, images: Images, idx: np.ndarray, batch_size: int) -> None:
    """Set every BatchNorm layer's running mean and variance to their average over ``images[idx]`` (not augmented).

    Running statistics are an exponential average (momentum 0.1) over training batches, most of them seen with older
    weights. A dataset of a few hundred images gives a few batches per epoch, too few for that average to follow the
    weights: the network that fits the training batches then predicts one class in eval mode. Recomputing them with
    the epoch's final weights ("precise BN") fixes that, for one forward pass over at most 512 training images.
    """
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    model.eval()  # dropout off; only the BatchNorm layers collect statistics
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
        layer.train()
    with torch.inference_mode():
        for batch_idx in np.array_split(idx, math.ceil(idx.size / batch_size)):
            model(_to_tensor(images[batch_idx]))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        layer.eval()


def _logits(model: nn.Module, images: Images, idx: np.ndarray, batch_size: int) -> np.ndarray:
    """float32 logits (len(idx), n_classes) of ``images[idx]`` in eval mode, without gradients, batch by batch."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, idx.size, batch_size):
            outputs.append(model(_to_tensor(images[idx[start : start + batch_size]])).float().numpy())
    return np.concatenate(outputs)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise float64 softmax of ``logits / temperature``."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def _f1(codes: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Macro F1 for more than two classes; for two, binary F1 of the last (sorted) class."""
    if n_classes == 2:
        return float(f1_score(codes, predicted, pos_label=1, average="binary", zero_division=0.0))
    return float(f1_score(codes, predicted, labels=np.arange(n_classes), average="macro", zero_division=0.0))


def _fit_temperature(logits: np.ndarray, codes: np.ndarray, prior_sd: float = _LOG_TEMPERATURE_PRIOR_SD) -> float:
    """The temperature T minimising the summed NLL of softmax(logits / T) plus a weak prior, by LBFGS on log T.

    Plain NLL is minimised by T -> 0 whenever the network classifies every validation image correctly, which a fold
    of a few dozen images often allows: the served probabilities would then all be 0 or 1. The prior (log T normal
    with mean 0, sd ``prior_sd``, i.e. the MAP estimate) costs that much evidence: it barely moves T when the fold has
    hundreds of images with mistakes, and keeps T near 1 when the fold says little. The result is clipped to
    [0.05, 20] and falls back to 1 if the optimiser fails.
    """
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    targets = torch.as_tensor(codes, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        nll = F.cross_entropy(logits_t / log_t.exp(), targets, reduction="sum")
        loss = nll + 0.5 * (log_t / prior_sd).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return float(np.clip(temperature, *_TEMPERATURE_BOUNDS))
