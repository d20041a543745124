"""Tables of the metadata DB, every stage's: data and audit, then serving's (the prediction log, clinicians' feedback,
rollouts) and monitoring's runs. Portable between SQLite and PostgreSQL (no dialect-specific types)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEntry",
    "Base",
    "DatasetMember",
    "DatasetVersion",
    "Feedback",
    "Image",
    "Ingest",
    "IngestFile",
    "LabelConflict",
    "ModelArtifacts",
    "MonitoringRun",
    "Prediction",
    "Rollout",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Image(Base):
    """One distinct image (by the sha256 of its bytes), stored once in the raw store."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(255), index=True)
    # None until the ingest that stored it assigns splits at its end (a killed ingest leaves None; the next assigns).
    split: Mapped[str | None] = mapped_column(String(8), index=True)
    given_split: Mapped[str | None] = mapped_column(String(8))
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(32))
    bit_depth: Mapped[int] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer, default=1)
    file_size: Mapped[int] = mapped_column(BigInteger)
    phash: Mapped[str] = mapped_column(String(64))  # 256-bit difference hash, hex (near-duplicate detection)
    # The patient, clip or slide it belongs to, as a salted hash (never the raw ID): its split follows its group's.
    group_key: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    brightness: Mapped[float] = mapped_column(Float)  # mean intensity in [0, 1]
    contrast: Mapped[float] = mapped_column(Float)  # std of intensity in [0, 1]
    # Quality (None for images stored before conveyor measured it): variance of the Laplacian, clipped shares.
    blur: Mapped[float | None] = mapped_column(Float, default=None)
    dark_clipped: Mapped[float | None] = mapped_column(Float, default=None)
    bright_clipped: Mapped[float | None] = mapped_column(Float, default=None)
    quality_flags: Mapped[str | None] = mapped_column(String(255), default=None)  # measures ingest.quality warned of
    # A frame of a video clip: the clip's sha256 and the frame's time in it (seconds); None for a still image.
    clip_sha256: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    clip_time: Mapped[float | None] = mapped_column(Float, default=None)
    # The subgroups it belongs to, derived values only (conveyor.data.subgroups): DICOM manufacturer, model, modality,
    # sex, age band, body part, institution; format, bit depth, size band; a labels CSV's extra columns. None for an
    # image stored before conveyor recorded them.
    subgroups: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    raw_path: Mapped[str] = mapped_column(String(255))  # relative to the workspace
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)  # same bytes seen under another label
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ingest_id: Mapped[int] = mapped_column(ForeignKey("ingests.id"))


class Mask(Base):
    """An image's segmentation mask: one class index per pixel (``ingest.masks.classes``), stored once by sha256 as a
    PNG in ``raw/masks/``."""

    __tablename__ = "masks"

    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    raw_path: Mapped[str] = mapped_column(String(255))  # relative to the workspace
    areas: Mapped[dict[str, Any]] = mapped_column()  # class -> pixels


class Ingest(Base):
    """One run of ``conveyor ingest`` over one source."""

    __tablename__ = "ingests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    summary: Mapped[dict[str, Any] | None] = mapped_column()
    dataset_version: Mapped[str | None] = mapped_column(String(32))


class IngestFile(Base):
    """Where one input file ended: stored, duplicate, conflict or quarantined. One row per (source, path, bytes)."""

    __tablename__ = "ingest_files"
    __table_args__ = (UniqueConstraint("source_key", "relpath", "sha256", name="uq_ingest_file_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ingest_id: Mapped[int] = mapped_column(ForeignKey("ingests.id"), index=True)
    source_key: Mapped[str] = mapped_column(String(512))
    relpath: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))  # stored | duplicate | conflict | quarantined
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelConflict(Base):
    """The same bytes filed under a second label. The image stays out of training until resolved."""

    __tablename__ = "label_conflicts"
    __table_args__ = (UniqueConstraint("sha256", "label", name="uq_conflict_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    label: Mapped[str] = mapped_column(String(255))
    relpath: Mapped[str] = mapped_column(String(1024))
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetVersion(Base):
    """A recorded state of the labelled data: the id is derived from the set of (sha256, label, split)."""

    __tablename__ = "dataset_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    n_images: Mapped[int] = mapped_column(Integer)
    by_class: Mapped[dict[str, Any]] = mapped_column()  # label -> {"train": n, "test": n}
    preprocess: Mapped[dict[str, Any]] = mapped_column()
    ingest_id: Mapped[int | None] = mapped_column(ForeignKey("ingests.id"))


class DatasetMember(Base):
    """Which images (with which label and split) make up a dataset version, so any version can be re-read."""

    __tablename__ = "dataset_members"

    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    label: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(8))


class AuditEntry(Base):
    """Who did what, when and why: alias moves, rollouts, conflict resolutions."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_subject", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ModelArtifacts(Base):
    """The sha256 of every artifact file of a registered model version, recorded at registration: a version whose
    files no longer match is never loaded (:mod:`conveyor.tracking.integrity`)."""

    __tablename__ = "model_artifacts"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_artifacts_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    """One model's answer to one request. A shadowed request has two rows: arm ``champion`` and arm ``shadow``."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("request_id", "arm", name="uq_prediction_request_arm"),
        Index("ix_predictions_rollout_stage", "rollout_id", "stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(16))  # champion | challenger | shadow
    rollout_id: Mapped[int | None] = mapped_column(Integer)
    stage: Mapped[int | None] = mapped_column(Integer)
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    brightness: Mapped[float] = mapped_column(Float)  # mean intensity in [0, 1], as ingest computes it
    contrast: Mapped[float] = mapped_column(Float)  # std of intensity in [0, 1]
    label: Mapped[str | None] = mapped_column(String(255))  # None when the model failed (see error)
    confidence: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column()
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class Feedback(Base):
    """The label a clinician gave a request later; a second label for the same request replaces the first."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), unique=True)
    label: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    who: Mapped[str] = mapped_column(String(255))


class Rollout(Base):
    """One rollout of a challenger: its mode, its current stage, and every decision taken on it.

    ``active_guard`` is 1 while the rollout is active and NULL once it ended; its unique index lets at most one
    rollout be active, whichever server process starts it (NULLs never collide)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("uq_rollouts_active_guard", "active_guard", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mode: Mapped[str] = mapped_column(String(16))  # shadow | canary | ab
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | promoted | rolled_back
    stage: Mapped[int] = mapped_column(Integer, default=0)
    share: Mapped[float] = mapped_column(Float)  # of traffic answered by the challenger now (0 in shadow mode)
    champion_version: Mapped[int] = mapped_column(Integer)
    challenger_version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the rollout ended: a promotion sets it once the champion alias has moved (promoted without ended_at:
    # the move is under way, or its process died during it; claimed_at says since when).
    ended_at: Mapped[datetime | None] = mapped_column()
    claimed_at: Mapped[datetime | None] = mapped_column()  # when a promotion claimed the rollout
    decisions: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"items": [{at, action, reason, stats}, ...]}
    active_guard: Mapped[int | None] = mapped_column(Integer, default=None)


class MonitoringRun(Base):
    """One monitoring run: what was compared with what, what it found, and what it decided."""

    __tablename__ = "monitoring_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # batch | log
    source: Mapped[str] = mapped_column(Text)
    reference_version: Mapped[str | None] = mapped_column(String(32))  # the champion's training data
    dataset_version: Mapped[str | None] = mapped_column(String(32))  # the data after this batch was ingested
    model_version: Mapped[int | None] = mapped_column(Integer)
    n_current: Mapped[int] = mapped_column(Integer, default=0)
    n_labelled: Mapped[int] = mapped_column(Integer, default=0)
    drift_share: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    ood_share: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    report_path: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    alerts: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the fired rules
    retrain: Mapped[bool] = mapped_column(Boolean, default=False)
    retrain_reason: Mapped[str] = mapped_column(Text, default="")


class ReviewItem(Base):
    """A served answer the model was unsure of (it abstained, or its confidence was under the threshold), queued for
    a clinician: the upload kept in ``review/``, the model's answer, and the decision once taken (who, when, which
    label; or dismissed)."""

    __tablename__ = "review_items"
    # One open item per image, whichever server process queues it (PostgreSQL and SQLite both have partial indexes).
    __table_args__ = (
        Index(
            "uq_review_open_image", "input_sha256", unique=True,
            postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'"),
        ),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), unique=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(255))  # the upload, relative to the workspace
    model_version: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(255))  # the model's answer
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]] = mapped_column()
    prediction_set: Mapped[list[Any] | None] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(String(32))  # abstain | low_confidence
    uncertainty: Mapped[float] = mapped_column(Float, index=True)  # 1 - confidence: the queue's order
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open | labelled | dismissed
    decided_label: Mapped[str | None] = mapped_column(String(255))
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None] = mapped_column()
