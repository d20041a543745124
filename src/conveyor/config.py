"""Settings: one class, read from ``conveyor.yaml`` in the workspace and from the environment.

Precedence, highest first: arguments given in code, environment variables (``CONVEYOR_*``; nested fields with
``__``, e.g. ``CONVEYOR_INGEST__MAX_PIXELS``), ``$CONVEYOR_HOME/conveyor.yaml``, the defaults below. Nothing happens at
import: folders are made by :func:`conveyor.workspace.init_workspace`, connections by the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from conveyor.monitoring.settings import MonitoringSettings
from conveyor.serving.settings import ServingSettings

__all__ = [
    "FeatureSettings",
    "IngestSettings",
    "PreprocessSettings",
    "Settings",
    "StorageSettings",
    "TrainingSettings",
    "get_settings",
]

CONFIG_FILE_NAME = "conveyor.yaml"


class QualityRule(BaseModel):
    """Bounds on one image-quality measure and what a breach does: ``warn`` stores the image and flags it (counted in
    the ingest summary), ``quarantine`` refuses it with the reason ``low_quality``. No bound: the rule is off."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None
    action: Literal["warn", "quarantine"] = "warn"


class QualitySettings(BaseModel):
    """``ingest.quality``: a rule per measure (all off by default; typical values depend on the modality)."""

    model_config = ConfigDict(extra="forbid")

    blur: QualityRule = Field(
        QualityRule(), description="Variance of the Laplacian of the gray image in [0, 1] at ~128 px: a min catches "
        "blurred images (the real yes/no MRI set: 0.006 to 0.08, median 0.02)."
    )  # fmt: skip
    contrast: QualityRule = Field(QualityRule(), description="Standard deviation of the gray intensity in [0, 1].")
    dark_clipped: QualityRule = Field(
        QualityRule(), description="Share of pixels at black: a max catches underexposure."
    )
    bright_clipped: QualityRule = Field(
        QualityRule(), description="Share of pixels at white: a max catches overexposure."
    )
    resolution: QualityRule = Field(QualityRule(), description="The short side in pixels (above ingest.min_side).")


class VideoSettings(BaseModel):
    """``ingest.video``: how a clip (MP4, MOV, AVI, MKV) becomes frames."""

    model_config = ConfigDict(extra="forbid")

    fps: float = Field(2.0, gt=0.0, le=120.0, description="Frames taken per second of the clip.")
    frames: int | None = Field(None, ge=1, description="Instead: this many frames, evenly spaced over the clip.")
    max_frames: int = Field(600, ge=1, description="A clip that samples into more frames is quarantined (too_long).")
    aggregation: Literal["mean", "max", "vote"] = Field(
        "mean", description="A clip's answer from its frames': mean probabilities, per-class maximum, or frame votes."
    )


class MaskSettings(BaseModel):
    """``ingest.masks``: what a segmentation mask's pixel values mean."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(
        default_factory=lambda: ["background", "lesion"],
        min_length=2,
        max_length=256,  # stored as 8-bit class indices
        description="Mask value i is class i (two classes: 0/255 masks are read as 0/1). Any other value quarantines "
        "the image as bad_mask.",
    )


class IngestSettings(BaseModel):
    """Limits and rules applied to every file an ingest sees."""

    min_side: int = Field(32, ge=1, description="Smallest accepted width or height, in pixels.")
    max_pixels: int = Field(
        100_000_000, ge=1, description="Largest accepted width x height x frames; checked before decoding."
    )
    max_file_bytes: int = Field(1 << 30, ge=1, description="Largest accepted file (or zip member), in bytes.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of each class put in the test split.")
    near_duplicate_bits: int = Field(
        32,
        ge=0,
        le=256,
        description="Perceptual-hash distance (bits of 256) at or under which images are near-duplicates.",
    )
    commit_every: int = Field(200, ge=1, description="Files recorded per database transaction.")
    label_pattern: str | None = Field(
        None,
        description="A regular expression every label must match whole (for example ^[a-z][a-z0-9_]*$); a file whose "
        "label does not is quarantined as bad_label. Without one, labels that differ only in case, or hold markup or "
        "path characters, are warned about.",
    )
    deidentify: bool = Field(
        False,
        description="Store DICOM files with the PS3.15 basic profile's identifying elements and every private element "
        "removed (pixels and the image elements kept); a DICOM file that cannot be de-identified is not copied.",
    )

    group_pattern: str | None = Field(
        None,
        description="A regular expression searched in each file's path within its source; its first capture group "
        "(else the whole match) names the patient, clip or slide the image belongs to, whose images stay on one side "
        "of the split and of every CV fold (for example ^(P\\d+)/ or _(sub-\\d+)_). A labels CSV's 'group' column wins "
        "over it, and it over a DICOM file's PatientID (else StudyInstanceUID). Stored as salted hashes only.",
    )

    @field_validator("label_pattern", "group_pattern")
    @classmethod
    def _compiles(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            try:
                compiled = re.compile(value)
            except re.error as exc:
                raise ValueError(f"ingest.{info.field_name} {value!r} is not a regular expression: {exc}") from exc
            if info.field_name == "group_pattern" and compiled.groups > 1:
                raise ValueError(f"ingest.group_pattern {value!r} has {compiled.groups} capture groups; use 0 or 1")
        return value

    keep_paths: bool = Field(
        False,
        description="Store source paths as they are; otherwise as salted hashes (clinical exports name patients in "
        "their folder and file names).",
    )
    quality: QualitySettings = QualitySettings()
    video: VideoSettings = VideoSettings()
    masks: MaskSettings = MaskSettings()


class PreprocessSettings(BaseModel):
    """The stateless preprocessing every model sees; recorded with every dataset version and model."""

    grayscale: bool = True
    trim: bool = Field(True, description="Crop to the bounding box of the foreground (wide black MRI margins).")
    trim_threshold: float = Field(0.05, ge=0.0, lt=1.0, description="Foreground: above this share of the maximum.")
    size: tuple[int, int] = Field((128, 128), description="Output (height, width).")
    normalise: Literal["minmax", "percentile"] = "minmax"
    percentiles: tuple[float, float] = (1.0, 99.0)
    contrast: Literal["none", "clahe"] = Field(
        "none", description="clahe: contrast-limited adaptive histogram equalisation (scikit-image) after normalising."
    )
    clahe_clip: float = Field(0.01, gt=0.0, le=1.0, description="CLAHE's clip limit.")

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 8:
            raise ValueError(f"preprocess.size must be at least 8x8, got {value}")
        return value

    @field_validator("percentiles")
    @classmethod
    def _ordered_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"preprocess.percentiles must satisfy 0 <= low < high <= 100, got {value}")
        return value

    def config_hash(self) -> str:
        """A short stable id of this configuration, used to key cached results."""
        data = self.model_dump(mode="json")
        if data["contrast"] == "none":  # added later: configurations without it keep their ids (and their caches)
            del data["contrast"], data["clahe_clip"]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class FeatureSettings(BaseModel):
    """Which extractors the feature store keeps master tables for, and their parameters."""

    # stats and intensity by default: on both real MRI sets (benchmarks/extractor_value.py) an SVM, a logistic
    # regression and boosted trees on these two score as well as on all eight, which cost 4x their time per image.
    extractors: list[str] = Field(
        default_factory=lambda: ["stats", "intensity"],
        description="Extractor names (see conveyor.features.EXTRACTORS): any of landscape, block, fda, stats, image, "
        "betti, entropy, intensity.",
    )
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per extractor, parameters that differ from its defaults."
    )
    roi: Literal["image", "segmentation"] = Field(
        "image",
        description="segmentation: every extractor also gets a roi-<name> table computed inside the region the "
        "segmentation champion predicts (`conveyor segment`), and training races both.",
    )


class CNNSettings(BaseModel):
    """The convolutional network family (``cnn`` in ``training.families``)."""

    architecture: Literal["resnet_small", "small", "densenet", "resnet"] = Field(
        "resnet_small",
        description="conveyor's small residual network, its plain ConvNet (the default before), or a small MONAI "
        "DenseNet or ResNet (all randomly initialised).",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {"learning_rate": [3e-3], "width": [16]},  # type: ignore[arg-type]
        description="CNNClassifier parameters searched: each point fitted once, scored on its own grouped validation "
        "fold (on a holdout of the training split with `refit`).",
    )
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(6, ge=1, description="Epochs without a lower validation loss before stopping.")
    min_steps: int = Field(
        500,
        ge=0,
        description="Fewest optimiser steps: a small training split's max_epochs and patience are multiplied by the "
        "smallest whole factor that reaches them (a large split already does).",
    )
    networks: int = Field(
        5,
        ge=1,
        description="Networks trained with consecutive seeds and averaged on a training split of at most "
        "ensemble_up_to images: on a small split one network's score depends on its seed by several points "
        "(yes/no MRI, 146 images: balanced accuracy 0.805-0.911 over five seeds). 1: one network.",
    )
    ensemble_up_to: int = Field(
        1000,
        ge=1,
        description="Largest training split that gets `networks` networks; a larger one trains one (it is stable "
        "there, and one fit already takes minutes).",
    )
    batch_size: int = Field(32, ge=2)
    augment: Literal["batch", "monai", "none"] = Field(
        "batch",
        description="batch: flips, affine and intensity on the batch tensor in torch; monai: MONAI's transforms image "
        "by image (~10x slower); none.",
    )
    schedule: Literal["cosine", "constant"] = Field(
        "cosine",
        description="cosine: a one-epoch warm-up, then cosine decay ending with the epochs or the time budget.",
    )
    tta: bool = Field(True, description="Predict from each image and its left-right mirror, averaged.")
    refit: bool = Field(
        False,
        description="Score the grid on a grouped holdout of the training split, then refit the best on the whole split "
        "(one fit more; the score then comes from a fold that chose nothing). False: the model fitted with early "
        "stopping on its validation fold is the final one, scored on that fold.",
    )
    time_budget_s: float = Field(
        1800.0,
        gt=0,
        description="Wall time for the whole search; each fit (grid points and refit) gets an equal share.",
    )
    threads: int | None = Field(
        None, ge=1, description="Torch threads (default: every core this process may use, or OMP_NUM_THREADS if fewer)."
    )
    progress: bool = Field(True, description="A progress bar per epoch on stderr.")


class SegmentationSettings(BaseModel):
    """``conveyor segment``: the U-Net trained on the images that have masks (``ingest.masks``)."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int] = Field((64, 64), description="Images and masks are resized to this (height, width).")
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=2, description="U-Net levels' widths.")
    learning_rate: float = Field(1e-2, gt=0.0)
    max_epochs: int = Field(60, ge=1)
    patience: int = Field(15, ge=1, description="Epochs without a better validation Dice before stopping.")
    batch_size: int = Field(8, ge=1)
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Of the train split, to stop early on.")
    bootstrap: int = Field(1000, ge=100, description="Resamples of the test images for the 95% intervals.")
    threads: int | None = Field(None, ge=1, description="Torch threads (default: every core this process may use).")


class SearchSettings(BaseModel):
    """How ``conveyor train`` searches the candidate table (see :mod:`conveyor.training.search`)."""

    mode: Literal["race", "grid", "refit", "auto"] = Field(
        "race",
        description="What `conveyor train` runs: race (successive halving, then the finalists' whole grids), "
        "grid (every candidate's whole grid), refit (the last search's best candidates), auto (the policy below).",
    )
    retrain_mode: Literal["race", "grid", "refit", "auto"] = Field(
        "auto", description="What a retrain the monitor's policy calls for runs."
    )
    new_search_share: float = Field(
        0.5, ge=0.0, description="auto: growth of the training split since the last search that calls for a new one."
    )
    new_search_on_drift: bool = Field(True, description="auto: drift seen by the monitor calls for a new search.")
    factor: int = Field(3, ge=2, description="race: each round keeps 1/factor of the configurations, on factor x data.")
    min_samples: int = Field(100, ge=2, description="race: the smallest subset a round is scored on.")
    folds: int = Field(3, ge=2, le=10, description="race: CV folds of the rounds before the final.")
    points_per_candidate: int = Field(1, ge=1, description="race: grid points each candidate enters round 0 with.")
    finalists: int = Field(3, ge=1, description="race: candidates whose whole grid is searched with cv_folds folds.")
    within_se: float = Field(
        2.0,
        ge=0.0,
        description="race: a finalist must score within this many pooled standard errors of the "
        "leader in the last round (0: the best `finalists`, however far behind).",
    )
    refit_candidates: int = Field(3, ge=1, description="refit: the last search's best candidates refitted.")
    jobs: int = Field(-1, description="Parallel fits of the search (joblib n_jobs; -1: every core).")


class FeatureSelectionSettings(BaseModel):
    """``training.feature_selection``: besides each tabular family, a variant (``<family>+select``) that keeps only the
    most important features, chosen inside each CV fold (no leakage) by an extra-trees model's impurity importance."""

    model_config = ConfigDict(extra="forbid")

    keep: Literal["off", "top_k", "above"] = Field(
        "off", description="off; top_k: the k most important features; above: those above threshold."
    )
    k: int = Field(20, ge=1, description="top_k: how many features to keep.")
    threshold: str | float = Field(
        "mean", description="above: an importance, or scikit-learn's 'mean', 'median', '0.5*mean' ..."
    )

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: str | float) -> str | float:
        """Refused here, not by scikit-learn inside the first fold of a search."""
        readable = r"mean|median|\s*\d+(\.\d*)?\s*\*\s*(mean|median)\s*"  # as SelectFromModel parses it
        if isinstance(value, str) and re.fullmatch(readable, value) is None:
            raise ValueError(f"{value!r} is not an importance, 'mean', 'median' or a scale of them like '0.5*mean'")
        return value


class ImportanceSettings(BaseModel):
    """Permutation importance of a registered feature model on the test split (``conveyor models --explain``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    repeats: int = Field(5, ge=1, description="Shuffles per group and per feature.")
    max_features: int = Field(200, ge=0, description="Features scored one by one (the most important groups first).")
    budget_s: float = Field(60.0, gt=0.0, description="Seconds the one-by-one pass may take (the groups always run).")


class ConformalSettings(BaseModel):
    """The held-out part of the training split that calibrates the prediction sets (``serving.coverage``)."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(
        0.2,
        ge=0.0,
        le=0.5,
        description="Of each class's training images, held out of the search to calibrate (0: none).",
    )
    min_per_class: int = Field(
        10, ge=1, description="Calibration images each class needs; with fewer, no sets (the whole split trains)."
    )


class SubgroupSettings(BaseModel):
    """Per-subgroup metrics of the winner on the test split (and of the champion on each labelled batch)."""

    model_config = ConfigDict(extra="forbid")

    min_cases: int = Field(
        20,
        ge=1,
        description="A subgroup with fewer labelled images is listed with its count and 'too few cases', "
        "unscored (its interval would say nothing).",
    )


class TrainingSettings(BaseModel):
    """What ``conveyor train`` crosses and how it judges."""

    extractors: list[str] | None = Field(
        None, description="Feature tables to train on; default every configured extractor plus 'all' (side by side)."
    )
    families: list[str] = Field(
        default_factory=lambda: ["logreg", "svm", "random_forest", "hist_gradient_boosting", "xgboost"],
        description="Model families (see conveyor.models.FAMILIES); 'cnn' adds the convolutional network.",
    )
    cv_folds: int = Field(5, ge=2, le=20, description="Stratified folds of the grid search on the training split.")
    seed: int = 0
    positive_class: str | None = Field(None, description="Binary tasks: the class F1 is about (default: last sorted).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the 95% intervals.")
    calibration: Literal["sigmoid", "isotonic"] = "sigmoid"
    stacking: bool = Field(
        True,
        description="Also race the finalists stacked: a logistic regression over their out-of-fold scores (family "
        "'stack'); it wins only on its CV score.",
    )
    cnn: CNNSettings = CNNSettings()
    search: SearchSettings = SearchSettings()
    feature_selection: FeatureSelectionSettings = FeatureSelectionSettings()
    importance: ImportanceSettings = ImportanceSettings()
    conformal: ConformalSettings = ConformalSettings()
    subgroups: SubgroupSettings = SubgroupSettings()
    metric: Literal["balanced_accuracy", "f1", "accuracy", "roc_auc"] = Field(
        "balanced_accuracy",
        validation_alias=AliasChoices("metric", "gate_metric"),
        description="The task's one meaning of 'better': the search ranks candidates by its CV score, the gate wants "
        "it above the naive baselines (and tying the champion), the monitor alerts on its drop and a rollout rolls "
        "back when the challenger's is significantly lower; the others are reported. Not F1 by default: when the "
        "positive class is the majority, always answering it scores a high F1 (0.767 on the real MRI set). "
        "(Formerly gate_metric, still accepted.)",
    )


class ComputeSettings(BaseModel):
    """Where the heavy work runs: this machine's cores, or a Dask cluster (see :mod:`conveyor.compute`)."""

    model_config = ConfigDict(extra="forbid")

    scheduler: str = Field(
        "local",
        description="local: a process pool on this machine (nothing to start); or a Dask scheduler's address "
        "(tcp://host:8786): ingest's reading and decoding, `conveyor features` and training's fits run there.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to reach the scheduler before giving up.")
    retries: int = Field(2, ge=0, description="Times Dask reruns a task whose worker died.")
    worker_malloc: Literal["glibc", "dask"] = Field(
        "glibc",
        description="glibc: the cluster's workers get glibc's large-allocation thresholds back (a Dask nanny's "
        "MALLOC_TRIM_THRESHOLD_ maps every array over 128 kB afresh: +20-30% CPU for features); dask: leave them.",
    )

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str) -> str:
        if value != "local" and not re.match(r"^(tcp|tls|inproc|ucx)://[^\s/]+$", value):
            raise ValueError(f"compute.scheduler must be 'local' or a Dask address like tcp://host:8786, got {value!r}")
        return value

    @property
    def distributed(self) -> bool:
        return self.scheduler != "local"


class StorageSettings(BaseModel):
    """Where the raw store, the feature tables and the diagram cache live (see :mod:`conveyor.storage`)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="A folder (default: the workspace; a shared filesystem such as an NFS path works as it is) or an "
        "fsspec URL: s3://bucket/prefix reaches any S3-compatible service through s3fs. A store other than the "
        "workspace also keeps the embedded MLflow store's artifacts, under <url>/mlflow.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the fsspec filesystem, e.g. for s3 {client_kwargs: {endpoint_url: ..., "
        "region_name: ...}, key: ..., secret: ...}; without key and secret, s3fs takes AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or a role) as boto3 does.",
    )
    check_timeout_s: float = Field(
        5.0, gt=0, description="Seconds the check at the start of ingest, features and train waits for the store."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        found = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", value)
        if found is not None and found.group(1).lower() != "file" and not found.group(2).split("/")[0]:
            raise ValueError(f"storage.url {value!r} names no bucket or container, expected e.g. s3://bucket/prefix")
        return value


class Settings(BaseSettings):
    """Everything conveyor can be told; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(Path("workspace"), description="The workspace folder (CONVEYOR_HOME).")
    db_url: str | None = Field(None, description="SQLAlchemy URL of the metadata DB; default a SQLite file in home.")
    model_name: str = Field("conveyor", description="Name of the model in the MLflow registry.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default a SQLite store in home (MLFLOW_TRACKING_URI also works).",
    )
    ingest: IngestSettings = IngestSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    features: FeatureSettings = FeatureSettings()
    training: TrainingSettings = TrainingSettings()
    segmentation: SegmentationSettings = SegmentationSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    serving: ServingSettings = ServingSettings()
    compute: ComputeSettings = ComputeSettings()
    storage: StorageSettings = StorageSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        home = Path(init_kwargs.get("home") or os.environ.get("CONVEYOR_HOME") or "workspace")
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=home / CONFIG_FILE_NAME)
        return (init_settings, env_settings, yaml_source)

    @property
    def resolved_db_url(self) -> str:
        """The metadata DB URL: the setting, or a SQLite file in the workspace."""
        return self.db_url or f"sqlite:///{(self.home / 'conveyor.db').resolve()}"

    @property
    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI: the setting, ``MLFLOW_TRACKING_URI``, or a SQLite store in the workspace."""
        return (
            self.mlflow_tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"
        )

    @property
    def raw_dir(self) -> Path:
        """The raw store in the workspace: where it is unless ``storage.url`` puts it elsewhere."""
        return self.home / "raw"

    @property
    def incoming_dir(self) -> Path:
        return self.home / "incoming"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def features_dir(self) -> Path:
        """The feature tables in the workspace: where they are unless ``storage.url`` puts them elsewhere."""
        return self.home / "features"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Entry points call this; library functions take ``settings``."""
    return Settings()
