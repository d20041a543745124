"""Ingest: take every file of a source into the workspace, losing none.

Each input file ends in exactly one place, recorded in ``ingest_files``:

* ``stored``: new bytes, copied once into the raw store as ``raw/<sha[:2]>/<sha256>.<format>``;
* ``duplicate``: bytes already stored under the same label;
* ``conflict``: bytes already stored under another label (kept out of training until resolved);
* ``quarantined``: refused, with a reason code and a sentence, the file copied to ``quarantine/`` with the reason
  beside it.

So ``seen == stored + duplicates + conflicts + quarantined`` for every ingest. A file is known by (source, path inside
it, sha256): running the same ingest again decides nothing anew, and an ingest killed half-way resumes where its last
transaction ended. Splits are assigned at the end, for every image still without one (see :mod:`conveyor.data.split`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.data.decode import FORMATS, DecodedImage, DecodeLimits, decode_image
from conveyor.data.fingerprint import dhash
from conveyor.data.sources import Source, SourceFile, open_source
from conveyor.data.split import Assigned, Candidate, assign_splits
from conveyor.data.versions import record_dataset_version
from conveyor.errors import InvalidImageError
from conveyor.preprocess.transforms import to_gray_unit
from conveyor.store.db import session_scope
from conveyor.store.models import Image, Ingest, IngestFile, LabelConflict, utcnow
from conveyor.workspace import atomic_write, open_workspace, workspace_lock

__all__ = ["IngestSummary", "Inspection", "ingest", "inspect_image"]

OUTCOMES = ("stored", "duplicate", "conflict", "quarantined")
NO_LABEL = "(no label)"


@dataclass(frozen=True)
class Inspection:
    """What ingest records about a valid image."""

    format: str
    width: int
    height: int
    channels: int
    mode: str
    bit_depth: int
    n_frames: int
    phash: str
    brightness: float
    contrast: float


def inspect_image(data: bytes, limits: DecodeLimits) -> Inspection:
    """Decode and validate ``data``; raise :class:`InvalidImageError` with the reason if it cannot be used.

    The perceptual hash and the brightness/contrast statistics are computed on a box-reduced copy at most about
    128 pixels on its short side: the hash needs 17x16 pixels, the mean is unchanged by box reduction, and it keeps
    ingest close to the cost of decoding.
    """
    decoded: DecodedImage = decode_image(data, limits)
    gray = _reduced_gray(decoded.pixels)
    return Inspection(
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        channels=decoded.channels,
        mode=decoded.mode,
        bit_depth=decoded.bit_depth,
        n_frames=decoded.n_frames,
        phash=dhash(gray),
        brightness=float(gray.mean()),
        contrast=float(gray.std()),
    )


def _reduced_gray(pixels: np.ndarray, short_side: int = 128) -> np.ndarray:
    """(h, w) float32 grayscale in [0, 1], box-reduced by an integer factor to about ``short_side``."""
    factor = max(1, min(pixels.shape[:2]) // short_side)
    if pixels.dtype == np.uint8:  # Pillow's C code: the common case, and the fast one
        image = PILImage.fromarray(pixels).convert("L")
        if factor > 1:
            image = image.reduce(factor)
        return np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    return to_gray_unit(pixels[::factor, ::factor])


class Outcome(NamedTuple):
    """Where one file ended, as recorded in ``ingest_files``."""

    outcome: str  # stored | duplicate | conflict | quarantined
    reason: str | None
    detail: str | None
    label: str | None


@dataclass
class IngestSummary:
    """Where every file of one source ended. ``new`` were decided by this run, ``already_ingested`` by earlier runs
    (a re-run, or a resumed run after a kill); the counts cover both, so they describe the whole source."""

    source: str
    seen: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, dict[str, int]] = field(default_factory=dict)
    dataset_version: str | None = None
    new: int = 0
    already_ingested: int = 0
    missing_from_csv: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    ingest_id: int | None = None

    @property
    def nothing_new(self) -> bool:
        return self.new == 0

    def count(self, label: str | None, outcome: str, reason: str | None = None) -> None:
        key = {
            "stored": "stored",
            "duplicate": "duplicates",
            "conflict": "conflicts",
            "quarantined": "quarantined",
        }[outcome]
        self.seen += 1
        setattr(self, key, getattr(self, key) + 1)
        per_class = self.by_class.setdefault(
            label or NO_LABEL, {"seen": 0, "stored": 0, "duplicates": 0, "conflicts": 0, "quarantined": 0}
        )
        per_class["seen"] += 1
        per_class[key] += 1
        if reason is not None:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest(
    path: Path,
    settings: Settings,
    *,
    labels_csv: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[SourceFile], None] | None = None,
) -> IngestSummary:
    """Ingest every file under ``path`` (a folder or a .zip) into the workspace of ``settings``.

    Args:
        path: the source.
        settings: the workspace and its limits.
        labels_csv: a ``path,label[,split]`` CSV to take labels from instead of folders.
        on_start: called once with the number of files, before any is read (for a progress bar).
        on_file: called after each file is decided.

    Raises:
        SourceError: the source cannot be opened or its labels CSV is malformed.
        ConveyorError: another command holds the workspace lock.
    """
    engine = open_workspace(settings)
    source = open_source(path, labels_csv)
    try:
        with workspace_lock(settings.home):
            return _ingest_source(source, str(path), engine, settings, on_start, on_file)
    finally:
        source.close()


def _ingest_source(
    source: Source,
    display: str,
    engine: Engine,
    settings: Settings,
    on_start: Callable[[int], None] | None,
    on_file: Callable[[SourceFile], None] | None,
) -> IngestSummary:
    summary = IngestSummary(source=display, missing_from_csv=source.missing)
    limits = _limits(settings)
    with session_scope(engine) as session:
        decided = {
            (row.relpath, row.sha256): Outcome(row.outcome, row.reason, row.detail, row.label)
            for row in session.scalars(select(IngestFile).where(IngestFile.source_key == source.key))
        }
        known: dict[str, str] = {sha: label for sha, label in session.execute(select(Image.sha256, Image.label))}
        conflicts: set[tuple[str, str]] = {
            (sha, label) for sha, label in session.execute(select(LabelConflict.sha256, LabelConflict.label))
        }
        run = Ingest(source=source.key)
        session.add(run)
        session.flush()
        ingest_id = run.id
    summary.ingest_id = ingest_id

    if on_start is not None:
        on_start(len(source.files))
    pending: list[tuple[str, dict[str, Any]]] = []  # (table, row) written at the next commit
    writes: list[Future[None]] = []  # raw-store copies that must be on disk before their rows are committed
    already = frozenset(decided)
    stored_before = frozenset(known)
    with ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="ingest-write") as writer:
        for prepared in _prepare_in_order(source.files, settings, limits, already, stored_before):
            item, sha = prepared.item, prepared.sha
            outcome = decided.get((item.relpath, sha))
            if outcome is not None:
                summary.already_ingested += 1
            else:
                summary.new += 1
                outcome = _decide(prepared, source.key, ingest_id, known, conflicts, settings, pending, writer, writes)
                decided[(item.relpath, sha)] = outcome  # the same path and bytes twice in a zip is one file
            summary.count(outcome.label, outcome.outcome, outcome.reason)
            if outcome.outcome == "quarantined":
                summary.rejected.append(
                    {"path": item.relpath, "reason": outcome.reason or "", "detail": outcome.detail or ""}
                )
            if len(pending) >= settings.ingest.commit_every:
                _flush(engine, pending, writes)
            if on_file is not None:
                on_file(item)
        _flush(engine, pending, writes)

    with session_scope(engine) as session:
        _assign_pending_splits(session, settings)
    summary.dataset_version = record_dataset_version(engine, settings, ingest_id)
    with session_scope(engine) as session:
        session.execute(
            update(Ingest)
            .where(Ingest.id == ingest_id)
            .values(finished_at=utcnow(), summary=summary.to_dict(), dataset_version=summary.dataset_version)
        )
    return summary


@dataclass(frozen=True)
class _Prepared:
    """A file read, hashed and (when it may be new) decoded, ahead of the decision."""

    item: SourceFile
    sha: str
    data: bytes | None
    inspection: Inspection | None = None
    error: InvalidImageError | None = None


def _workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def _prepare(
    item: SourceFile,
    settings: Settings,
    limits: DecodeLimits,
    already: frozenset[tuple[str, str]],
    stored_before: frozenset[str],
) -> _Prepared:
    """Read, hash and inspect one file; pure, so it runs in worker threads (hashing and decoding release the GIL)."""
    if item.size > settings.ingest.max_file_bytes and item.stand_in_id is not None:
        return _Prepared(item, item.stand_in_id(), None)  # never read: too large
    data = item.read()
    sha = hashlib.sha256(data).hexdigest()
    if item.problem is not None or (item.relpath, sha) in already or sha in stored_before:
        return _Prepared(item, sha, data)  # the decision needs no pixels
    try:
        return _Prepared(item, sha, data, inspection=inspect_image(data, limits))
    except InvalidImageError as exc:
        return _Prepared(item, sha, data, error=exc)


def _prepare_in_order(
    files: list[SourceFile],
    settings: Settings,
    limits: DecodeLimits,
    already: frozenset[tuple[str, str]],
    stored_before: frozenset[str],
) -> Iterator[_Prepared]:
    """:func:`_prepare` every file on a thread pool, yielded in the files' order, a bounded window ahead."""
    ahead = 4 * _workers()
    pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="ingest-read")
    try:
        window: deque[Future[_Prepared]] = deque()
        remaining = iter(files)
        for item in remaining:
            window.append(pool.submit(_prepare, item, settings, limits, already, stored_before))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decide(
    prepared: _Prepared,
    source_key: str,
    ingest_id: int,
    known: dict[str, str],
    conflicts: set[tuple[str, str]],
    settings: Settings,
    pending: list[tuple[str, dict[str, Any]]],
    writer: ThreadPoolExecutor,
    writes: list[Future[None]],
) -> Outcome:
    """Decide where one new file ends; queue its rows (written by :func:`_flush`) and its raw-store copy."""
    item, sha, data = prepared.item, prepared.sha, prepared.data
    label = item.label
    outcome, reason, detail, quarantine_path = "stored", None, None, None
    try:
        if item.problem is not None:
            raise InvalidImageError(*item.problem)
        if data is None:
            raise InvalidImageError(
                "too_large", f"{item.size:,} bytes exceeds the limit of {settings.ingest.max_file_bytes:,}"
            )
        assert label is not None  # a file without a label has a problem
        if sha in known:
            if known[sha] == label:
                outcome = "duplicate"
            else:
                outcome = "conflict"
                detail = f"the same bytes are stored as {known[sha]!r}"
                if (sha, label) not in conflicts:
                    conflicts.add((sha, label))
                    pending.append(("conflict", {"sha256": sha, "label": label, "relpath": item.relpath}))
        else:
            if prepared.error is not None:
                raise prepared.error
            inspection = prepared.inspection or inspect_image(data, _limits(settings))  # defensive: not prepared
            raw_path = f"raw/{sha[:2]}/{sha}{FORMATS[inspection.format]}"
            writes.append(writer.submit(_write_raw, settings.home / raw_path, data))
            known[sha] = label
            pending.append(
                (
                    "image",
                    {
                        "sha256": sha,
                        "label": label,
                        "split": None,
                        "given_split": item.given_split,
                        "file_size": len(data),
                        "raw_path": raw_path,
                        "conflict": False,
                        "created_at": utcnow(),
                        "ingest_id": ingest_id,
                        **vars(inspection),
                    },
                )
            )
    except InvalidImageError as exc:
        outcome, reason, detail = "quarantined", exc.reason, exc.detail
        quarantine_path = _quarantine(settings.home, item, sha, data, reason, detail, source_key)

    pending.append(
        (
            "file",
            {
                "ingest_id": ingest_id,
                "source_key": source_key,
                "relpath": item.relpath,
                "sha256": sha,
                "label": label,
                "outcome": outcome,
                "reason": reason,
                "detail": detail,
                "quarantine_path": quarantine_path,
                "created_at": utcnow(),
            },
        )
    )
    return Outcome(outcome, reason, detail, label)


def _flush(engine: Engine, pending: list[tuple[str, dict[str, Any]]], writes: list[Future[None]]) -> None:
    """Write the queued rows in one transaction, once the raw files they name are on disk."""
    for write in writes:
        write.result()
    writes.clear()
    if not pending:
        return
    images = [row for kind, row in pending if kind == "image"]
    new_conflicts = [row for kind, row in pending if kind == "conflict"]
    files = [row for kind, row in pending if kind == "file"]
    with session_scope(engine) as session:
        if images:
            session.execute(insert(Image), images)
        if new_conflicts:
            session.execute(insert(LabelConflict), new_conflicts)
            session.execute(
                update(Image).where(Image.sha256.in_({r["sha256"] for r in new_conflicts})).values(conflict=True)
            )
        if files:
            session.execute(insert(IngestFile), files)
    pending.clear()


def _write_raw(target: Path, data: bytes) -> None:
    if not (target.exists() and target.stat().st_size == len(data)):  # else left by a killed run: same bytes
        atomic_write(target, data)


def _limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(min_side=settings.ingest.min_side, max_pixels=settings.ingest.max_pixels)


def _quarantine(
    home: Path, item: SourceFile, sha: str, data: bytes | None, reason: str, detail: str, source_key: str
) -> str:
    """Copy the refused file to ``quarantine/`` (unless it is too large to copy) with a ``.reason.json`` beside it."""
    name = posixpath.basename(item.relpath).replace("\x00", "") or "file"
    name = "".join(ch if ch.isprintable() and ch not in "\\/" else "_" for ch in name)[-120:]
    relative = f"quarantine/{sha.replace(':', '_')[:20]}-{name}"
    if data is not None:
        atomic_write(home / relative, data)
    note = {
        "source": source_key,
        "path": item.relpath,
        "label": item.label,
        "sha256": sha,
        "reason": reason,
        "detail": detail,
        "copied": data is not None,
    }
    atomic_write(home / f"{relative}.reason.json", json.dumps(note, indent=2, ensure_ascii=False).encode())
    return relative


def _assign_pending_splits(session: Session, settings: Settings) -> None:
    """Give every image still without a split its split (this run's images, and any a killed run left)."""
    rows = session.execute(select(Image.sha256, Image.label, Image.phash, Image.given_split, Image.split)).all()
    candidates = [Candidate(r.sha256, r.label, r.phash, r.given_split) for r in rows if r.split is None]
    if not candidates:
        return
    assigned = [Assigned(r.sha256, r.label, r.phash, r.split) for r in rows if r.split is not None]
    splits = assign_splits(candidates, assigned, settings.ingest.test_fraction, settings.ingest.near_duplicate_bits)
    by_split: dict[str, list[str]] = defaultdict(list)
    for sha, split in splits.items():
        by_split[split].append(sha)
    for split, shas in by_split.items():
        for start in range(0, len(shas), 500):
            session.execute(update(Image).where(Image.sha256.in_(shas[start : start + 500])).values(split=split))
