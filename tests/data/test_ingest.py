"""Ingest loses nothing: every input ends stored, duplicate, conflict or quarantined, and the counts add up."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.versions import dataset_members, list_versions
from conveyor.errors import ConveyorError
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import Image, IngestFile, LabelConflict
from conveyor.workspace import workspace_lock
from tests.helpers import (
    dicom_without_bits_allocated,
    encode,
    gradient,
    pattern,
    png_bytes,
    png_claiming_size,
    pydicom_file,
    write,
)

REAL_SET = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_mri_yes_no"

EVERY_REASON = {
    "zero_bytes": 1,
    "not_an_image": 1,
    "unsupported_format": 1,
    "truncated": 1,
    "corrupt": 1,
    "too_small": 1,
    "blank": 1,
    "too_many_pixels": 1,
    "too_large": 1,
    "dicom_no_pixels": 1,
    "dicom_unsupported_syntax": 1,
    "no_label": 1,
}


def build_bad_corpus(root: Path) -> Path:
    """One file of each kind of bad input, valid files with awkward names, a duplicate and a label conflict."""
    write(root / "no" / "scan with spaces.png", png_bytes(seed=1))
    write(root / "yes" / "ünïcødé 脳 スキャン.png", png_bytes(seed=2))
    write(root / "no" / "..dots..png", png_bytes(seed=3))
    write(root / "no" / "photo.JPG", encode(gradient(80, 60, seed=4), "JPEG"))
    write(root / "no" / "ct.dcm", pydicom_file("CT_small.dcm"))
    write(root / "no" / "MR_without_extension", pydicom_file("MR_small.dcm"))
    write(root / "no" / "copy of scan.png", png_bytes(seed=1))  # stored first (sorted), then the other is a duplicate
    write(root / "yes" / "same bytes, other label.png", png_bytes(seed=1))  # label conflict
    write(root / "yes" / "empty.png", b"")
    write(root / "yes" / "notes.png", b"these are notes, not pixels\n")
    write(root / "yes" / "animation.gif", encode(gradient(seed=5), "GIF"))
    write(root / "yes" / "cut.jpg", encode(gradient(128, 128, seed=6), "JPEG")[:1500])
    write(root / "yes" / "garbage.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    write(root / "yes" / "tiny.png", png_bytes(16, 16))
    write(root / "yes" / "blank.png", encode(gradient(seed=7) * 0))
    write(root / "yes" / "bomb.png", png_claiming_size(40_000, 40_000))
    write(root / "yes" / "huge.tif", b"II*\x00" + os.urandom(2_100_000))
    write(root / "no" / "plan.dcm", pydicom_file("rtplan.dcm"))
    write(root / "no" / "jpeg-ls.dcm", pydicom_file("MR_small_jpeg_ls_lossless.dcm"))
    write(root / "stray.png", png_bytes(seed=8))
    return root


def comparable(summary_dict: dict[str, object]) -> dict[str, object]:
    """A summary without the fields that say which run decided what (and the source key, salted per workspace)."""
    return {k: v for k, v in summary_dict.items() if k not in ("ingest_id", "new", "already_ingested", "source_key")}


def test_bad_corpus_every_file_ends_in_exactly_one_place(tmp_path: Path, db_settings: Settings) -> None:
    summary = ingest(build_bad_corpus(tmp_path / "src"), db_settings)
    assert (summary.seen, summary.stored, summary.duplicates, summary.conflicts, summary.quarantined) == (
        20,
        6,
        1,
        1,
        12,
    )
    assert summary.seen == summary.stored + summary.duplicates + summary.conflicts + summary.quarantined
    assert summary.by_reason == EVERY_REASON
    assert summary.by_class == {
        "no": {"seen": 8, "stored": 5, "duplicates": 1, "conflicts": 0, "quarantined": 2},
        "yes": {"seen": 11, "stored": 1, "duplicates": 0, "conflicts": 1, "quarantined": 9},
        "(no label)": {"seen": 1, "stored": 0, "duplicates": 0, "conflicts": 0, "quarantined": 1},
    }
    with session_scope(get_engine(db_settings.resolved_db_url)) as session:
        assert session.scalar(select(func.count()).select_from(IngestFile)) == 20
        assert session.scalar(select(func.count()).select_from(Image)) == 6


def test_each_rejection_names_the_file_and_what_is_wrong(tmp_path: Path, settings: Settings) -> None:
    summary = ingest(build_bad_corpus(tmp_path / "src"), settings)
    rejected = {row["path"]: (row["reason"], row["detail"]) for row in summary.rejected}
    assert rejected["yes/tiny.png"] == ("too_small", "16x16 is below the minimum side of 32 pixels")
    assert rejected["yes/bomb.png"] == (
        "too_many_pixels",
        "1,600,000,000 pixels exceeds the limit of 1,000,000 (refused before decoding)",
    )
    assert rejected["yes/huge.tif"] == ("too_large", "2,100,004 bytes exceeds the limit of 2,000,000")


def test_quarantined_file_is_copied_with_its_reason_beside_it(tmp_path: Path, settings: Settings) -> None:
    settings.ingest.keep_paths = True  # the notes are looked up by path
    ingest(build_bad_corpus(tmp_path / "src"), settings)
    notes = {json.loads(p.read_text())["path"]: p for p in (settings.home / "quarantine").glob("*.reason.json")}
    assert len(notes) == 12
    note = json.loads(notes["yes/cut.jpg"].read_text())
    assert (note["reason"], note["copied"]) == ("truncated", True)
    copy = notes["yes/cut.jpg"].with_name(notes["yes/cut.jpg"].name.removesuffix(".reason.json"))
    assert copy.read_bytes() == (tmp_path / "src" / "yes" / "cut.jpg").read_bytes()
    assert json.loads(notes["yes/huge.tif"].read_text())["copied"] is False  # too large to copy


def test_stored_files_are_named_by_content_and_format(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "a" / "looks like.jpg", png_bytes(seed=1))  # a PNG behind a .jpg name
    ingest(tmp_path / "src", settings)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        image = session.scalars(select(Image)).one()
    assert image.format == "png"
    assert image.raw_path == f"raw/{image.sha256[:2]}/{image.sha256}.png"
    assert (settings.home / image.raw_path).read_bytes() == png_bytes(seed=1)


def test_label_conflict_keeps_the_image_out_of_the_dataset(tmp_path: Path, settings: Settings) -> None:
    settings.ingest.keep_paths = True
    write(tmp_path / "src" / "yes" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "yes" / "b.png", png_bytes(seed=2))
    write(tmp_path / "src" / "no" / "a again.png", png_bytes(seed=1))
    summary = ingest(tmp_path / "src", settings)
    engine = get_engine(settings.resolved_db_url)
    with session_scope(engine) as session:
        conflict = session.scalars(select(LabelConflict)).one()
    assert (conflict.label, conflict.relpath) == ("yes", "yes/a.png")  # "no/a again.png" came first
    members = dataset_members(engine, summary.dataset_version)
    assert [label for _, label, _ in members] == ["yes"]


def test_running_the_same_ingest_again_changes_nothing(tmp_path: Path, db_settings: Settings) -> None:
    source = build_bad_corpus(tmp_path / "src")
    first = ingest(source, db_settings)
    again = ingest(source, db_settings)
    assert (again.new, again.already_ingested, again.nothing_new) == (0, 20, True)
    assert comparable(again.to_dict()) == comparable(first.to_dict())
    assert len(list_versions(get_engine(db_settings.resolved_db_url))) == 1


def test_interrupted_ingest_resumes_without_loss_or_double_counting(tmp_path: Path) -> None:
    source = build_bad_corpus(tmp_path / "src")
    clean = ingest(source, Settings(home=tmp_path / "clean", ingest={"max_file_bytes": 2_000_000, "max_pixels": 10**6}))  # type: ignore[arg-type]
    resumed_settings = Settings(
        home=tmp_path / "resumed",
        ingest={"max_file_bytes": 2_000_000, "max_pixels": 10**6, "commit_every": 3},  # type: ignore[arg-type]
    )
    seen: list[str] = []

    def crash_after_seven(item: object) -> None:
        seen.append(str(item))
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(source, resumed_settings, on_file=crash_after_seven)
    resumed = ingest(source, resumed_settings)
    assert 0 < resumed.already_ingested < 20
    assert comparable(resumed.to_dict()) == comparable(clean.to_dict())
    with session_scope(get_engine(resumed_settings.resolved_db_url)) as session:
        assert session.scalar(select(func.count()).select_from(IngestFile)) == 20
        assert session.scalar(select(func.count()).select_from(Image).where(Image.split.is_(None))) == 0


def test_killed_ingest_process_resumes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for i in range(300):
        write(source / ("a" if i % 2 else "b") / f"{i:03d}.png", png_bytes(96, 96, seed=i))
    home = tmp_path / "ws"
    env = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_INGEST__COMMIT_EVERY": "5"}
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "ingest", str(source), "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    rows = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(home / "conveyor.db", timeout=1) as db:
                rows = db.execute("select count(*) from ingest_files").fetchone()[0]
        except sqlite3.Error:
            rows = 0
        if rows >= 20:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=30)
    summary = ingest(source, Settings(home=home))
    assert (summary.seen, summary.stored, summary.quarantined) == (300, 300, 0)
    with sqlite3.connect(home / "conveyor.db") as db:
        assert db.execute("select count(*) from ingest_files").fetchone()[0] == 300
        assert db.execute("select count(*) from images where split is null").fetchone()[0] == 0


def test_later_data_never_moves_an_assigned_split(tmp_path: Path, settings: Settings) -> None:
    for i in range(20):
        write(tmp_path / "first" / ("a" if i % 2 else "b") / f"{i}.png", png_bytes(seed=i))
    first = ingest(tmp_path / "first", settings)
    engine = get_engine(settings.resolved_db_url)
    before = {sha: split for sha, _, split in dataset_members(engine, first.dataset_version)}
    for i in range(20, 50):
        write(tmp_path / "second" / ("a" if i % 2 else "b") / f"{i}.png", png_bytes(seed=i))
    second = ingest(tmp_path / "second", settings)
    after = {sha: split for sha, _, split in dataset_members(engine, second.dataset_version)}
    assert second.dataset_version != first.dataset_version
    assert {sha: after[sha] for sha in before} == before
    assert len(after) == 50


def test_a_reencoded_copy_of_a_test_image_goes_to_test(tmp_path: Path, settings: Settings) -> None:
    settings.ingest.keep_paths = True
    for i in range(10):
        write(tmp_path / "first" / "a" / f"{i}.png", encode(pattern(96, 96, seed=i)))
    ingest(tmp_path / "first", settings)
    engine = get_engine(settings.resolved_db_url)
    with session_scope(engine) as session:
        test_sha = session.scalars(select(Image.sha256).where(Image.split == "test")).first()
        test_file = session.scalar(select(IngestFile.relpath).where(IngestFile.sha256 == test_sha))
    index = int(Path(test_file).stem)
    copy = encode(pattern(96, 96, seed=index), "JPEG", quality=80)  # other bytes, same picture
    write(tmp_path / "second" / "train" / "a" / "copy.jpg", copy)
    ingest(tmp_path / "second", settings)
    with session_scope(engine) as session:
        split = session.scalar(select(Image.split).where(Image.format == "jpeg"))
    assert split == "test"


def test_given_split_folders_are_honoured(tmp_path: Path, settings: Settings) -> None:
    for i in range(6):
        write(tmp_path / "src" / "Training" / "a" / f"{i}.png", png_bytes(seed=i))
    for i in range(6, 8):
        write(tmp_path / "src" / "Testing" / "a" / f"{i}.png", png_bytes(seed=i))
    summary = ingest(tmp_path / "src", settings)
    members = dataset_members(get_engine(settings.resolved_db_url), summary.dataset_version)
    assert sorted(split for _, _, split in members) == ["test"] * 2 + ["train"] * 6


def test_zip_source_with_an_unsafe_member(tmp_path: Path, settings: Settings) -> None:
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/yes/a.png", png_bytes(seed=1))
        zf.writestr("set/no/b.png", png_bytes(seed=2))
        zf.writestr("set/no/../../../outside.png", png_bytes(seed=3))
    summary = ingest(archive, settings)
    assert (summary.seen, summary.stored, summary.quarantined, summary.by_reason) == (3, 2, 1, {"unsafe_path": 1})
    assert not (tmp_path.parent / "outside.png").exists()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_zip_holding_one_name_twice_gives_each_entry_its_row(tmp_path: Path, settings: Settings) -> None:
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("yes/a.png", png_bytes(seed=1))
        zf.writestr("yes/a.png", png_bytes(seed=1))  # the same bytes again
        zf.writestr("yes/a.png", png_bytes(seed=2))  # other bytes under the same name
        zf.writestr("no/b.png", png_bytes(seed=3))
    summary = ingest(archive, settings)
    assert (summary.seen, summary.stored, summary.duplicates) == (4, 3, 1)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert session.scalar(select(func.count()).select_from(IngestFile)) == summary.seen
    again = ingest(archive, settings)
    assert (again.new, again.already_ingested) == (0, 4)


def test_a_second_writer_is_refused(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "a" / "x.png", png_bytes())
    with workspace_lock(settings.home), pytest.raises(ConveyorError, match="another conveyor command is writing"):
        ingest(tmp_path / "src", settings)


@pytest.mark.skipif(not REAL_SET.is_dir(), reason=f"the real brain-MRI set is not at {REAL_SET}")
def test_real_brain_mri_set(settings: Settings) -> None:
    summary = ingest(REAL_SET, Settings(home=settings.home, ingest={"keep_paths": True}))  # type: ignore[arg-type]
    assert (summary.seen, summary.stored, summary.duplicates, summary.conflicts, summary.quarantined) == (
        253,
        228,
        25,
        0,
        0,
    )
    misnamed = {"No15.jpg", "No17.jpg", "No18.jpg", "no 96.jpg", "no 98.jpg", "no.jpg"}
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        rows = session.execute(
            select(IngestFile.relpath, Image.format, Image.raw_path).join(Image, Image.sha256 == IngestFile.sha256)
        ).all()
    formats = {Path(relpath).name: (fmt, raw) for relpath, fmt, raw in rows if Path(relpath).name in misnamed}
    assert len(formats) == 6  # one of them is a duplicate: it points at the same stored PNG
    assert all(fmt == "png" and raw.endswith(".png") for fmt, raw in formats.values())


def test_a_dicom_without_bits_allocated_is_quarantined_as_corrupt(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "no" / "bad.dcm", dicom_without_bits_allocated())
    write(tmp_path / "src" / "no" / "good.png", png_bytes(seed=1))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.quarantined) == (2, 1, 1)
    assert [(r["path"], r["reason"]) for r in summary.rejected] == [("no/bad.dcm", "corrupt")]


def test_a_link_out_of_the_source_is_refused_and_its_target_never_copied(tmp_path: Path, settings: Settings) -> None:
    secret = write(tmp_path / "outside" / "shadow", b"root:$6$hash:19000:0:99999:7:::\n")
    write(tmp_path / "src" / "a" / "good.png", png_bytes(seed=1))
    (tmp_path / "src" / "a" / "scan.png").symlink_to(secret)
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.quarantined) == (2, 1, 1)
    [row] = summary.rejected
    assert (row["path"], row["reason"]) == ("a/scan.png", "unsafe_path")
    assert row["detail"] == f"a symbolic link to {secret}, outside the source folder: links are not followed out"
    copies = [p for p in (settings.home / "quarantine").iterdir() if not p.name.endswith(".reason.json")]
    assert copies == []
    assert all(b"root:" not in p.read_bytes() for p in (settings.home / "quarantine").iterdir())


def test_a_link_to_a_file_inside_the_source_is_read(tmp_path: Path, settings: Settings) -> None:
    target = write(tmp_path / "src" / "a" / "x.png", png_bytes(seed=1))
    (tmp_path / "src" / "b").mkdir()
    (tmp_path / "src" / "b" / "y.png").symlink_to(target)
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.conflicts) == (2, 1, 1)


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda p: p.symlink_to(p.parent / "missing.png"), "a symbolic link whose target does not exist"),
        (lambda p: p.symlink_to(p), "a symbolic link whose target does not exist (or a loop of links)"),
        (lambda p: p.symlink_to(p.parent.parent), "a symbolic link to the folder"),
        (lambda p: os.mkfifo(p), "not a regular file (a FIFO, socket or device): nothing to read"),
    ],
    ids=["broken link", "link loop", "link to a folder", "fifo"],
)
def test_what_is_not_a_regular_file_is_counted_and_quarantined(
    tmp_path: Path, settings: Settings, make: object, detail: str
) -> None:
    write(tmp_path / "src" / "a" / "good.png", png_bytes(seed=1))
    make(tmp_path / "src" / "a" / "odd.png")  # type: ignore[operator]
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.quarantined) == (2, 1, 1)
    [row] = summary.rejected
    assert (row["path"], row["reason"]) == ("a/odd.png", "not_a_file")
    assert row["detail"].startswith(detail)


def test_copies_of_patient_images_are_readable_by_their_owner_only(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "a" / "good.png", png_bytes(seed=1))
    write(tmp_path / "src" / "a" / "empty.png", b"")
    ingest(tmp_path / "src", settings)
    copies = [*(settings.home / "raw").rglob("*.png"), *(settings.home / "quarantine").iterdir()]
    assert len(copies) == 3  # the image, the refused file and its reason note
    assert {oct(p.stat().st_mode & 0o777) for p in copies} == {"0o600"}


def _zip_with(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_zip_bomb_is_refused_unread_with_a_note_and_no_copy(tmp_path: Path, settings: Settings) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("yes/a.png", png_bytes(seed=1))
        with zf.open("yes/bomb.png", "w") as member:  # 64 MiB of zeros: ~64 KB compressed
            for _ in range(64):
                member.write(bytes(1 << 20))
    assert archive.stat().st_size < 200_000
    summary = ingest(archive, settings)
    assert (summary.seen, summary.stored, summary.quarantined) == (2, 1, 1)
    [row] = summary.rejected
    assert (row["path"], row["reason"]) == ("yes/bomb.png", "suspicious_archive")
    assert "would inflate 1,0" in row["detail"] and "refused unread as a likely zip bomb" in row["detail"]
    quarantined = list((settings.home / "quarantine").iterdir())
    assert [p.name.endswith(".reason.json") for p in quarantined] == [True]
    assert quarantined[0].stat().st_size < 2000


def test_a_member_with_a_bad_checksum_is_quarantined_as_corrupt(tmp_path: Path, settings: Settings) -> None:
    archive = _zip_with(tmp_path / "set.zip", {"yes/a.png": png_bytes(seed=1), "yes/b.png": png_bytes(seed=2)}, 0)
    data = bytearray(archive.read_bytes())
    spot = data.find(png_bytes(seed=2)[100:120])
    data[spot] ^= 0xFF  # stored (uncompressed): flip one byte of b.png's pixels, its CRC no longer matches
    archive.write_bytes(bytes(data))
    summary = ingest(archive, settings)
    assert (summary.seen, summary.stored, summary.quarantined) == (2, 1, 1)
    [row] = summary.rejected
    assert (row["path"], row["reason"]) == ("yes/b.png", "corrupt")
    assert row["detail"] == "zip member 'yes/b.png' cannot be read: Bad CRC-32 for file 'yes/b.png'"


@pytest.mark.parametrize(
    ("flag", "method", "detail"),
    [
        (0x1, zipfile.ZIP_STORED, "zip member 'yes/b.png' is encrypted; conveyor takes no passwords"),
        (0x0, 9, "zip member 'yes/b.png' is compressed with Deflate64, which Python cannot read"),
    ],
    ids=["encrypted", "deflate64"],
)
def test_members_python_cannot_read_are_unsupported(
    tmp_path: Path, settings: Settings, flag: int, method: int, detail: str
) -> None:
    archive = _zip_with(tmp_path / "set.zip", {"yes/a.png": png_bytes(seed=1), "yes/b.png": png_bytes(seed=2)}, 0)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("yes/b.png")
        local, central = info.header_offset, None
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last central-directory entry is b.png's
    for offset, flag_at, method_at in ((local, 6, 8), (central, 8, 10)):
        data[offset + flag_at : offset + flag_at + 2] = flag.to_bytes(2, "little")
        data[offset + method_at : offset + method_at + 2] = method.to_bytes(2, "little")
    archive.write_bytes(bytes(data))
    summary = ingest(archive, settings)
    assert (summary.seen, summary.stored, summary.quarantined) == (2, 1, 1)
    assert [(r["path"], r["reason"], r["detail"]) for r in summary.rejected] == [
        ("yes/b.png", "unsupported_format", detail)
    ]


def test_a_partial_copy_left_by_a_killed_run_is_removed(tmp_path: Path, settings: Settings) -> None:
    left = write(settings.home / "raw" / "ab" / ".abcdef.png.4242.tmp", b"half a file")
    write(tmp_path / "src" / "a" / "x.png", png_bytes(seed=1))
    summary = ingest(tmp_path / "src", settings)
    assert summary.stored == 1
    assert not left.exists()
    assert [p.name for p in (settings.home / "raw").rglob("*.tmp")] == []


def test_labels_differing_only_in_case_are_warned_about(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "yes" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "Yes" / "b.png", png_bytes(seed=2))
    write(tmp_path / "src" / "no" / "c.png", png_bytes(seed=3))
    summary = ingest(tmp_path / "src", settings)
    assert summary.warnings == [
        "labels 'Yes' and 'yes' differ only in case or spacing: they are 2 classes; rename the folders or CSV labels "
        "to one spelling (ingest.label_pattern can refuse the others)"
    ]


def test_a_new_spelling_of_a_stored_label_is_warned_about(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "first" / "tumour" / "a.png", png_bytes(seed=1))
    ingest(tmp_path / "first", settings)
    write(tmp_path / "later" / "Tumour" / "b.png", png_bytes(seed=2))
    assert "'Tumour' and 'tumour'" in ingest(tmp_path / "later", settings).warnings[0]


def test_a_label_with_markup_is_warned_about(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "images" / "a.png", png_bytes(seed=1))
    labels = write(tmp_path / "labels.csv", b'path,label\na.png,"<b>tumour</b>"\n')
    summary = ingest(tmp_path / "images", settings, labels_csv=labels)
    assert summary.warnings == ["label '<b>tumour</b>' holds markup, quote, path or control characters"]


def test_clean_labels_give_no_warning(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "no_tumour" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "tumour" / "b.png", png_bytes(seed=2))
    assert ingest(tmp_path / "src", settings).warnings == []


def test_a_label_pattern_quarantines_the_labels_it_does_not_match(tmp_path: Path, settings: Settings) -> None:
    settings.ingest.label_pattern = "[a-z_]+"
    write(tmp_path / "src" / "yes" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "Yes" / "b.png", png_bytes(seed=2))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.stored, summary.quarantined) == (1, 1)
    assert [(r["reason"], r["detail"]) for r in summary.rejected] == [
        ("bad_label", "label 'Yes' does not match ingest.label_pattern '[a-z_]+'")
    ]


def test_a_label_pattern_that_is_no_regular_expression_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ingest.label_pattern '\[a-' is not a regular expression"):
        Settings(ingest={"label_pattern": "[a-"})  # type: ignore[arg-type]
