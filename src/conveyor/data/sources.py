"""Enumerate the files of an ingest source with their labels: a class-per-folder tree, a tree with train/test
folders, a labels CSV, or a .zip of any of these.

Nothing is extracted to disk: zip members are read into memory by name, so a member called ``../../x`` can never
write outside the workspace; it is reported as ``unsafe_path`` instead.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from conveyor.data.subgroups import identifying_column
from conveyor.errors import InvalidImageError, SourceError

__all__ = ["SPLIT_FOLDERS", "Source", "SourceFile", "open_source"]

#: Folder names (any capitalisation) that mean a given split rather than a class.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
}
LABELS_CSV_NAME = "labels.csv"


@dataclass(frozen=True)
class SourceFile:
    """One input file. ``problem`` is set when the path alone already says it cannot be used."""

    relpath: str
    label: str | None
    given_split: str | None
    size: int
    read: Callable[[], bytes] = field(repr=False, compare=False)
    problem: tuple[str, str] | None = None
    #: A stable stand-in for the sha256 when the content must not be read (a file over the size limit).
    stand_in_id: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    #: The file on disk, when it is one (not a zip member): worker processes read it themselves.
    local_path: Path | None = field(default=None, repr=False, compare=False)
    #: The patient, clip or slide it belongs to, from the labels CSV's ``group`` column (raw; stored hashed).
    group: str | None = None
    #: Its segmentation mask (``images/<name>`` beside ``masks/<name>``, or ``<name>_mask.<ext>`` beside it).
    mask: SourceFile | None = field(default=None, repr=False, compare=False)
    #: The labels CSV's extra columns of its row (beyond path, label, split, group; identifying ones dropped), raw.
    extra: dict[str, str] | None = None


@dataclass
class Source:
    """An opened source: its stable key (kind and absolute path), its files sorted by path, CSV rows whose file
    does not exist, and the labels CSV's columns dropped unread because their names say they identify someone."""

    key: str
    files: list[SourceFile]
    missing: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    _closer: Callable[[], None] | None = None


def open_source(path: Path, labels_csv: Path | None = None) -> Source:
    """Open ``path`` (a folder or a .zip) and list its files with labels.

    Labels come from ``labels_csv`` (columns ``path,label``, optional ``split`` and ``group``; paths relative to the
    source) when given, else from a ``labels.csv`` at the source's top, else from the folder structure. Any other
    column of the CSV is a subgroup attribute (:mod:`conveyor.data.subgroups`), unless its name says it identifies
    someone (``patient_id``, ``name``, ``birth_date``): that one is dropped and listed in ``dropped_columns``.

    Raises:
        SourceError: the path does not exist, is not a folder or zip, or the CSV is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        entries = list(_walk_folder(path))
        key = f"dir:{path.resolve()}"
        closer = None
        top_csv = path / LABELS_CSV_NAME
        csv_text = _read_csv(labels_csv) if labels_csv else _read_csv(top_csv) if top_csv.is_file() else None
        csv_name = str(labels_csv) if labels_csv else str(top_csv)
        csv_path = labels_csv if labels_csv is not None else top_csv
        if csv_path.is_file() and csv_path.resolve().is_relative_to(path.resolve()):  # the labels are no input
            inside = csv_path.resolve().relative_to(path.resolve()).as_posix()
            entries = [e for e in entries if e[0] != inside]
    elif zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"{path}: cannot open the zip archive: {exc}") from exc
        entries = _zip_entries(archive)
        key = f"zip:{path.resolve()}"
        closer = archive.close
        csv_name = str(labels_csv) if labels_csv else f"{path}!{LABELS_CSV_NAME}"
        csv_text = _read_csv(labels_csv) if labels_csv else None
        if labels_csv is None:
            inner = [e for e in entries if e[0] == LABELS_CSV_NAME]
            if inner:
                csv_text = _decode_csv(inner[0][2](), csv_name)
                entries = [e for e in entries if e[0] != LABELS_CSV_NAME]
    else:
        raise SourceError(f"{path}: not a folder or a .zip archive")

    dropped: list[str] = []
    if csv_text is not None:
        labels, dropped = _parse_labels_csv(csv_text, csv_name)
        files = [_label_from_csv(entry, labels) for entry in entries]
        present = {e[0] for e in entries}
        missing = sorted(p for p in labels if p not in present)
    else:
        files = [_label_from_folders(entry) for entry in entries]
        missing = []
    files = _pair_masks(files)
    files.sort(key=lambda f: f.relpath)
    source = Source(key=key, files=files, missing=missing, dropped_columns=dropped)
    source._closer = closer
    return source


# An entry is (relpath, size, reader, stand_in_id, problem, local path).
_Entry = tuple[str, int, Callable[[], bytes], Callable[[], str] | None, tuple[str, str] | None, Path | None]


def _walk_folder(root: Path) -> Iterator[_Entry]:
    """Every entry under ``root`` but its folders, sorted by path.

    Regular files are read, and so are links to regular files inside ``root``. Anything else is listed with the
    reason it cannot be used and is never read, so it is counted and quarantined (with nothing copied): a link out of
    the source (``unsafe_path``), a broken or looping link, a link to a folder, a FIFO, socket or device
    (``not_a_file``), a folder that cannot be listed (``unreadable``). Links to folders are never followed: a tree
    is walked once, whatever its links.
    """
    top = root.resolve()
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:  # permissions, a path too long for the filesystem
            yield _unusable(prefix.rstrip("/") or ".", ("unreadable", f"the folder cannot be listed: {exc.strerror}"))
            continue
        for entry in reversed(entries):
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{prefix}{entry.name}/"))
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue
            relpath = f"{prefix}{entry.name}"
            problem = _not_a_source_file(entry, top)
            if problem is not None:
                yield _unusable(relpath, problem)
                continue
            stat = entry.stat()
            full = Path(entry.path)
            yield (
                relpath,
                stat.st_size,
                full.read_bytes,
                partial(str, f"unhashed:{stat.st_size}:{stat.st_mtime_ns}"),
                None,
                full,
            )


def _not_a_source_file(entry: os.DirEntry[str], top: Path) -> tuple[str, str] | None:
    """Why ``entry`` (not a folder) cannot be read as an input file, or None when it can."""
    if entry.is_symlink():
        try:
            target = Path(entry.path).resolve(strict=True)
        except (OSError, RuntimeError):  # missing target, or a loop (RuntimeError before Python 3.13)
            return ("not_a_file", "a symbolic link whose target does not exist (or a loop of links)")
        if not target.is_relative_to(top):
            return (
                "unsafe_path",
                f"a symbolic link to {target}, outside the source folder: links are not followed out",
            )
        if target.is_dir():
            return ("not_a_file", f"a symbolic link to the folder {target}: links to folders are not followed")
    try:
        regular = entry.is_file()
    except OSError as exc:
        return ("unreadable", f"cannot be examined: {exc.strerror}")
    if not regular:
        return ("not_a_file", "not a regular file (a FIFO, socket or device): nothing to read")
    return None


def _nothing() -> bytes:
    return b""


def _unusable(relpath: str, problem: tuple[str, str]) -> _Entry:
    """An entry that is never read: its problem says why."""
    return (relpath, 0, _nothing, partial(str, f"unread:{relpath}"), problem, None)


def _zip_entries(archive: zipfile.ZipFile) -> list[_Entry]:
    infos = [i for i in archive.infolist() if not i.is_dir()]
    names = [i.filename for i in infos]
    # Many archives wrap everything in one folder (``dataset/yes/...``): look through it.
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("__MACOSX/")}
    prefix = ""
    if len(tops) == 1 and all("/" in n for n in names if not n.startswith("__MACOSX/")):
        candidate = next(iter(tops)) + "/"
        inner = [n[len(candidate) :] for n in names if n.startswith(candidate)]
        if all("/" in n for n in inner):  # the wrapper holds only folders: it is not a class folder
            prefix = candidate
    entries: list[_Entry] = []
    repeats: dict[str, int] = {}
    for info in infos:
        name = info.filename
        normal = posixpath.normpath(name.replace("\\", "/"))
        problem = _zip_member_problem(info, normal)
        unsafe = problem is not None and problem[0] == "unsafe_path"
        if not unsafe and prefix and normal.startswith(prefix):
            normal = normal[len(prefix) :]
        repeats[normal] = repeats.get(normal, 0) + 1
        if repeats[normal] > 1:  # a name the zip holds twice: each entry is an input of its own, with its own row
            normal = f"{normal}#{repeats[normal]}"
        entries.append(
            (
                name if unsafe else normal,
                info.file_size,
                partial(_read_member, archive, info) if problem is None else _nothing,
                partial(str, f"unhashed:{info.file_size}:{info.CRC:08x}"),
                problem,
                None,
            )
        )
    return entries


#: A member that inflates more than this many times (and to over a MiB) is refused unread: a zip bomb, not a scan.
#: Uncompressed DICOM or BMP with wide black margins deflates about 5-50x; a bomb, thousands of times.
MAX_COMPRESSION_RATIO = 200
_RATIO_FROM_BYTES = 1 << 20
_READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _zip_member_problem(info: zipfile.ZipInfo, normal: str) -> tuple[str, str] | None:
    """Why a zip member cannot be taken, judged from its header alone (it is then never read), or None."""
    name = info.filename
    if normal.startswith("../") or normal == ".." or normal.startswith("/") or ":" in normal.split("/", 1)[0]:
        return ("unsafe_path", f"zip member {name!r} points outside the archive")
    if info.flag_bits & 0x1:
        return ("unsupported_format", f"zip member {name!r} is encrypted; conveyor takes no passwords")
    if info.compress_type not in _READABLE_METHODS:
        method = "Deflate64" if info.compress_type == 9 else f"method {info.compress_type}"
        return ("unsupported_format", f"zip member {name!r} is compressed with {method}, which Python cannot read")
    if info.file_size > _RATIO_FROM_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return (
            "suspicious_archive",
            f"zip member {name!r} would inflate {ratio:,.0f}x ({info.compress_size:,} -> {info.file_size:,} bytes; "
            f"the limit is {MAX_COMPRESSION_RATIO}x): refused unread as a likely zip bomb",
        )
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes: at most its declared size (zipfile stops there and checks the CRC).

    Raises:
        InvalidImageError: ``corrupt``: a bad CRC, corrupt compressed data, a member cut short.
    """
    try:
        with archive.open(info) as member:
            return member.read()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise InvalidImageError("corrupt", f"zip member {info.filename!r} cannot be read: {exc}") from exc


MASK_FOLDERS = ("images", "masks")
"""Folder names of a segmentation layout (``images/<name>`` beside ``masks/<name>``): never a class."""

MASK_SUFFIX = "_mask"


def _mask_key(relpath: str) -> str | None:
    """The image a mask file belongs to (its path without extension), or None when the file is no mask."""
    parts = relpath.split("/")
    stem, _ = posixpath.splitext(parts[-1])
    if stem.lower().endswith(MASK_SUFFIX) and len(stem) > len(MASK_SUFFIX):
        return "/".join([*parts[:-1], stem[: -len(MASK_SUFFIX)]])
    for i, part in enumerate(parts[:-1]):
        if part.lower() == "masks":
            return "/".join([*parts[:i], "images", *parts[i + 1 : -1], stem])
    return None


def _pair_masks(files: list[SourceFile]) -> list[SourceFile]:
    """Each image with its mask; in a segmentation layout, an image without one gets the problem ``no_mask`` and a
    mask without an image ``orphan_mask``. A paired mask is part of its image's input, not an input of its own."""
    masks: dict[str, SourceFile] = {}
    images: list[SourceFile] = []
    out: list[SourceFile] = []
    for f in sorted(files, key=lambda f: f.relpath):  # of two masks of one image, the first by path is its mask
        key = _mask_key(f.relpath)
        if key is None:
            images.append(f)
        elif key in masks:
            detail = f"{f.relpath} is a second mask of {key} ({masks[key].relpath} is the one used)"
            out.append(replace(f, problem=f.problem or ("orphan_mask", detail)))
        else:
            masks[key] = f
    if not masks:
        return files
    layout_folders = {posixpath.dirname(key) for key in masks}
    paired: set[str] = set()
    for f in images:
        key = posixpath.splitext(f.relpath)[0]
        mask = masks.get(key)
        if mask is not None and mask.problem is not None and f.problem is None:  # an unsafe link, an unreadable file
            paired.add(mask.relpath)
            out.append(replace(f, problem=("bad_mask", f"its mask {mask.relpath}: {mask.problem[1]}")))
        elif mask is not None:
            paired.add(mask.relpath)
            out.append(replace(f, mask=mask))
        elif f.problem is None and posixpath.dirname(key) in layout_folders:
            out.append(replace(f, problem=("no_mask", f"{f.relpath} has no mask beside it (masks/ or _mask)")))
        else:
            out.append(f)
    for mask in masks.values():
        if mask.relpath not in paired:
            detail = f"{mask.relpath} is a mask without its image"
            out.append(replace(mask, problem=mask.problem or ("orphan_mask", detail)))
    return out


def _label_from_folders(entry: _Entry) -> SourceFile:
    relpath, size, read, stand_in, problem, local = entry
    parts = relpath.split("/")
    given_split = None
    if len(parts) > 1 and parts[0].lower() in SPLIT_FOLDERS:
        given_split = SPLIT_FOLDERS[parts[0].lower()]
        parts = parts[1:]
    label = parts[0].strip() if len(parts) > 1 and parts[0].lower() not in MASK_FOLDERS else None
    if problem is None and not label:
        problem = (
            "no_label",
            f"{relpath} is not inside a class folder: expected [train|test/]<label>/<file>",
        )
    return SourceFile(relpath, label or None, given_split, size, read, problem, stand_in, local)


def _read_csv(path: Path) -> str:
    """The labels CSV's text.

    Raises:
        SourceError: it does not exist, cannot be read, or is not UTF-8.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: no such labels file") from exc
    except OSError as exc:
        raise SourceError(f"{path}: the labels file cannot be read: {exc.strerror}") from exc
    return _decode_csv(data, str(path))


def _decode_csv(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{name}: the labels file is not UTF-8 (byte {exc.start} is 0x{data[exc.start]:02x}); save it as UTF-8"
        ) from exc


_CsvRow = tuple[str, str | None, str | None, dict[str, str]]  # label, split, group, extra columns
_CSV_COLUMNS = ("path", "label", "split", "group")


def _parse_labels_csv(text: str, name: str) -> tuple[dict[str, _CsvRow], list[str]]:
    """Each listed path's row, and the extra columns dropped because their names say they identify someone."""
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may hold line breaks
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "path" not in fields or "label" not in fields:
        raise SourceError(f"{name}: the header must name the columns 'path' and 'label', found {reader.fieldnames}")
    extra_columns = [f for f in fields if f and f not in _CSV_COLUMNS]
    dropped = [f for f in extra_columns if identifying_column(f)]
    kept = [f for f in extra_columns if f not in dropped]
    labels: dict[str, _CsvRow] = {}
    for row in reader:
        line_no = reader.line_num
        if None in row:  # csv.DictReader files the fields past the header's under None
            raise SourceError(
                f"{name}, line {line_no}: {len(fields) + len(row[None])} fields where the header has {len(fields)}"
            )
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        path, label, split = row.get("path", ""), row.get("label", ""), row.get("split", "") or None
        group = row.get("group", "") or None
        if not path or not label:
            raise SourceError(f"{name}, line {line_no}: both 'path' and 'label' must be filled, got {row}")
        if split is not None:
            if split.lower() not in SPLIT_FOLDERS:
                raise SourceError(f"{name}, line {line_no}: split {split!r} is not one of train, test")
            split = SPLIT_FOLDERS[split.lower()]
        path = posixpath.normpath(path.replace("\\", "/"))
        if path in labels and labels[path][0] != label:
            raise SourceError(f"{name}, line {line_no}: {path} is listed twice, as {labels[path][0]!r} and {label!r}")
        labels[path] = (label, split, group, {column: row[column] for column in kept if row.get(column)})
    return labels, dropped


def _label_from_csv(entry: _Entry, labels: dict[str, _CsvRow]) -> SourceFile:
    relpath, size, read, stand_in, problem, local = entry
    label, split, group, extra = labels.get(relpath, (None, None, None, {}))
    if problem is None and label is None:
        problem = ("no_label", f"{relpath} is not listed in the labels CSV")
    return SourceFile(relpath, label, split, size, read, problem, stand_in, local, group, extra=extra or None)
