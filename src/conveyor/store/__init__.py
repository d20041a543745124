"""The metadata DB: images, ingests, splits, dataset versions, conflicts, audit log."""

from conveyor.store.db import create_schema, get_engine, session_scope
from conveyor.store.models import (
    AuditEntry,
    DatasetMember,
    DatasetVersion,
    Image,
    Ingest,
    IngestFile,
    LabelConflict,
)

__all__ = [
    "AuditEntry",
    "DatasetMember",
    "DatasetVersion",
    "Image",
    "Ingest",
    "IngestFile",
    "LabelConflict",
    "create_schema",
    "get_engine",
    "session_scope",
]
