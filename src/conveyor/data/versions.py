"""Dataset versions: a recorded state of the labelled data.

A version's id is derived from the set of (sha256, label, split) of the images fit for training (split assigned, no
unresolved label conflict), so the same data always has the same id, and any change gives a new one. Its members are
recorded, so training on an old version reads exactly the images it had.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert, select

from conveyor.config import Settings
from conveyor.errors import NotFoundError
from conveyor.storage import Storage
from conveyor.store.db import session_scope
from conveyor.store.models import DatasetMember, DatasetVersion, Image

__all__ = [
    "DatasetRecord",
    "RawImages",
    "clips_of",
    "cv_groups",
    "dataset_members",
    "latest_version",
    "list_versions",
    "raw_images",
    "record_dataset_version",
    "subgroups_of",
    "version_id",
]


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset version as listed to users."""

    id: str
    created_at: datetime
    n_images: int
    by_class: dict[str, dict[str, int]]
    preprocess: dict[str, Any]


def version_id(members: list[tuple[str, str, str]]) -> str:
    """The id of a set of (sha256, label, split): the first 16 hex digits of a sha256 over them, sorted."""
    digest = hashlib.sha256()
    for sha, label, split in sorted(members):
        digest.update(f"{sha}\t{label}\t{split}\n".encode())
    return digest.hexdigest()[:16]


def record_dataset_version(engine: Engine, settings: Settings, ingest_id: int | None) -> str:
    """Record the current state as a version (unless it is already recorded) and return its id."""
    with session_scope(engine) as session:
        members = [
            (r.sha256, r.label, r.split)
            for r in session.execute(
                select(Image.sha256, Image.label, Image.split).where(
                    Image.split.is_not(None), Image.conflict.is_(False)
                )
            )
        ]
        vid = version_id(members)
        if session.get(DatasetVersion, vid) is not None:
            return vid
        by_class: dict[str, dict[str, int]] = {}
        for _sha, label, split in members:
            counts = by_class.setdefault(label, {"train": 0, "test": 0})
            counts[split] += 1
        session.add(
            DatasetVersion(
                id=vid,
                n_images=len(members),
                by_class=dict(sorted(by_class.items())),
                preprocess=settings.preprocess.model_dump(mode="json"),
                ingest_id=ingest_id,
            )
        )
        session.flush()
        rows = [{"version_id": vid, "sha256": s, "label": label, "split": split} for s, label, split in members]
        for start in range(0, len(rows), 1000):
            session.execute(insert(DatasetMember), rows[start : start + 1000])
    return vid


def list_versions(engine: Engine) -> list[DatasetRecord]:
    """Every recorded version, oldest first."""
    with session_scope(engine) as session:
        rows = session.scalars(select(DatasetVersion).order_by(DatasetVersion.created_at, DatasetVersion.id)).all()
        return [DatasetRecord(r.id, r.created_at, r.n_images, r.by_class, r.preprocess) for r in rows]


def latest_version(engine: Engine) -> str:
    """The id of the newest version.

    Raises:
        NotFoundError: nothing has been ingested yet.
    """
    versions = list_versions(engine)
    if not versions:
        raise NotFoundError("no dataset version yet: run `conveyor ingest PATH` first")
    return versions[-1].id


def dataset_members(engine: Engine, version: str | None = None) -> list[tuple[str, str, str]]:
    """(sha256, label, split) of every image of ``version`` (default: the latest), sorted by sha256.

    Raises:
        NotFoundError: no such version.
    """
    vid = version or latest_version(engine)
    with session_scope(engine) as session:
        if session.get(DatasetVersion, vid) is None:
            known = ", ".join(v.id for v in list_versions(engine)[-5:]) or "none"
            raise NotFoundError(f"dataset version {vid!r} does not exist (latest: {known})")
        rows = session.execute(
            select(DatasetMember.sha256, DatasetMember.label, DatasetMember.split)
            .where(DatasetMember.version_id == vid)
            .order_by(DatasetMember.sha256)
        ).all()
        return [(r.sha256, r.label, r.split) for r in rows]


def cv_groups(engine: Engine, shas: list[str], near_bits: int) -> np.ndarray:
    """The cross-validation group of each image of ``shas`` (in that order): images of one patient, clip or slide, and
    near-duplicates, share one (:func:`conveyor.data.split.fold_groups`), so no fold trains on what it scores."""
    from conveyor.data.split import Assigned, fold_groups

    facts: dict[str, tuple[str, str | None]] = {}
    with session_scope(engine) as session:
        for start in range(0, len(shas), 5000):  # keep IN lists short for every database
            chunk = shas[start : start + 5000]
            query = select(Image.sha256, Image.phash, Image.group_key).where(Image.sha256.in_(chunk))
            facts.update({r.sha256: (r.phash, r.group_key) for r in session.execute(query)})
    images = [Assigned(sha, "", facts[sha][0], "", facts[sha][1]) for sha in shas]
    return fold_groups(images, near_bits)


def clips_of(engine: Engine, shas: list[str]) -> dict[str, str]:
    """The clip each frame among ``shas`` comes from (sha256 -> clip sha256); still images are left out."""
    out: dict[str, str] = {}
    with session_scope(engine) as session:
        for start in range(0, len(shas), 5000):  # keep IN lists short for every database
            chunk = shas[start : start + 5000]
            query = select(Image.sha256, Image.clip_sha256).where(
                Image.sha256.in_(chunk), Image.clip_sha256.is_not(None)
            )
            out.update({r.sha256: str(r.clip_sha256) for r in session.execute(query)})
    return out


def subgroups_of(engine: Engine, shas: list[str]) -> dict[str, dict[str, str]]:
    """The subgroup values of each stored image among ``shas`` (:mod:`conveyor.data.subgroups`); images stored
    before conveyor recorded them are left out."""
    out: dict[str, dict[str, str]] = {}
    with session_scope(engine) as session:
        for start in range(0, len(shas), 5000):  # keep IN lists short for every database
            chunk = shas[start : start + 5000]
            query = select(Image.sha256, Image.subgroups).where(Image.sha256.in_(chunk))
            for sha, values in session.execute(query):
                if values:  # NULL (an old image) and JSON null alike
                    out[sha] = {str(k): str(v) for k, v in values.items()}
    return out


@dataclass(frozen=True)
class RawImages:
    """Stored images, by sha256: where each one's bytes are in the store, read when asked for."""

    storage: Storage
    paths: dict[str, str]  # sha256 -> path in the store, as the images table records it

    def __contains__(self, sha: object) -> bool:
        return sha in self.paths

    def read(self, sha: str) -> bytes:
        """One image's bytes.

        Raises:
            KeyError: not a stored image.
            OSError: its bytes are not in the store.
        """
        return self.storage.read_bytes(self.paths[sha])

    def read_all(self, shas: list[str]) -> list[bytes]:
        """The bytes of ``shas``, in that order (fetched concurrently from an object store).

        Raises:
            KeyError, OSError: as :meth:`read`, for the first that fails.
        """
        found = self.storage.read_many(self.paths[sha] for sha in shas)
        out = []
        for sha in shas:
            data = found[self.paths[sha]]
            if isinstance(data, Exception):
                raise data
            out.append(data)
        return out


def raw_images(settings: Settings, shas: list[str]) -> RawImages:
    """The stored images of ``shas`` (absent shas are left out), read from the store of ``storage.url``."""
    from conveyor.workspace import open_workspace

    out: dict[str, str] = {}
    with session_scope(open_workspace(settings)) as session:
        for start in range(0, len(shas), 5000):  # keep IN lists short for every database
            query = select(Image.sha256, Image.raw_path).where(Image.sha256.in_(shas[start : start + 5000]))
            out.update({sha: raw for sha, raw in session.execute(query)})
    return RawImages(Storage.of(settings), out)
