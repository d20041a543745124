"""Tables of the metadata DB. Portable between SQLite and PostgreSQL (no dialect-specific types)."""

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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEntry",
    "Base",
    "DatasetMember",
    "DatasetVersion",
    "Image",
    "Ingest",
    "IngestFile",
    "LabelConflict",
    "ModelArtifacts",
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
    brightness: Mapped[float] = mapped_column(Float)  # mean intensity in [0, 1]
    contrast: Mapped[float] = mapped_column(Float)  # std of intensity in [0, 1]
    raw_path: Mapped[str] = mapped_column(String(255))  # relative to the workspace
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)  # same bytes seen under another label
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ingest_id: Mapped[int] = mapped_column(ForeignKey("ingests.id"))


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
