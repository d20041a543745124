"""Segmentation: train the U-Net on the images that have masks, score it on the test split against two trivial
baselines, gate it, and register it as its own model (``<model_name>-segmentation``).

The split is the images' own (decided at ingest, patients and clips kept whole); a validation part of the train
split (``segmentation.validation_fraction``) stops the training early. On the test split, at the model's size:
Dice and IoU per class (per image, then averaged; 1.0 for a class rightly absent) with 95% bootstrap intervals over
the images, and the 95th-percentile Hausdorff distance of the last class (MONAI) where both masks have it. The
baselines: every pixel background, and the image thresholded at its Otsu level as the last class. The gate wants the
lower end of the last class's Dice interval above both baselines' Dice.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.errors import ConfigError, ConveyorError
from conveyor.storage import Storage
from conveyor.workspace import open_workspace

if TYPE_CHECKING:
    from conveyor.tracking.segmentation_model import SegmentedRegion

__all__ = [
    "SEGMENTATION_SUFFIX",
    "SegmentationResult",
    "feature_region",
    "segmentation_settings",
    "train_segmentation",
]

SEGMENTATION_SUFFIX = "-segmentation"


def segmentation_settings(settings: Settings) -> Settings:
    """The settings under which the segmentation model is registered: the same workspace, its own model name."""
    return settings.model_copy(update={"model_name": settings.model_name + SEGMENTATION_SUFFIX})


def feature_region(settings: Settings) -> SegmentedRegion | None:
    """The region features are also computed in: None for ``features.roi: image``; for ``segmentation``, the one the
    segmentation champion draws (verified like every loaded model).

    Raises:
        ConfigError: ``features.roi`` is ``segmentation`` and no segmentation model is registered.
    """
    if settings.features.roi == "image":
        return None
    from conveyor.tracking.integrity import load_verified
    from conveyor.tracking.registry import CHAMPION, current_version

    seg = segmentation_settings(settings)
    version = current_version(seg, CHAMPION)
    if version is None:
        raise ConfigError(
            f"features.roi is 'segmentation' but no segmentation model {seg.model_name!r} is registered: run "
            "`conveyor segment` first (it needs images with masks), or set features.roi to 'image'"
        )
    region: SegmentedRegion = load_verified(seg, version).unwrap_python_model().region()
    return region


@dataclass(frozen=True)
class SegmentationScore:
    """One labelling of the test masks (the model's or a baseline's): per class Dice and IoU with intervals."""

    dice: dict[str, tuple[float, float, float]]  # class -> (mean, low, high)
    iou: dict[str, tuple[float, float, float]]
    hausdorff95: float | None  # of the last class, pixels, over the images where both masks have it

    def to_dict(self) -> dict[str, Any]:
        return {"dice": {k: list(v) for k, v in self.dice.items()}, "iou": {k: list(v) for k, v in self.iou.items()},
                "hausdorff95": self.hausdorff95}  # fmt: skip


@dataclass(frozen=True)
class SegmentationResult:
    dataset_version: str
    classes: list[str]
    n_train: int
    n_validation: int
    n_test: int
    epochs: int
    model: SegmentationScore
    baselines: dict[str, SegmentationScore]
    passed: bool
    reasons: list[str]
    registered_version: int | None
    alias: str | None
    run_id: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version, "classes": self.classes, "n_train": self.n_train,
            "n_validation": self.n_validation, "n_test": self.n_test, "epochs": self.epochs,
            "model": self.model.to_dict(), "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "gate": {"passed": self.passed, "reasons": self.reasons}, "registered_version": self.registered_version,
            "alias": self.alias, "run_id": self.run_id, "seconds": round(self.seconds, 3),
        }  # fmt: skip


def _pairs(settings: Settings, version: str | None) -> tuple[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """The dataset version and, per split, its (image, mask) pairs at the model's size."""
    from conveyor.data.decode import DecodeLimits, decode_image
    from conveyor.data.masks import read_mask
    from conveyor.data.versions import dataset_members, latest_version
    from conveyor.store.db import session_scope
    from conveyor.store.models import Image, Mask
    from conveyor.tracking.segmentation_model import resize_mask, to_model_input

    engine = open_workspace(settings)
    storage = Storage.of(settings)
    vid = version or latest_version(engine)
    split_of = {sha: split for sha, _, split in dataset_members(engine, vid)}
    size = settings.segmentation.size
    limits = DecodeLimits.of(settings)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    with session_scope(engine) as session:
        rows = session.execute(select(Mask.image_sha256, Mask.raw_path, Image.raw_path).join(Image)).all()
    for sha, mask_path, image_path in sorted(rows):
        if sha not in split_of:
            continue
        pixels = decode_image(storage.read_bytes(image_path), limits).pixels
        mask = read_mask(storage.read_bytes(mask_path))
        out[split_of[sha]].append((to_model_input(pixels, size), resize_mask(mask, size[0], size[1])))
    return vid, out


def _score(predicted: np.ndarray, truth: np.ndarray, classes: list[str], n_boot: int, seed: int) -> SegmentationScore:
    from conveyor.models.unet import dice_per_image

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(truth), size=(n_boot, len(truth)))

    def summary(values: np.ndarray) -> tuple[float, float, float]:
        means = values[draws].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        return float(values.mean()), float(low), float(high)

    dice, iou = {}, {}
    for index, name in enumerate(classes):
        d = dice_per_image(predicted, truth, index)
        dice[name], iou[name] = summary(d), summary(d / (2.0 - d))  # IoU = Dice / (2 - Dice), per image
    return SegmentationScore(dice, iou, _hausdorff95(predicted, truth, len(classes) - 1))


def _hausdorff95(predicted: np.ndarray, truth: np.ndarray, label: int) -> float | None:
    import torch
    from monai.metrics import compute_hausdorff_distance

    both = [i for i in range(len(truth)) if (predicted[i] == label).any() and (truth[i] == label).any()]
    if not both:
        return None
    p = torch.as_tensor(np.stack([predicted[i] == label for i in both])[:, None])
    g = torch.as_tensor(np.stack([truth[i] == label for i in both])[:, None])
    distances = compute_hausdorff_distance(p, g, include_background=True, percentile=95).numpy().ravel()
    distances = distances[np.isfinite(distances)]
    return float(distances.mean()) if len(distances) else None


def _otsu(images: np.ndarray, label: int) -> np.ndarray:
    from skimage.filters import threshold_otsu

    out = np.zeros(images.shape, dtype=np.uint8)
    for i, image in enumerate(images):
        if np.ptp(image) > 0:
            out[i][image > threshold_otsu(image)] = label
    return out


def train_segmentation(
    settings: Settings, *, version: str | None = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> SegmentationResult:
    """Train, score, gate and (if it passes) register the U-Net on a dataset version (default: the latest).

    Raises:
        ConveyorError: too few images with masks in the train or test split.
        StorageError: the store of ``storage.url`` cannot be reached.
    """
    import mlflow

    from conveyor.models.unet import UNetSegmenter
    from conveyor.tracking.searches import fail_dead_runs, process_tags
    from conveyor.tracking.setup import configure_mlflow, run_tags

    began = time.perf_counter()
    cfg = settings.segmentation
    classes = list(settings.ingest.masks.classes)
    Storage.of(settings).check(settings.storage.check_timeout_s)
    vid, pairs = _pairs(settings, version)
    if len(pairs["train"]) < 4 or not pairs["test"]:
        raise ConveyorError(
            f"dataset {vid}: segmentation needs images with masks in both splits (at least 4 to train on); found "
            f"{len(pairs['train'])} in train and {len(pairs['test'])} in test (ingest images/ beside masks/)"
        )
    rng = np.random.default_rng(settings.training.seed)
    order = rng.permutation(len(pairs["train"]))
    n_val = max(1, round(cfg.validation_fraction * len(order)))
    train = [pairs["train"][i] for i in order[n_val:]]
    val = [pairs["train"][i] for i in order[:n_val]]

    def stack(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([x for x, _ in items]), np.stack([y for _, y in items])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = stack(train), stack(val), stack(pairs["test"])
    model = UNetSegmenter(
        classes=len(classes), channels=tuple(cfg.channels), learning_rate=cfg.learning_rate,
        max_epochs=cfg.max_epochs, patience=cfg.patience, batch_size=cfg.batch_size, seed=settings.training.seed,
        threads=cfg.threads, on_epoch=on_epoch,
    ).fit(x_train, y_train, x_val, y_val)  # fmt: skip
    seed = settings.training.seed
    scored = _score(model.predict(x_test), y_test, classes, cfg.bootstrap, seed)
    baselines = {
        "all_background": _score(np.zeros_like(y_test), y_test, classes, cfg.bootstrap, seed),
        "otsu_threshold": _score(_otsu(x_test, len(classes) - 1), y_test, classes, cfg.bootstrap, seed),
    }
    target = classes[-1]
    low = scored.dice[target][1]
    reasons = [
        f"test {target} Dice interval low {low:.3f} does not clear {name}'s {b.dice[target][0]:.3f}"
        for name, b in baselines.items()
        if not low > b.dice[target][0]
    ]
    seg = segmentation_settings(settings)
    experiment = configure_mlflow(settings)
    fail_dead_runs(settings)  # a segment or train killed earlier left its run RUNNING
    registered, alias = None, None
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(
            experiment_id=experiment, run_name=f"segment {vid}", tags={**run_tags(), **process_tags()}
        ) as run,
    ):
        mlflow.log_params({"dataset_version": vid, "classes": ",".join(classes), "n_train": len(train),
                           "n_validation": len(val), "n_test": len(y_test), **cfg.model_dump(mode="json")})  # fmt: skip
        for row in model.history_:
            step = int(row["epoch"])
            mlflow.log_metrics({"loss": row["loss"], "val_dice": row["val_dice"]}, step=step)
        flat = {}
        for who, s in {"test": scored, **{f"{k}_test": v for k, v in baselines.items()}}.items():
            for metric, values in (("dice", s.dice), ("iou", s.iou)):
                for name, (mean, lo, hi) in values.items():
                    flat.update({f"{who}_{metric}_{name}": mean, f"{who}_{metric}_{name}_low": lo,
                                 f"{who}_{metric}_{name}_high": hi})  # fmt: skip
            if s.hausdorff95 is not None:
                flat[f"{who}_hausdorff95_{target}"] = s.hausdorff95
        mlflow.log_metrics(flat)
        details = {"dataset_version": vid, "metrics": {k: v for k, v in flat.items() if k.startswith("test_")},
                   "gate": {"passed": not reasons, "reasons": reasons}}  # fmt: skip
        if not reasons:
            registered, alias = _register(seg, model, classes, vid, Path(tmp), details)
        else:
            from conveyor.tracking.registry import audit

            audit(seg, "refused", seg.model_name, "; ".join(reasons), details)
        run_id = run.info.run_id
    return SegmentationResult(
        vid, classes, len(train), len(val), len(y_test), len(model.history_), scored, baselines, not reasons, reasons,
        registered, alias, run_id, time.perf_counter() - began,
    )  # fmt: skip


def _register(
    seg: Settings, model: Any, classes: list[str], vid: str, tmp: Path, details: dict[str, Any]
) -> tuple[int, str]:
    """Log the segmentation pyfunc in the active run, register it under its own name and alias it."""
    import mlflow.pyfunc
    import torch

    from conveyor.tracking.integrity import record_artifacts
    from conveyor.tracking.register import model_requirements
    from conveyor.tracking.registry import CHALLENGER, CHAMPION, current_version, set_alias
    from conveyor.tracking.segmentation_model import SegmentationModel, SegmentSpec

    weights, spec = tmp / "unet.pt", tmp / "segment_spec.json"
    torch.save(model.state(), weights)
    spec.write_text(SegmentSpec(classes, seg.segmentation.size, vid).to_json())
    info = mlflow.pyfunc.log_model(
        name="segmentation",
        python_model=SegmentationModel(),
        artifacts={"weights": str(weights), "spec": str(spec)},
        pip_requirements=model_requirements("image"),
        registered_model_name=seg.model_name,
        await_registration_for=60,
    )
    version = int(info.registered_model_version)
    details = {**details, "version": version, "artifacts": record_artifacts(seg, version)}
    alias = CHAMPION if current_version(seg, CHAMPION) is None else CHALLENGER
    set_alias(seg, alias, version, "first segmentation model to pass the gate" if alias == CHAMPION else
              "passed the gate", details)  # fmt: skip
    return version, alias
