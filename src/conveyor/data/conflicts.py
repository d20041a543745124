"""Label conflicts: the same bytes filed under two labels. Listed for a person to settle, and resolved here.

Until resolved, the image stays out of every dataset version (so out of training and testing). Resolving picks the
label, marks the conflict rows resolved, records who and why in the audit log, and records a new dataset version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from conveyor.config import Settings
from conveyor.data.privacy import path_names
from conveyor.data.sources import open_source
from conveyor.data.versions import record_dataset_version
from conveyor.errors import ConveyorError, NotFoundError
from conveyor.store.db import session_scope
from conveyor.store.models import AuditEntry, Image, IngestFile, LabelConflict
from conveyor.workspace import open_workspace, workspace_lock

__all__ = ["Conflict", "list_conflicts", "resolve_conflict"]


@dataclass(frozen=True)
class Conflict:
    """One image in conflict: the label it was stored under, the other labels it was filed under, and where."""

    sha256: str
    stored_label: str
    other_labels: list[str]
    paths: list[str]


def list_conflicts(settings: Settings, sources: Sequence[Path] = ()) -> list[Conflict]:
    """Unresolved conflicts, by sha256. Paths are as stored (salted hashes unless ``ingest.keep_paths``); those of
    files in ``sources`` (the folders or zips they came from) are shown as they are there."""
    engine = open_workspace(settings)
    real_path = _real_paths(settings, sources)
    with session_scope(engine) as session:
        rows = session.execute(
            select(LabelConflict.sha256, LabelConflict.label, Image.label)
            .join(Image, Image.sha256 == LabelConflict.sha256)
            .where(LabelConflict.resolved.is_(False))
            .order_by(LabelConflict.sha256, LabelConflict.label)
        ).all()
        out: dict[str, Conflict] = {}
        for sha, other, stored in rows:
            conflict = out.setdefault(sha, Conflict(sha, stored, [], []))
            conflict.other_labels.append(other)
        for sha, conflict in out.items():
            paths = session.scalars(select(IngestFile.relpath).where(IngestFile.sha256 == sha)).all()
            conflict.paths.extend(sorted({real_path.get(path, path) for path in paths}))
        return list(out.values())


def _real_paths(settings: Settings, sources: Sequence[Path]) -> dict[str, str]:
    """Stored name -> path of every file in ``sources``."""
    names = path_names(settings)
    found: dict[str, str] = {}
    for path in sources:
        source = open_source(path)
        try:
            found.update((names.stored(f.relpath), f.relpath) for f in source.files)
        finally:
            source.close()
    return found


def resolve_conflict(settings: Settings, sha256: str, label: str, actor: str, reason: str = "") -> str:
    """Settle the conflict of ``sha256`` (a unique prefix is enough) as ``label``; returns the new dataset version.

    Raises:
        NotFoundError: no unresolved conflict matches the sha256.
        ConveyorError: the prefix matches several, or the label is not one the image was filed under.
    """
    engine = open_workspace(settings)
    matches = [c for c in list_conflicts(settings) if c.sha256.startswith(sha256)]
    if not matches:
        raise NotFoundError(f"no unresolved label conflict for an image whose sha256 starts with {sha256!r}")
    if len(matches) > 1:
        raise ConveyorError(f"{sha256!r} matches {len(matches)} conflicts; give more of the sha256")
    conflict = matches[0]
    allowed = sorted({conflict.stored_label, *conflict.other_labels})
    if label not in allowed:
        raise ConveyorError(f"{conflict.sha256[:12]} was filed as {allowed}; resolve it as one of them, not {label!r}")
    with workspace_lock(settings.home), session_scope(engine) as session:
        session.execute(update(Image).where(Image.sha256 == conflict.sha256).values(label=label, conflict=False))
        session.execute(update(LabelConflict).where(LabelConflict.sha256 == conflict.sha256).values(resolved=True))
        session.add(
            AuditEntry(
                actor=actor,
                action="resolve_conflict",
                subject=conflict.sha256,
                reason=reason,
                details={"label": label, "was": conflict.stored_label, "filed_as": allowed},
            )
        )
    return record_dataset_version(engine, settings, None)
