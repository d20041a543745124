"""A convolutional network family (PyTorch, MONAI) as a scikit-learn classifier over preprocessed images.

``CNNClassifier`` takes the preprocessed pixels, not features: ``X`` is a float array (N, H, W) (grayscale) or
(N, H, W, 3) (RGB) with values in [0, 1], and ``y`` the labels. It trains on the CPU: a small residual network,
augmentation on the batch tensor, a validation fold carved from the data given to ``fit`` (stratified; whole groups
with ``val_groups``), class weights, AdamW with a warm-up and a cosine schedule that ends with the epochs or the time
budget, early stopping on the validation loss, test-time augmentation (each image and its mirror) and temperature
scaling on that fold. It pickles to a plain dict of numpy weights, so the registered model needs torch (and MONAI only
for the MONAI architectures) but never the training data.

Importing this module imports torch (~2 s). MONAI (~5 s: it imports most of its package, MLflow included) is imported
only by ``fit`` with ``augment="monai"`` and by the ``"densenet"`` / ``"resnet"`` architectures, so training and
serving the default ``"resnet_small"`` network need torch alone.

Determinism: ``fit`` seeds torch (inside ``torch.random.fork_rng``, so the caller's global generator is untouched),
numpy generators for the split and the batch order, the augmentation's torch generator (or every MONAI random
transform, ``set_random_state``), and turns on ``torch.use_deterministic_algorithms`` for its duration. Two fits with
the same seed and the same ``n_threads`` on the same torch build give bitwise-identical weights, unless the time budget
binds (then the clock decides when the learning rate anneals and training stops); a different thread count may change
float rounding in reductions.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
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

__all__ = ["ARCHITECTURES", "AUGMENTATIONS", "SCHEDULES", "CNNClassifier"]

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("resnet_small", "small", "densenet", "resnet")
"""``resnet_small``: conveyor's small residual network (the default); ``small``: conveyor's plain ConvNet (the default
before it); ``densenet`` / ``resnet``: small MONAI networks. All randomly initialised."""

# The smallest image side each network accepts: its total downsampling (stride-2 stem and pools; ResNet has 5 halvings).
_MIN_SIZE = {"resnet_small": 16, "small": 16, "densenet": 16, "resnet": 32}
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


class _StridedPointwise(nn.Conv2d):
    """A 1x1 convolution at ``stride``, computed as the 1x1 convolution of the input's every ``stride``-th pixel: the
    same values and the same weights (``weight``, no bias), but not oneDNN's strided 1x1 backward, which corrupts
    the heap (an abort, or a silent exit) on channels-last tensors of under 8 channels on one thread (torch 2.13)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, 1, bias=False)
        self.step = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, :: self.step, :: self.step])


class _BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity shortcut (a 1x1 conv + BN where the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        # The last BatchNorm keeps torch's initial scale of 1: zeroing it (each block starting as its shortcut, a trick
        # for long ImageNet runs) left a 30-step fit of a spot-or-noise task at chance, and it learnt it with 1.
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, out_channels, stride=stride),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                _StridedPointwise(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _resnet_small(in_channels: int, n_classes: int, width: int) -> nn.Module:
    """Stem (3x3 conv stride 2: 1/2 size), four stages of one basic block (``width`` to ``8 * width`` channels, the
    last three at stride 2: 1/16 size in all), avg+max head; 307,762 parameters at width 16 for one channel and two
    classes.

    Like ``_small_cnn`` it halves the image before the first block, where CPU time goes; unlike it, it keeps the first
    stage at half size (64x64 for 128x128 input: small lesions keep their detail) and its shortcuts let all four stages
    train from the first epoch.
    """
    layers: list[nn.Module] = [*_conv_bn_relu(in_channels, width, 3, 2)]
    channels = width
    for stage in range(4):
        out = width * 2**stage
        layers.append(_BasicBlock(channels, out, stride=1 if stage == 0 else 2))
        channels = out
    layers.append(_AvgMaxHead(channels, n_classes))
    return nn.Sequential(*layers)


def _build_network(architecture: str, in_channels: int, n_classes: int, width: int) -> nn.Module:
    """A freshly initialised network (from torch's global generator) for (N, in_channels, H, W) input."""
    if architecture == "resnet_small":
        return _resnet_small(in_channels, n_classes, width)
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


def _grouped_split(
    codes: np.ndarray, classes: np.ndarray, groups: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices with every group whole on one side, about ``val_fraction`` of each class in
    validation.

    Groups are visited in a random order; one joins validation while some class it holds still has fewer validation
    images than round(val_fraction * n_c) (at least 1). With one image per group this is ``_stratified_split``'s
    count exactly; a large group may overshoot its class's share by less than its size.
    """
    _, group_codes = np.unique(groups, return_inverse=True)
    n_groups, n_classes = int(group_codes.max()) + 1, classes.size
    per_group = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(per_group, (group_codes, codes), 1)
    target = np.maximum(1, np.round(val_fraction * np.bincount(codes, minlength=n_classes)))
    taken = np.zeros(n_classes, dtype=np.int64)
    in_val = np.zeros(n_groups, dtype=bool)
    for group in rng.permutation(n_groups):
        holds = per_group[group] > 0
        if np.any(taken[holds] < target[holds]):
            in_val[group] = True
            taken += per_group[group]
    val_mask = in_val[group_codes]
    for code, label in enumerate(classes):
        n_val, n_all = int(np.sum(val_mask & (codes == code))), int(np.sum(codes == code))
        if n_val == 0 or n_val == n_all:
            n_label_groups = int(np.count_nonzero(per_group[:, code]))
            raise ValueError(
                f"val_groups: class '{label}' has {n_all} sample(s) in {n_label_groups} group(s); the grouped "
                "validation fold needs images of each class on both sides with every group whole, so every class "
                "needs images in at least two groups"
            )
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ torch settings


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run with ``n_threads`` intra-op threads (None: every core this process may use), then restore the old count."""
    wanted = int(n_threads) if n_threads is not None else _default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _default_threads() -> int:
    """Every core this process may use, unless ``OMP_NUM_THREADS`` asks for fewer.

    joblib sets ``OMP_NUM_THREADS`` in its workers to cores // jobs (1 on this 2-core machine with two jobs), so fits
    that run side by side take a share each instead of each taking every core; a single fit takes them all.
    """
    cores = available_cores()
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return cores
    return max(1, min(wanted, cores))


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


AUGMENTATIONS: tuple[str, ...] = ("batch", "monai", "none")
"""``batch``: random flips, affine and intensity on the whole batch tensor in torch (the default); ``monai``: MONAI's
transforms image by image (the default before it; ~10x its time per image); ``none``."""

Augment = Callable[[torch.Tensor], torch.Tensor]  # float32 (B, C, H, W) in [0, 1] -> the same shape, augmented


def _augment_kind(value: object) -> str:
    """``augment``'s value as one of AUGMENTATIONS (True and False are "batch" and "none"), or ValueError."""
    if isinstance(value, (bool, np.bool_)):
        return "batch" if value else "none"
    if value not in AUGMENTATIONS:
        raise ValueError(f"augment: expected one of {list(AUGMENTATIONS)} (or True / False), got {value!r}")
    return str(value)


def _augment_batch(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch at once, each image on its own draw: a left-right flip (p 0.5); with p 0.8 one affine
    resampling (rotation up to 15 degrees, zoom 0.9-1.1, shift up to 5% of each side; edges repeated); an intensity
    gain of 0.9-1.1 and offset of -0.05-0.05; then values clipped to [0, 1].

    Args:
        batch: float32 (B, C, H, W) in [0, 1].
        generator: draws every random number, so a seeded generator repeats the batch exactly.

    Returns:
        A new float32 (B, C, H, W) tensor in [0, 1], channels-last, image i still at row i (labels stay aligned).
        One ``affine_grid`` and ``grid_sample`` for the batch: on one thread, 32 images of 128x128 take 3.5 ms
        against 33 ms for MONAI's per-image transforms (``_augmentation``), whose time was a quarter of a training
        step of ``resnet_small``.
    """
    n = batch.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n).uniform_(low, high, generator=generator)

    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    moved = (torch.rand(n, generator=generator) < 0.8).float()  # the others keep the identity: no resampling blur
    angle = uniform(-math.pi / 12, math.pi / 12) * moved
    zoom = 1.0 + uniform(-0.1, 0.1) * moved
    shift_x, shift_y = uniform(-0.1, 0.1) * moved, uniform(-0.1, 0.1) * moved  # [-1, 1] spans a side: 0.1 is 5%
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps each output pixel's (x, y) to where it samples the input; negating x's column flips.
    theta = torch.stack([torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1)
    source = batch.contiguous()
    grid = F.affine_grid(theta, list(source.shape), align_corners=False)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain, offset = uniform(0.9, 1.1).view(n, 1, 1, 1), uniform(-0.05, 0.05).view(n, 1, 1, 1)
    return (out * gain + offset).clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)


def _batch_augmentation(seed: int) -> Augment:
    """``_augment_batch`` with its own generator seeded from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return lambda batch: _augment_batch(batch, generator)


def _augmentation(seed: int, image_shape: tuple[int, int]) -> Augment:
    """MONAI transforms applied to each image of a (B, C, H, W) float32 batch in [0, 1], seeded from ``seed``.

    Rotation (up to 15 degrees), shear (0.1), zoom (0.9-1.1) and a shift (up to 5% of the side) are one
    ``RandAffine``: one resampling per image instead of three (``RandRotate``, ``RandZoom``, a shear), so less blur
    and less time. Then a left-right flip and intensity jitter (scale by 0.9-1.1, gamma 0.8-1.25). Returns the batch
    augmented, clipped to [0, 1], channels-last.
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

    def augment(batch: torch.Tensor) -> torch.Tensor:
        with _no_monai_metadata():
            augmented = [torch.as_tensor(transforms(image)) for image in batch.contiguous()]
        return torch.stack(augmented).clamp_(0.0, 1.0).contiguous(memory_format=torch.channels_last)

    return augment


# -------------------------------------------------------------------------------------------------------- schedule

SCHEDULES: tuple[str, ...] = ("cosine", "constant")


def _learning_rate(base: float, step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of optimiser step ``step`` (from 0): a linear warm-up to ``base`` over the first
    ``warmup_steps`` steps (``base * (step + 1) / warmup_steps``), then half a cosine from ``base`` to 0 at
    ``total_steps`` (0 after it)."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def _planned_epochs(epoch: int, elapsed: float, epoch_seconds: float, budget: float | None, max_epochs: int) -> int:
    """How many epochs training plans after epoch ``epoch`` ended ``elapsed`` seconds into the fit: ``max_epochs``,
    or, where the time budget runs out sooner at the last epoch's pace, ``epoch`` plus the whole epochs left in it.

    The cosine's end follows this, so a budget that binds still anneals the learning rate before training stops
    (``epoch`` itself means: stop now). Without a budget, or with one that does not bind, the schedule depends on
    the epochs alone and the same seed repeats the same model.
    """
    if budget is None:
        return max_epochs
    left = math.floor(max(0.0, budget - elapsed) / max(epoch_seconds, 1e-9))
    return int(min(max_epochs, epoch + left))


# ------------------------------------------------------------------------------------------------------ estimator


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A convolutional network over preprocessed images, trained and calibrated on the CPU.

    The deep family beside the topological ones: it learns from the pixels, so a team can see on one table whether
    hand-made topological features or a network win on their images. It is sized for small clinical datasets on a
    few CPU cores: the default ``"resnet_small"`` network trains on a few thousand 128x128 images in about a quarter
    of an hour on two cores.

    ``fit`` carves a validation fold from the data it is given (stratified, and with ``val_groups`` keeping each
    patient or near-duplicate group whole), trains with augmentation, inverse-frequency class weights, AdamW and a
    warm-up then cosine learning rate (ending with the epochs or the time budget, whichever comes first), stops early
    on the validation loss and keeps the best epoch's weights, then fits a temperature on the validation logits (of
    each image and its mirror, as ``predict_proba`` computes them) so that ``predict_proba`` is calibrated. Its
    held-out scores stay on the model (``val_index_``, ``val_proba_``) for a caller to score it with. Everything
    random is seeded: the same ``seed`` (and ``n_threads``) gives the same model unless the time budget stops it.

    Parameters
    ----------
    architecture : {"resnet_small", "small", "densenet", "resnet"}, default="resnet_small"
        ``"resnet_small"``: a 3x3 stride-2 stem, four stages of one residual basic block (``width`` to
        ``8 * width`` channels, the last three at stride 2), global average and max pooling and a linear head
        (~308k parameters at ``width=16``). ``"small"``: a 5x5 stride-2 stem and max pool, three stages of two
        conv + BN + ReLU blocks, the same head (~290k). ``"densenet"``: MONAI ``DenseNet`` with
        ``init_features=width``, ``growth_rate=width // 2``, ``block_config=(2, 2, 2)`` (~20k). ``"resnet"``:
        MONAI ``ResNet`` with basic blocks, one per stage, ``width`` to ``8 * width`` channels (~310k). No
        pretrained weights are ever downloaded.
    width : int, default=16
        Channels of the first block; later stages double it.
    learning_rate : float, default=3e-3
        AdamW's peak learning rate (weight decay 1e-4).
    batch_size : int, default=32
        Images per optimiser step; the epoch is split into equal batches of at most this size.
    max_epochs : int, default=30
        Most passes over the training fold.
    patience : int, default=6
        Stop after this many epochs without a lower validation loss.
    min_steps : int, default=0
        Fewest optimiser steps ``max_epochs`` must allow: a training fold of few batches gets its ``max_epochs`` and
        ``patience`` multiplied by the smallest whole factor that reaches it (a split of 120 images is 4 batches an
        epoch, so 30 epochs are only 120 steps, too few to learn from), and one of many batches is unaffected.
    val_fraction : float, default=0.2
        Share of each class held out (at least one image per class) for early stopping and calibration.
    augment : {"batch", "monai", "none"}, default="batch"
        ``"batch"``: a flip, an affine (rotation, zoom, shift) and an intensity gain and offset drawn per image and
        applied to the whole batch tensor in torch. ``"monai"``: MONAI's transforms image by image (affine with
        shear, flip, intensity scale and gamma; ~10x slower). ``True`` and ``False`` mean ``"batch"`` and
        ``"none"``.
    schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: a linear warm-up over the first epoch, then half a cosine to 0 at ``max_epochs``, or earlier
        where the time budget, at the last epoch's pace, ends training sooner. ``"constant"``: ``learning_rate``
        throughout.
    tta : bool, default=True
        Predict each image from the mean of its logits and its left-right mirror's (test-time augmentation); the
        temperature is fitted on those logits.
    time_budget_s : float or None, default=None
        Wall-time limit for training: after an epoch, training stops if the next epoch (as long as the last one)
        would end past it. At least one epoch always runs; the best epoch so far is kept.
    seed : int, default=0
        Seeds weight initialisation, dropout, the validation split, batch order and augmentation.
    n_threads : int or None, default=None
        Torch intra-op threads during ``fit`` and ``predict_proba`` (None: every core this process may use, or
        ``OMP_NUM_THREADS`` where that is fewer, as joblib sets it in workers that fit side by side).
    progress : bool or str, default=False
        Show a progress bar per epoch on stderr (batches done, running loss, then the validation loss and F1); a
        string also names the network before the epoch (``"network 2/5"``).

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
        ``val_f1`` (macro F1, or binary F1 of the last class when there are two), ``lr`` (the learning rate of the
        epoch's last step), ``seconds``.
    best_epoch_ : int
        The epoch whose weights were kept (lowest validation loss).
    max_epochs_, patience_ : int
        ``max_epochs`` and ``patience`` as training used them, stretched to reach ``min_steps``.
    stop_reason_ : str
        ``"max_epochs"``, ``"early_stopping"`` or ``"time_budget"``.
    tta_ : bool
        Whether ``predict_proba`` averages each image with its mirror (``tta`` at fit time).
    temperature_ : float
        Logits are divided by this before the softmax; fitted by LBFGS on the validation NLL with a weak prior on
        log T (normal, sd 1) so that a small, perfectly classified fold cannot drive it to 0; within [0.05, 20].
    val_index_ : ndarray of shape (n_val,)
        Positions (in the ``X`` given to ``fit``) of the validation fold, ascending.
    val_proba_ : ndarray of shape (n_val, n_classes)
        Calibrated probabilities of the validation fold, as ``predict_proba`` gives them: the model's held-out
        scores (its epoch and temperature were chosen on this fold, so slightly optimistic).
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
        architecture: str = "resnet_small",
        width: int = 16,
        learning_rate: float = 3e-3,
        batch_size: int = 32,
        max_epochs: int = 30,
        patience: int = 6,
        min_steps: int = 0,
        val_fraction: float = 0.2,
        augment: str | bool = "batch",
        schedule: str = "cosine",
        tta: bool = True,
        time_budget_s: float | None = None,
        seed: int = 0,
        n_threads: int | None = None,
        progress: bool | str = False,
    ) -> None:
        self.architecture = architecture
        self.width = width
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.min_steps = min_steps
        self.val_fraction = val_fraction
        self.augment = augment
        self.schedule = schedule
        self.tta = tta
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
        self,
        X: ArrayLike,
        y: ArrayLike,
        *,
        val_groups: ArrayLike | None = None,
        epoch_callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> CNNClassifier:
        """Train on the images, keep the best epoch and calibrate on the validation fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H, W, 3)
            Float images with values in [0, 1].
        y : array-like of shape (n_samples,)
            Labels; at least two classes, each with enough samples for both folds.
        val_groups : array-like of shape (n_samples,) or None, default=None
            A group per image (a patient, a near-duplicate cluster): the validation fold takes whole groups, so no
            image is validated on while a near-copy of it is trained on. None: every image is its own group.
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
        split_rng = np.random.default_rng(split_seq)
        if val_groups is None:
            train_idx, val_idx = _stratified_split(codes, classes, self.val_fraction, split_rng)
        else:
            groups = np.asarray(val_groups)
            if groups.shape != labels.shape:
                raise ValueError(f"val_groups: expected one group per image ({labels.shape[0]}), got {groups.shape}")
            train_idx, val_idx = _grouped_split(codes, classes, groups, self.val_fraction, split_rng)
        counts = np.bincount(codes, minlength=classes.size)
        class_weight = codes.size / (classes.size * counts)

        image_shape = (int(images.shape[1]), int(images.shape[2]))
        network_config: dict[str, Any] = {
            "architecture": self.architecture,
            "in_channels": _n_channels(images),
            "n_classes": int(classes.size),
            "width": int(self.width),
        }
        augment_seed = int(augment_seq.generate_state(1)[0])
        tta = bool(self.tta)
        with _torch_threads(self.n_threads), _seeded_torch(int(self.seed)):
            model = _new_network(network_config)
            augment: Augment | None = None
            if _augment_kind(self.augment) == "batch":
                augment = _batch_augmentation(augment_seed)
            elif _augment_kind(self.augment) == "monai":
                augment = _augmentation(augment_seed, image_shape)
            max_epochs, patience = self._epochs(train_idx.size)
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
                max_epochs,
                patience,
            )
            model.load_state_dict(best_state)
            model.eval()
            val_logits = _logits(model, images, val_idx, self.batch_size, tta=tta)
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
        self.max_epochs_, self.patience_ = max_epochs, patience
        self.stop_reason_ = stop_reason
        self.tta_ = tta
        self.temperature_ = temperature
        self.val_index_ = val_idx
        self.val_proba_ = _softmax(val_logits, temperature)
        self.val_ece_before_ = top_label_ece(_softmax(val_logits, 1.0), val_codes)
        self.val_ece_after_ = top_label_ece(self.val_proba_, val_codes)
        return self

    def _check_params(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {list(ARCHITECTURES)}, got {self.architecture!r}")
        integers = (("width", 1), ("batch_size", 1), ("max_epochs", 1), ("patience", 1), ("min_steps", 0), ("seed", 0))
        for name, minimum in integers:
            value = getattr(self, name)
            if not _is_integer(value) or value < minimum:
                raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
        if not (_is_real(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate: expected a number >= 0, got {self.learning_rate!r}")
        if not (_is_real(self.val_fraction) and 0 < self.val_fraction < 1):
            raise ValueError(f"val_fraction: expected a number in (0, 1), got {self.val_fraction!r}")
        _augment_kind(self.augment)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not isinstance(self.tta, (bool, np.bool_)):
            raise ValueError(f"tta: expected True or False, got {self.tta!r}")
        if self.time_budget_s is not None and not (_is_real(self.time_budget_s) and self.time_budget_s > 0):
            raise ValueError(f"time_budget_s: expected None or a number > 0, got {self.time_budget_s!r}")
        if self.n_threads is not None and not (_is_integer(self.n_threads) and self.n_threads >= 1):
            raise ValueError(f"n_threads: expected None or an integer >= 1, got {self.n_threads!r}")

    def _epochs(self, n_train: int) -> tuple[int, int]:
        """``max_epochs`` and ``patience``, both multiplied by the smallest whole factor that gives ``min_steps``
        optimiser steps over a training fold of ``n_train`` images."""
        steps = int(self.max_epochs) * math.ceil(n_train / self.batch_size)
        stretch = max(1, math.ceil(int(self.min_steps) / steps))
        return int(self.max_epochs) * stretch, int(self.patience) * stretch

    def _train(
        self,
        model: nn.Module,
        images: Images,
        codes: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        class_weight: torch.Tensor,
        augment: Augment | None,
        rng: np.random.Generator,
        started: float,
        epoch_callback: Callable[[dict[str, Any]], None] | None,
        max_epochs: int,
        patience: int,
    ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], int, str]:
        """The epoch loop: returns the history, the best weights, the best epoch and why it stopped."""
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate, weight_decay=1e-4)
        targets = torch.as_tensor(codes, dtype=torch.long)
        n_batches = math.ceil(train_idx.size / self.batch_size)
        stats_idx = np.sort(rng.permutation(train_idx)[:_BN_STATS_IMAGES])
        history: list[dict[str, Any]] = []
        best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
        stop_reason = "max_epochs"
        planned, step, lr = int(max_epochs), 0, float(self.learning_rate)
        label = f"{self.progress}, " if isinstance(self.progress, str) else ""
        bars = _EpochBars(max_epochs, n_batches, label) if self.progress else None
        try:
            for epoch in range(1, max_epochs + 1):
                epoch_start = time.perf_counter()
                model.train()
                total, seen = 0.0, 0
                if bars is not None:
                    bars.start(epoch)
                # Equal-sized batches (array_split): no trailing batch of one image, which BatchNorm cannot train on.
                for shuffled in np.array_split(rng.permutation(train_idx), n_batches):
                    if self.schedule == "cosine":
                        lr = _learning_rate(self.learning_rate, step, n_batches, planned * n_batches)
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    # Ascending reads are kinder to a memory-mapped X; the order within a batch is irrelevant.
                    batch_idx = np.sort(shuffled)
                    inputs = _batch(images, batch_idx, augment)
                    loss = F.cross_entropy(model(inputs), targets[batch_idx], weight=class_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
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
                    "lr": lr,
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
                elif epoch - best_epoch >= patience:
                    stop_reason = "early_stopping"
                    break
                elapsed = time.perf_counter() - started
                planned = _planned_epochs(epoch, elapsed, row["seconds"], self.time_budget_s, max_epochs)
                if planned <= epoch < max_epochs:
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
            # A model pickled before test-time augmentation existed has no tta_: it predicts as it was validated.
            tta = getattr(self, "tta_", False)
            logits = _logits(self.model_, images, np.arange(images.shape[0]), self.batch_size, tta=tta)
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
        state.setdefault("min_steps", 0)  # a model pickled before min_steps existed trained without it
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

    def __init__(self, max_epochs: int, n_batches: int, label: str = "") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.max_epochs, self.n_batches, self.label = max_epochs, n_batches, label
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(), console=Console(stderr=True),
        )  # fmt: skip
        self.task: Any = None

    def start(self, epoch: int) -> None:
        if self.task is None:
            self.progress.start()
        self.task = self.progress.add_task(
            f"{self.label}epoch {epoch}/{self.max_epochs}", total=self.n_batches, note=""
        )

    def batch(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, note=f"loss {loss:.4f}")

    def end(self, row: dict[str, Any]) -> None:
        note = f"loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  val F1 {row['val_f1']:.3f}"
        self.progress.update(self.task, note=note)
        self.progress.refresh()

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _batch(images: Images, idx: np.ndarray, augment: Augment | None) -> torch.Tensor:
    """One training batch built now from ``images[idx]``, augmented when ``augment`` is given."""
    tensor = _to_tensor(images[idx])
    return tensor if augment is None else augment(tensor)


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


def _logits(model: nn.Module, images: Images, idx: np.ndarray, batch_size: int, tta: bool = False) -> np.ndarray:
    """float32 logits (len(idx), n_classes) of ``images[idx]`` in eval mode, without gradients, batch by batch; with
    ``tta``, the mean of each image's logits and its left-right mirror's."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, idx.size, batch_size):
            inputs = _to_tensor(images[idx[start : start + batch_size]])
            logits = model(inputs)
            if tta:
                logits = (logits + model(inputs.flip(-1).contiguous(memory_format=torch.channels_last))) / 2
            outputs.append(logits.float().numpy())
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
