"""Ingest: take every file of a source into the workspace, losing none.

Each input file ends in exactly one place, recorded in ``ingest_files``:

* ``stored``: new bytes, copied once into the raw store as ``raw/<sha[:2]>/<sha256>.<format>`` (in the workspace, or
  the store of ``storage.url``, see :mod:`conveyor.storage`);
* ``duplicate``: bytes already stored under the same label;
* ``conflict``: bytes already stored under another label (kept out of training until resolved);
* ``quarantined``: refused, with a reason code and a sentence, the file copied to ``quarantine/`` with the reason
  beside it.

So ``seen == stored + duplicates + conflicts + quarantined`` for every ingest. A file is known by (source, path inside
it, sha256): running the same ingest again decides nothing anew, and an ingest killed half-way resumes where its last
transaction ended. Only a new label decides a known file again (a corrected labels CSV): its row is updated, the
change audited, and an image whose label came from that file alone is relabelled (a new dataset version); where other
files still give the old label, the new one is a conflict. Splits are assigned at the end, for every image still
without one (see :mod:`conveyor.data.split`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.orm import Session

from conveyor.config import Settings, VideoSettings
from conveyor.data.decode import FORMATS, DecodedImage, DecodeLimits, check_decoded, decode_image, sniff_format
from conveyor.data.facts import Inspection, inspect_decoded, judge_quality
from conveyor.data.masks import check_mask
from conveyor.data.privacy import PathNames, deidentify_dicom, group_key, path_names, workspace_salt
from conveyor.data.sources import Source, SourceFile, open_source
from conveyor.data.split import Assigned, Candidate, assign_splits
from conveyor.data.subgroups import csv_subgroups, image_subgroups
from conveyor.data.versions import record_dataset_version
from conveyor.data.video import encode_png, sample_frames, sniff_video
from conveyor.errors import InvalidImageError
from conveyor.storage import RAW, Storage
from conveyor.store.db import session_scope
from conveyor.store.models import AuditEntry, Image, Ingest, IngestFile, LabelConflict, Mask, utcnow
from conveyor.workspace import PRIVATE, atomic_write, available_cores, die_with_parent, open_workspace, workspace_lock

__all__ = ["IngestSummary", "ingest", "label_warnings"]

NO_LABEL = "(no label)"


class Outcome(NamedTuple):
    """Where one file ended, as recorded in ``ingest_files``."""

    outcome: str  # stored | duplicate | conflict | quarantined
    reason: str | None
    detail: str | None
    label: str | None
    quarantine_path: str | None = None


@dataclass
class IngestSummary:
    """Where every file of one source ended. ``new`` were decided by this run, ``already_ingested`` by earlier runs
    (a re-run, or a resumed run after a kill); the counts cover both, so they describe the whole source."""

    source: str
    source_key: str = ""  # as the ledger stores it (a salted hash unless ingest.keep_paths): its files' rows
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
    warnings: list[str] = field(default_factory=list)
    quality_flagged: dict[str, int] = field(default_factory=dict)  # measure -> images of the source stored flagged
    clips: int = 0  # video clips of the source stored (as frames)
    frames: int = 0  # the frames stored of them
    masks: int = 0  # segmentation masks stored with the source's images
    # Labels CSV columns not stored because their names say they identify someone (patient_id, name, birth_date)
    dropped_columns: list[str] = field(default_factory=list)

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestSummary:
        """The summary back from :meth:`to_dict` (a pipeline task's output); unknown keys are an error."""
        return cls(**data)


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
        StorageError: the store of ``storage.url`` cannot be reached (before anything is written).
        ConveyorError: another command holds the workspace lock.
    """
    storage = Storage.of(settings)
    storage.check(settings.storage.check_timeout_s)
    engine = open_workspace(settings)
    source = open_source(path, labels_csv)
    try:
        with workspace_lock(settings.home):
            _remove_partial_copies(settings.home, storage)
            return _ingest_source(source, str(path), engine, settings, storage, on_start, on_file)
    finally:
        source.close()


def _remove_partial_copies(home: Path, storage: Storage) -> None:
    """Delete the half-written copies (``.<name>.<pid>.tmp``) a killed ingest left in raw/ and quarantine/: under
    the workspace lock no other writer can own one (an object store has none: an object is written whole)."""
    storage.remove_partial_writes(RAW)
    quarantine = home / "quarantine"
    if quarantine.is_dir():
        for partial_copy in quarantine.rglob(".*.tmp"):
            partial_copy.unlink(missing_ok=True)


def _ingest_source(
    source: Source,
    display: str,
    engine: Engine,
    settings: Settings,
    storage: Storage,
    on_start: Callable[[int], None] | None,
    on_file: Callable[[SourceFile], None] | None,
) -> IngestSummary:
    names = path_names(settings)
    source_key = names.stored(source.key)
    summary = IngestSummary(
        source=display, source_key=source_key, missing_from_csv=source.missing, dropped_columns=source.dropped_columns
    )
    limits = DecodeLimits.of(settings)
    if not names.keep:
        _hash_plain_paths(engine, source.key, names)
    with session_scope(engine) as session:
        decided = {
            (row.relpath, row.sha256): Outcome(row.outcome, row.reason, row.detail, row.label, row.quarantine_path)
            for row in session.scalars(select(IngestFile).where(IngestFile.source_key == source_key))
        }
        known: dict[str, str] = {sha: label for sha, label in session.execute(select(Image.sha256, Image.label))}
        conflicts: set[tuple[str, str]] = {
            (sha, label) for sha, label in session.execute(select(LabelConflict.sha256, LabelConflict.label))
        }
        ingest_run = Ingest(source=source_key)
        session.add(ingest_run)
        session.flush()
        ingest_id = ingest_run.id
    summary.ingest_id = ingest_id

    if on_start is not None:
        on_start(len(source.files))
    run = _Run(engine, settings, source_key, ingest_id, names, workspace_salt(settings.home), known, conflicts)
    context = _PrepareContext(
        storage,
        limits,
        settings.ingest.max_file_bytes,
        frozenset((stored_path, sha, outcome.label) for (stored_path, sha), outcome in decided.items()),
        frozenset(known),
        names,
        workspace_salt(settings.home) if settings.ingest.deidentify else None,
        settings.ingest.video,
        list(settings.ingest.masks.classes),
    )
    for item, prepared in _prepare_in_order(source.files, context, settings):
        sha = prepared.sha
        stored_path = names.stored(item.relpath)
        previous = decided.get((stored_path, sha))
        if previous is not None and item.label in (previous.label, None):  # a label dropped later keeps its decision
            summary.already_ingested += 1
            outcome = previous
        else:
            summary.new += 1
            outcome = _decide(item, stored_path, prepared, previous, run)
            decided[(stored_path, sha)] = outcome  # the same path and bytes twice in a zip is one file
        summary.count(outcome.label, outcome.outcome, outcome.reason)
        if outcome.outcome == "quarantined":
            summary.rejected.append(
                {"path": item.relpath, "reason": outcome.reason or "", "detail": outcome.detail or ""}
            )
        if len(run.pending) >= settings.ingest.commit_every:
            _flush(engine, run.pending)
        if on_file is not None:
            on_file(item)
    _flush(engine, run.pending)
    summary.warnings = label_warnings(set(summary.by_class) - {NO_LABEL}, set(known.values()))
    summary.quality_flagged = _quality_flagged(engine, source_key)
    summary.clips, summary.frames = _clip_counts(engine, source_key)
    summary.masks = _mask_count(engine, source_key)

    with session_scope(engine) as session:
        _assign_pending_splits(session, settings)
    summary.dataset_version = record_dataset_version(engine, settings, ingest_id)
    with session_scope(engine) as session:
        session.execute(
            update(Ingest)
            .where(Ingest.id == ingest_id)
            .values(finished_at=utcnow(), summary=_at_rest(summary, names), dataset_version=summary.dataset_version)
        )
    return summary


def _mask_count(engine: Engine, source_key: str) -> int:
    """The masks stored with this source's images (earlier runs included)."""
    from sqlalchemy import func

    query = (
        select(func.count(Mask.image_sha256))
        .join(IngestFile, IngestFile.sha256 == Mask.image_sha256)
        .where(IngestFile.source_key == source_key, IngestFile.outcome == "stored")
    )
    with session_scope(engine) as session:
        return int(session.execute(query).scalar_one())


def _clip_counts(engine: Engine, source_key: str) -> tuple[int, int]:
    """The clips this source stored and their frames (earlier runs included, like every count of the summary)."""
    from sqlalchemy import distinct, func

    query = (
        select(func.count(distinct(Image.clip_sha256)), func.count(Image.sha256))
        .join(IngestFile, IngestFile.sha256 == Image.clip_sha256)
        .where(IngestFile.source_key == source_key, IngestFile.outcome == "stored")
    )
    with session_scope(engine) as session:
        clips, frames = session.execute(query).one()
    return int(clips), int(frames)


def _quality_flagged(engine: Engine, source_key: str) -> dict[str, int]:
    """Per quality measure, the images this source stored with a warning on it (``ingest.quality``), earlier runs'
    included, like every count of the summary."""
    counts: dict[str, int] = {}
    query = (
        select(Image.quality_flags)
        .join(IngestFile, IngestFile.sha256 == Image.sha256)
        .where(IngestFile.source_key == source_key, IngestFile.outcome == "stored", Image.quality_flags.is_not(None))
    )
    with session_scope(engine) as session:
        for (flags,) in session.execute(query):
            for measure in str(flags).split(","):
                counts[measure] = counts.get(measure, 0) + 1
    return dict(sorted(counts.items()))


_MARKUP_OR_PATH = re.compile(r"[<>&\"'`/\\]|[\x00-\x1f\x7f]")


def label_warnings(labels: set[str], known: set[str]) -> list[str]:
    """What looks wrong in a source's labels: two spellings of one class (case, spaces) among them and the labels
    already stored, and markup or path characters (a label is shown in pages, reports and file names)."""
    warnings = []
    spellings: dict[str, set[str]] = defaultdict(set)
    for label in labels | known:
        spellings[" ".join(label.casefold().split())].add(label)
    for group in sorted(spellings.values(), key=sorted):
        if len(group) > 1 and group & labels:
            names = " and ".join(repr(label) for label in sorted(group))
            warnings.append(
                f"labels {names} differ only in case or spacing: they are {len(group)} classes; rename the folders "
                "or CSV labels to one spelling (ingest.label_pattern can refuse the others)"
            )
    for label in sorted(labels):
        if _MARKUP_OR_PATH.search(label):
            warnings.append(f"label {label!r} holds markup, quote, path or control characters")
    return warnings


def _hash_plain_paths(engine: Engine, plain_key: str, names: PathNames) -> None:
    """Store as salted hashes the paths an earlier run (with ``ingest.keep_paths``, or before paths were hashed) kept
    as they are, so that this source's files are still known by their stored names: nothing is decided twice."""
    with session_scope(engine) as session:
        rows = session.execute(
            select(IngestFile.id, IngestFile.relpath, IngestFile.sha256).where(IngestFile.source_key == plain_key)
        ).all()
        for row_id, relpath, sha in rows:
            stored = names.stored(relpath)
            session.execute(
                update(IngestFile)
                .where(IngestFile.id == row_id)
                .values(source_key=names.stored(plain_key), relpath=stored)
            )
            session.execute(
                update(LabelConflict)
                .where(LabelConflict.sha256 == sha, LabelConflict.relpath == relpath)
                .values(relpath=stored)
            )


def _at_rest(summary: IngestSummary, names: PathNames) -> dict[str, Any]:
    """The summary as the database keeps it: source paths as :class:`PathNames` stores them."""
    kept = summary.to_dict()
    if not names.keep:
        kept["source"] = names.stored(summary.source)
        kept["missing_from_csv"] = [names.stored(path) for path in summary.missing_from_csv]
        kept["rejected"] = [{**r, "path": names.stored(r["path"])} for r in summary.rejected]
    return kept


#: Refusals whose input is never copied into quarantine/: what a link points at out of the source, what cannot be read.
NOT_COPIED = frozenset({"unsafe_path", "not_a_file", "unreadable", "suspicious_archive"})
_PARALLEL_FROM = 256  # files; below this, worker processes cost more than they save
_CHUNK = 32  # files per worker task
_CLUSTER_CHUNK = 128  # ... on a Dask cluster: seconds of work per task


@dataclass(frozen=True)
class _PrepareContext:
    """What reading and inspecting a file needs; sent once to each worker process."""

    storage: Storage  # where the raw store is: the workspace's folder, a shared one, or an object store
    limits: DecodeLimits
    max_file_bytes: int
    already: frozenset[tuple[str, str, str | None]]  # (stored path, sha256, label) decided by earlier runs
    stored_before: frozenset[str]  # sha256 already in the raw store when this run began
    names: PathNames
    deidentify_salt: bytes | None  # set when DICOM files are de-identified before they are stored
    video: VideoSettings
    mask_classes: list[str]


@dataclass(frozen=True)
class _Task:
    """One file, in a form that can cross to a worker process: a path to read there, or the bytes."""

    index: int
    relpath: str
    label: str | None
    skip_pixels: bool  # the path alone decides (no label, unsafe path)
    stand_in: str | None  # set for a file too large to read
    path: Path | None
    data: bytes | None
    error: InvalidImageError | None = None  # reading it failed (a corrupt zip member): its reason
    mask_path: Path | None = None  # its segmentation mask on disk, or
    mask_data: bytes | None = None  # ... the mask's bytes (a zip member)


@dataclass(frozen=True)
class _Prepared:
    """A file read, hashed and, when it may be new, inspected and copied into the raw store."""

    index: int
    sha: str
    size: int = 0
    inspection: Inspection | None = None
    error: InvalidImageError | None = None
    subject: str | None = None  # whose image the file says it is (DICOM), raw: hashed before it is stored
    header_subgroups: dict[str, str] | None = None  # the DICOM header's subgroup values (derived, never identifying)
    frames: tuple[_PreparedFrame, ...] | None = None  # a video clip's sampled frames, stored as images
    mask: _PreparedMask | None = None  # its segmentation mask, checked and copied into the raw store


@dataclass(frozen=True)
class _PreparedMask:
    sha: str
    raw_path: str
    areas: dict[str, int]


@dataclass(frozen=True)
class _PreparedFrame:
    """One sampled frame of a clip, encoded as PNG, hashed, inspected and copied into the raw store."""

    sha: str
    time: float
    size: int
    inspection: Inspection


def _group_key(item: SourceFile, prepared: _Prepared, run: _Run) -> str | None:
    """The salted key of the patient, clip or slide the file belongs to: the labels CSV's ``group``, else
    ``ingest.group_pattern`` on its path, else the DICOM header's patient; None when nothing says."""
    raw = item.group
    pattern = run.settings.ingest.group_pattern
    if raw is None and pattern is not None:
        found = re.search(pattern, item.relpath)
        if found is not None:
            raw = found.group(1) if found.re.groups else found.group(0)
    raw = raw or prepared.subject
    return group_key(raw, run.group_salt) if raw else None


def _decide_clip(
    item: SourceFile, stored_path: str, prepared: _Prepared, label: str, run: _Run
) -> tuple[str, str | None]:
    """A clip is stored when some of its frames are new, a duplicate when all are stored under its label, and a
    conflict (nothing of it stored) when any is stored under another label. Its frames are grouped by the clip
    (unless the labels CSV or ``ingest.group_pattern`` names a group), so a clip never straddles the split."""
    assert prepared.frames is not None
    known = run.known
    clashing = [f for f in prepared.frames if f.sha in known and known[f.sha] != label]
    if clashing:
        for frame in clashing:
            if (frame.sha, label) not in run.conflicts:
                run.conflicts.add((frame.sha, label))
                run.pending.append(("conflict", {"sha256": frame.sha, "label": label, "relpath": stored_path}))
        others = sorted({known[f.sha] for f in clashing})
        return "conflict", f"{len(clashing)} of its {len(prepared.frames)} frames are stored as {', '.join(others)}"
    new = [f for f in prepared.frames if f.sha not in known]
    if not new:
        return "duplicate", None
    group = _group_key(item, prepared, run) or group_key(f"clip:{prepared.sha}", run.group_salt)
    for frame in new:
        known[frame.sha] = label
        row = _image_row(frame.sha, label, item, run, frame.inspection, frame.size, group)
        run.pending.append(("image", {**row, "clip_sha256": prepared.sha, "clip_time": frame.time}))
    return "stored", f"{len(new)} frames"


def _image_row(
    sha: str,
    label: str,
    item: SourceFile,
    run: _Run,
    inspection: Inspection,
    size: int,
    group: str | None,
    header_subgroups: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An ``images`` row of a stored image (every key, as one insert of many rows needs). Its subgroups: the image's
    facts, its DICOM header's values, its labels CSV row's extra columns (these win)."""
    subgroups = {
        **image_subgroups(inspection.format, inspection.bit_depth, inspection.width, inspection.height),
        **(header_subgroups or {}),
        **csv_subgroups(item.extra or {}),
    }
    return {
        "sha256": sha,
        "label": label,
        "split": None,
        "given_split": item.given_split,
        "group_key": group,
        "quality_flags": None,
        "clip_sha256": None,
        "clip_time": None,
        "file_size": size,
        "raw_path": _raw_path(sha, inspection.format),
        "conflict": False,
        "created_at": utcnow(),
        "ingest_id": run.ingest_id,
        "subgroups": subgroups,
        **vars(inspection),
    }


def _raw_path(sha: str, fmt: str) -> str:
    return f"{RAW}/{sha[:2]}/{sha}{FORMATS[fmt]}"


def _task(index: int, item: SourceFile, context: _PrepareContext) -> _Task:
    task = _file_task(index, item, context)
    mask = item.mask
    if mask is None or task.skip_pixels:
        return task
    if mask.local_path is not None:
        return replace(task, mask_path=mask.local_path)
    try:
        return replace(task, mask_data=mask.read())
    except InvalidImageError as exc:
        return replace(task, error=InvalidImageError("bad_mask", f"the mask cannot be read: {exc.detail}"))


def _file_task(index: int, item: SourceFile, context: _PrepareContext) -> _Task:
    if item.size > context.max_file_bytes and item.stand_in_id is not None:
        return _Task(index, item.relpath, item.label, True, item.stand_in_id(), None, None)
    if item.local_path is not None:
        return _Task(index, item.relpath, item.label, item.problem is not None, None, item.local_path, None)
    try:
        data = item.read()
    except InvalidImageError as exc:
        return _Task(index, item.relpath, item.label, True, None, None, None, error=exc)
    return _Task(index, item.relpath, item.label, item.problem is not None, None, None, data)


def _prepare(task: _Task, context: _PrepareContext, copies: _RawCopies | None = None) -> _Prepared:
    """Read, hash and inspect one file, and copy a valid new one into the raw store (at once, or with ``copies``
    when its chunk's copies are sent together, before the chunk's results are returned).

    Copying before the decision is safe: the raw store is named by content, so a copy the decision does not record
    (a duplicate within this run, a kill before the commit) holds the same bytes as the one it does.
    """
    if task.stand_in is not None:
        return _Prepared(task.index, task.stand_in)  # never read: too large
    if task.error is not None:
        return _Prepared(task.index, f"unreadable:{context.names.stored(task.relpath)}", 0, error=task.error)
    try:
        data = task.data if task.data is not None else Path(str(task.path)).read_bytes()
    except OSError as exc:  # permissions, or the file vanished since the listing
        unreadable = InvalidImageError("unreadable", f"the file cannot be read: {exc.strerror or exc}")
        return _Prepared(task.index, f"unreadable:{context.names.stored(task.relpath)}", 0, error=unreadable)
    sha = hashlib.sha256(data).hexdigest()
    already = (context.names.stored(task.relpath), sha, task.label) in context.already
    if task.skip_pixels or already or sha in context.stored_before:
        return _Prepared(task.index, sha, len(data))  # the decision needs no pixels
    if sniff_video(data) is not None:
        if task.mask_path is not None or task.mask_data is not None:  # its mask would be silently dropped
            refusal = InvalidImageError("bad_mask", "a video clip cannot have a mask; masks go with still images")
            return _Prepared(task.index, sha, len(data), error=refusal)
        return _prepare_clip(task.index, sha, data, context, copies)
    try:
        decoded = decode_image(data, context.limits)
        inspection = inspect_decoded(decoded)
        if inspection.format == "dicom" and context.deidentify_salt is not None:
            data = _deidentified(data, context.deidentify_salt)
    except InvalidImageError as exc:
        return _Prepared(task.index, sha, len(data), error=exc)
    mask = None
    if task.mask_path is not None or task.mask_data is not None:
        try:
            mask = _prepare_mask(task, inspection, context, copies)
        except InvalidImageError as exc:
            return _Prepared(task.index, sha, len(data), error=exc)
    _copy_raw(context, copies, _raw_path(sha, inspection.format), data)
    return _Prepared(
        task.index, sha, len(data), inspection=inspection, subject=decoded.subject, mask=mask,
        header_subgroups=decoded.subgroups,
    )  # fmt: skip


def _prepare_mask(
    task: _Task, inspection: Inspection, context: _PrepareContext, copies: _RawCopies | None
) -> _PreparedMask:
    """The file's mask, checked against it and ``ingest.masks`` and copied into ``raw/masks/``.

    Raises:
        InvalidImageError: ``bad_mask``.
    """
    try:
        data = task.mask_data if task.mask_data is not None else Path(str(task.mask_path)).read_bytes()
    except OSError as exc:
        raise InvalidImageError("bad_mask", f"the mask cannot be read: {exc.strerror or exc}") from exc
    if len(data) > context.max_file_bytes:
        raise InvalidImageError("bad_mask", f"the mask's {len(data):,} bytes exceed {context.max_file_bytes:,}")
    checked = check_mask(data, inspection.width, inspection.height, context.mask_classes)
    sha = hashlib.sha256(checked.png).hexdigest()
    raw = f"{RAW}/masks/{sha[:2]}/{sha}.png"
    _copy_raw(context, copies, raw, checked.png)
    return _PreparedMask(sha, raw, checked.areas)


def _prepare_clip(index: int, sha: str, data: bytes, context: _PrepareContext, copies: _RawCopies | None) -> _Prepared:
    """A clip's frames (``ingest.video``), each encoded as PNG, inspected and copied into the raw store; a frame that
    repeats one before it, or is no usable image (blank, too small), is left out."""
    video = context.video
    try:
        frames = sample_frames(
            data, fps=video.fps, count=video.frames, max_frames=video.max_frames, max_pixels=context.limits.max_pixels
        )
    except InvalidImageError as exc:
        return _Prepared(index, sha, len(data), error=exc)
    kept: list[_PreparedFrame] = []
    seen: set[str] = set()
    for frame in frames:
        png = encode_png(frame.pixels)
        frame_sha = hashlib.sha256(png).hexdigest()
        if frame_sha in seen:
            continue
        seen.add(frame_sha)
        try:  # the pixels in hand are the PNG's: held to the same rules, not decoded again
            inspection = inspect_decoded(check_decoded(DecodedImage(frame.pixels, "png", "RGB", 8, 1), context.limits))
        except InvalidImageError:
            continue
        _copy_raw(context, copies, _raw_path(frame_sha, "png"), png)
        kept.append(_PreparedFrame(frame_sha, frame.time, len(png), inspection))
    if not kept:
        empty = InvalidImageError("empty_video", f"none of its {len(frames)} sampled frames is a usable image")
        return _Prepared(index, sha, len(data), error=empty)
    return _Prepared(index, sha, len(data), frames=tuple(kept))


def _deidentified(data: bytes, salt: bytes) -> bytes:
    try:
        return deidentify_dicom(data, salt)
    except ValueError as exc:
        raise InvalidImageError("cannot_deidentify", str(exc)) from exc


_WORKER_CONTEXT: _PrepareContext | None = None  # a worker process's copy, set once by _init_worker


def _init_worker(context: _PrepareContext) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context
    die_with_parent()


def _prepare_chunk(tasks: list[_Task]) -> list[_Prepared]:
    assert _WORKER_CONTEXT is not None, "worker process not initialised"
    return _prepare_with(tasks, _WORKER_CONTEXT)


def _prepare_in_order(
    files: list[SourceFile], context: _PrepareContext, settings: Settings
) -> Iterator[tuple[SourceFile, _Prepared]]:
    """:func:`_prepare` every file, in worker processes when there are many (or on the Dask cluster of
    ``compute.scheduler``), yielded in the files' order.

    Processes, not threads: hashing and decoding release the GIL but the Python around them does not, and a thread
    pool was slower than one loop. At most a few chunks are in flight, so memory stays flat.
    """
    if settings.compute.distributed:
        yield from _prepare_on_cluster(files, context, settings)
        return
    workers = min(8, available_cores())
    if workers < 2 or len(files) < _PARALLEL_FROM:
        if context.storage.local:
            for index, item in enumerate(files):
                yield item, _prepare(_task(index, item, context), context)
            return
        for start in range(0, len(files), _CHUNK):  # an object store takes a chunk's copies at once
            tasks = [_task(i, files[i], context) for i in range(start, min(start + _CHUNK, len(files)))]
            yield from ((files[p.index], p) for p in _prepare_with(tasks, context))
        return
    # Fork: the workers start at once with everything imported. They use neither the DB nor the terminal, so
    # locks that other threads hold at the fork do not matter to them.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_worker, initargs=(context,))
    try:
        window: deque[Future[list[_Prepared]]] = deque()
        for start in range(0, len(files), _CHUNK):
            tasks = [_task(i, files[i], context) for i in range(start, min(start + _CHUNK, len(files)))]
            window.append(pool.submit(_prepare_chunk, tasks))
            if len(window) >= 3 * workers:
                yield from ((files[p.index], p) for p in window.popleft().result())
        while window:
            yield from ((files[p.index], p) for p in window.popleft().result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_with(tasks: list[_Task], context: _PrepareContext) -> list[_Prepared]:
    """:func:`_prepare` a chunk in a worker process or on a cluster's worker (the context arrives scattered, once
    per worker); its copies into the raw store are sent together, and are whole before the results leave."""
    copies = _RawCopies(context.storage)
    prepared = [_prepare(task, context, copies) for task in tasks]
    copies.send()
    return prepared


def _prepare_on_cluster(
    files: list[SourceFile], context: _PrepareContext, settings: Settings
) -> Iterator[tuple[SourceFile, _Prepared]]:
    """The cluster's version of :func:`_prepare_in_order`: chunks of ``_CLUSTER_CHUNK`` files, results in order.

    The workers read the files the tasks name (a path every worker sees: one machine, or a shared filesystem) and
    write the raw store of ``storage.url`` (an object store, a shared folder), never the driver's disk.
    """
    from conveyor import compute

    with compute.pool(settings, 0) as cluster:
        shared = cluster.share(context)
        window: deque[Any] = deque()
        for start in range(0, len(files), _CLUSTER_CHUNK):
            tasks = [_task(i, files[i], context) for i in range(start, min(start + _CLUSTER_CHUNK, len(files)))]
            window.append(cluster.submit(_prepare_with, tasks, shared))
            if len(window) >= 3 * cluster.size:
                yield from ((files[p.index], p) for p in window.popleft().result())
        while window:
            yield from ((files[p.index], p) for p in window.popleft().result())


@dataclass
class _Run:
    """One ingest run while it decides: what the workspace holds, and the rows queued for the next commit."""

    engine: Engine
    settings: Settings
    source_key: str  # as stored
    ingest_id: int
    names: PathNames
    group_salt: bytes  # the workspace's salt, for group keys
    known: dict[str, str]  # sha256 -> label of every stored image
    conflicts: set[tuple[str, str]]  # (sha256, label) with a conflict row, resolved or not
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (kind, row), written by _flush


def _decide(item: SourceFile, stored_path: str, prepared: _Prepared, previous: Outcome | None, run: _Run) -> Outcome:
    """Decide where one file ends and queue its rows. ``previous`` is an earlier decision for the same path and
    bytes under another label (a corrected labels CSV): decided again, its row updated and the change audited."""
    sha = prepared.sha
    settings, known = run.settings, run.known
    too_large = item.size > settings.ingest.max_file_bytes and item.stand_in_id is not None
    label = item.label
    outcome, reason, detail, quarantine_path = "stored", None, None, None
    try:
        if item.problem is not None:
            raise InvalidImageError(*item.problem)
        if too_large:
            raise InvalidImageError(
                "too_large", f"{item.size:,} bytes exceeds the limit of {settings.ingest.max_file_bytes:,}"
            )
        assert label is not None  # a file without a label has a problem
        pattern = settings.ingest.label_pattern
        if pattern is not None and re.fullmatch(pattern, label) is None:
            raise InvalidImageError("bad_label", f"label {label!r} does not match ingest.label_pattern {pattern!r}")
        if prepared.frames is not None:
            outcome, detail = _decide_clip(item, stored_path, prepared, label, run)
        elif sha in known:
            if known[sha] == label:
                outcome = "duplicate"
            elif _label_came_from_this_file_alone(previous, known[sha], sha, stored_path, run):
                run.pending.append(("relabel", {"sha256": sha, "label": label}))
                known[sha] = label
            else:
                outcome = "conflict"
                detail = f"the same bytes are stored as {known[sha]!r}"
                if (sha, label) not in run.conflicts:
                    run.conflicts.add((sha, label))
                    run.pending.append(("conflict", {"sha256": sha, "label": label, "relpath": stored_path}))
        else:
            if prepared.error is not None:
                raise prepared.error
            inspection = prepared.inspection
            assert inspection is not None, "a new, readable file is always inspected by _prepare"
            flags, refusal = judge_quality(inspection, settings.ingest.quality)
            if refusal is not None:
                raise InvalidImageError("low_quality", refusal)
            known[sha] = label
            group = _group_key(item, prepared, run)
            row = _image_row(sha, label, item, run, inspection, prepared.size, group, prepared.header_subgroups)
            run.pending.append(("image", {**row, "quality_flags": ",".join(flags) or None}))
            if prepared.mask is not None:
                m = prepared.mask
                run.pending.append(
                    ("mask", {"image_sha256": sha, "sha256": m.sha, "raw_path": m.raw_path, "areas": m.areas})
                )
    except InvalidImageError as exc:
        outcome, reason, detail = "quarantined", exc.reason, exc.detail
        # Read again (refusals are rare, bytes are not kept around); never what cannot or must not be read.
        try:
            data = None if too_large or reason in NOT_COPIED else item.read()
        except InvalidImageError:  # it could not be read the first time either
            data = None
        if data is not None and settings.ingest.deidentify and sniff_format(data) == "dicom":
            try:
                data = deidentify_dicom(data, workspace_salt(settings.home))
            except ValueError:
                data = None  # a patient's header that cannot be cleaned is not kept
        quarantine_path = _quarantine(settings.home, item, stored_path, sha, data, reason, detail, run.source_key)

    row = {
        "ingest_id": run.ingest_id,
        "source_key": run.source_key,
        "relpath": stored_path,
        "sha256": sha,
        "label": label,
        "outcome": outcome,
        "reason": reason,
        "detail": detail,
        "quarantine_path": quarantine_path,
        "created_at": utcnow(),
    }
    if previous is None:
        run.pending.append(("file", row))
    else:
        run.pending.append(("file_update", row))
        if previous.outcome == "conflict" and previous.label is not None:
            run.pending.append(("conflict_withdrawn", {"sha256": sha, "label": previous.label}))
        run.pending.append(
            (
                "audit",
                {
                    "actor": "ingest",
                    "action": "relabel_file",
                    "subject": sha,
                    "reason": f"{stored_path} was filed again as {label!r}",
                    "details": {
                        "source": run.source_key, "path": stored_path, "ingest_id": run.ingest_id,
                        "was": {"label": previous.label, "outcome": previous.outcome, "reason": previous.reason},
                        "now": {"label": label, "outcome": outcome, "reason": reason},
                    },
                    "at": utcnow(),
                },
            )
        )  # fmt: skip
    if previous is not None and previous.quarantine_path is not None and previous.quarantine_path != quarantine_path:
        _unquarantine(settings.home, previous.quarantine_path)  # its reason no longer holds
    return Outcome(outcome, reason, detail, label, quarantine_path)


def _label_came_from_this_file_alone(
    previous: Outcome | None, stored_label: str, sha: str, relpath: str, run: _Run
) -> bool:
    """Whether the image's stored label was given by this file (its earlier decision stored it) and by no other
    file still filed under that label: then a new label for the file is a correction, not a disagreement."""
    if previous is None or previous.outcome != "stored" or previous.label != stored_label:
        return False
    _flush(run.engine, run.pending)  # this run's own filings of the same bytes count too
    with session_scope(run.engine) as session:
        others = session.scalar(
            select(IngestFile.id)
            .where(
                IngestFile.sha256 == sha,
                IngestFile.label == stored_label,
                IngestFile.outcome.in_(("stored", "duplicate")),
                (IngestFile.source_key != run.source_key) | (IngestFile.relpath != relpath),
            )
            .limit(1)
        )
    return others is None


def _flush(engine: Engine, pending: list[tuple[str, dict[str, Any]]]) -> None:
    """Write the queued rows in one transaction (the raw files they name are already on disk)."""
    if not pending:
        return
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for kind, row in pending:
        by_kind[kind].append(row)
    images_table, conflicts_table, files_table, audit_table, masks_table = (
        cast(Table, model.__table__) for model in (Image, LabelConflict, IngestFile, AuditEntry, Mask)
    )
    with engine.begin() as connection:  # Core executemany: the ORM's bulk path cost a third of ingest's own time
        if by_kind["image"]:
            connection.execute(insert(images_table), by_kind["image"])
        if by_kind["mask"]:
            connection.execute(insert(masks_table), by_kind["mask"])
        for relabel in by_kind["relabel"]:
            connection.execute(
                update(images_table).where(images_table.c.sha256 == relabel["sha256"]).values(label=relabel["label"])
            )
        if by_kind["conflict"]:
            connection.execute(insert(conflicts_table), by_kind["conflict"])
            connection.execute(
                update(images_table)
                .where(images_table.c.sha256.in_({r["sha256"] for r in by_kind["conflict"]}))
                .values(conflict=True)
            )
        if by_kind["file"]:
            connection.execute(insert(files_table), by_kind["file"])
        for row in by_kind["file_update"]:
            connection.execute(
                update(files_table)
                .where(
                    files_table.c.source_key == row["source_key"],
                    files_table.c.relpath == row["relpath"],
                    files_table.c.sha256 == row["sha256"],
                )
                .values(row)
            )
        for withdrawn in by_kind["conflict_withdrawn"]:
            _withdraw_conflict(connection, withdrawn["sha256"], withdrawn["label"])
        if by_kind["audit"]:
            connection.execute(insert(audit_table), by_kind["audit"])
    pending.clear()


def _withdraw_conflict(connection: Connection, sha: str, label: str) -> None:
    """A file that disagreed with the stored label was filed again under another: the conflict it raised is
    resolved when no file still disagrees that way, and the image returns to the data when none is left open."""
    files, conflicts, images = (cast(Table, model.__table__) for model in (IngestFile, LabelConflict, Image))
    still_filed = connection.scalar(
        select(files.c.id).where(files.c.sha256 == sha, files.c.label == label, files.c.outcome == "conflict").limit(1)
    )
    if still_filed is not None:
        return
    connection.execute(
        update(conflicts).where(conflicts.c.sha256 == sha, conflicts.c.label == label).values(resolved=True)
    )
    still_open = connection.scalar(
        select(conflicts.c.id).where(conflicts.c.sha256 == sha, conflicts.c.resolved.is_(False)).limit(1)
    )
    if still_open is None:
        connection.execute(update(images).where(images.c.sha256 == sha).values(conflict=False))


def _write_raw(storage: Storage, relative: str, data: bytes) -> None:
    """Copy ``data`` into the raw store, unless a killed run already left the same bytes in a local one (an object
    store is sent the bytes again: asking first would cost every new image a request)."""
    if storage.local:
        try:
            if storage.path(relative).stat().st_size == len(data):
                return
        except FileNotFoundError:
            pass
    storage.write_bytes(relative, data, private=True)


def _copy_raw(context: _PrepareContext, copies: _RawCopies | None, relative: str, data: bytes) -> None:
    if copies is None:
        _write_raw(context.storage, relative, data)
    else:
        copies.add(relative, data)


class _RawCopies:
    """Copies into the raw store, held until :meth:`send` (or until they pass ``limit`` bytes) and sent together:
    an object store takes them concurrently, so a chunk of images costs a few round trips, not one per image."""

    def __init__(self, storage: Storage, limit: int = 64 << 20) -> None:
        self.storage = storage
        self.limit = limit
        self.held: dict[str, bytes] = {}
        self.size = 0

    def add(self, relative: str, data: bytes) -> None:
        if self.storage.local:  # a local folder gains nothing from holding them
            _write_raw(self.storage, relative, data)
            return
        self.held[relative] = data
        self.size += len(data)
        if self.size >= self.limit:
            self.send()

    def send(self) -> None:
        if self.held:
            self.storage.write_many(self.held, private=True)
        self.held, self.size = {}, 0


def _quarantine(
    home: Path,
    item: SourceFile,
    stored_path: str,
    sha: str,
    data: bytes | None,
    reason: str,
    detail: str,
    source_key: str,
) -> str:
    """Copy the refused file to ``quarantine/`` (unless it is too large to copy) with a ``.reason.json`` beside it;
    both named after the path as stored (a salted hash, unless ``ingest.keep_paths``)."""
    name = posixpath.basename(stored_path).replace("\x00", "") or "file"
    name = "".join(ch if ch.isprintable() and ch not in "\\/" else "_" for ch in name)[-120:]
    relative = f"quarantine/{sha.replace(':', '_')[:20]}-{name}"
    if data is not None:
        atomic_write(home / relative, data, mode=PRIVATE)
    note = {
        "source": source_key,
        "path": stored_path,
        "label": item.label,
        "sha256": sha,
        "reason": reason,
        "detail": detail,
        "copied": data is not None,
    }
    note_bytes = json.dumps(note, indent=2, ensure_ascii=False).encode()
    atomic_write(home / f"{relative}.reason.json", note_bytes, mode=PRIVATE)  # it names the patient's file
    return relative


def _unquarantine(home: Path, relative: str) -> None:
    """Remove a quarantined copy and its note (the file's new decision replaced them)."""
    for path in (home / relative, home / f"{relative}.reason.json"):
        path.unlink(missing_ok=True)


def _assign_pending_splits(session: Session, settings: Settings) -> None:
    """Give every image still without a split its split (this run's images, and any a killed run left)."""
    rows = session.execute(
        select(Image.sha256, Image.label, Image.phash, Image.given_split, Image.split, Image.group_key)
    ).all()
    candidates = [Candidate(r.sha256, r.label, r.phash, r.given_split, r.group_key) for r in rows if r.split is None]
    if not candidates:
        return
    assigned = [Assigned(r.sha256, r.label, r.phash, r.split, r.group_key) for r in rows if r.split is not None]
    splits = assign_splits(candidates, assigned, settings.ingest.test_fraction, settings.ingest.near_duplicate_bits)
    by_split: dict[str, list[str]] = defaultdict(list)
    for sha, split in splits.items():
        by_split[split].append(sha)
    for split, shas in by_split.items():
        for start in range(0, len(shas), 500):
            session.execute(update(Image).where(Image.sha256.in_(shas[start : start + 500])).values(split=split))
