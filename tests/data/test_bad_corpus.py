"""Every kind of bad input at once, as an attacker or a careless export would send it: each file ends in exactly
one place, each refusal with its own reason, and nothing crashes the run."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conveyor.config import Settings
from conveyor.data.decode import REASONS
from conveyor.data.ingest import ingest
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import IngestFile
from tests.data.test_ingest import EVERY_REASON, build_bad_corpus
from tests.helpers import png_bytes, pydicom_file, write


def _deep_folder(root: Path, data: bytes) -> None:
    """A file under a path of over 4,096 bytes (made step by step: no call may name the whole path)."""
    cwd = os.getcwd()
    root.mkdir(parents=True)
    os.chdir(root)
    try:
        for _ in range(22):
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
        Path("scan.png").write_bytes(data)
    finally:
        os.chdir(cwd)


def build_hostile_folder(root: Path) -> Path:
    build_bad_corpus(root)
    secret = write(root.parent / "outside" / "shadow", b"root:$6$hash:19000:0:99999:7:::\n")
    (root / "yes" / "shadow.png").symlink_to(secret)  # unsafe_path
    (root / "yes" / "broken.png").symlink_to(root / "yes" / "missing.png")  # not_a_file
    (root / "yes" / "loop.png").symlink_to(root / "yes" / "loop.png")  # not_a_file
    (root / "yes" / "folder link").symlink_to(root / "no")  # not_a_file
    os.mkfifo(root / "yes" / "pipe.png")  # not_a_file
    _deep_folder(root / "no" / "deep", png_bytes(seed=40))  # unreadable
    write(root / "Maybe!" / "x.png", png_bytes(seed=41))  # bad_label under the pattern below
    return root


def build_hostile_zip(path: Path) -> Path:
    """Good members, then one of each kind of bad member (flags and methods patched into the headers)."""
    stored, deflated = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
    members = [
        ("set/yes/a.png", png_bytes(seed=50), stored),
        ("set/no/b.png", png_bytes(seed=51), stored),
        ("set/no/../../../escape.png", png_bytes(seed=52), stored),  # unsafe_path
        ("set/yes/crc.png", png_bytes(seed=53), stored),  # corrupt: a byte flipped below
        ("set/yes/locked.png", png_bytes(seed=54), stored),  # unsupported_format: the encrypted flag
        ("set/yes/d64.png", png_bytes(seed=55), stored),  # unsupported_format: Deflate64
        ("set/yes/a.png", png_bytes(seed=50), stored),  # the same name and bytes again: a duplicate
        ("set/yes/bomb.png", bytes(8 << 20), deflated),  # suspicious_archive: 8 MiB of zeros in 8 KB
    ]
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as zf:
        for name, data, method in members:
            zf.writestr(name, data, compress_type=method)
    data = bytearray(path.read_bytes())
    data[data.find(png_bytes(seed=53)[100:120])] ^= 0xFF
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    central = [at for at in range(len(data) - 3) if data[at : at + 4] == b"PK\x01\x02"]
    for index, flag, method in ((4, 0x1, 0), (5, 0x0, 9)):
        for offset, flag_at, method_at in ((infos[index].header_offset, 6, 8), (central[index], 8, 10)):
            data[offset + flag_at : offset + flag_at + 2] = flag.to_bytes(2, "little")
            data[offset + method_at : offset + method_at + 2] = method.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def test_a_hostile_folder_ends_every_file_in_one_place_with_its_reason(tmp_path: Path, settings: Settings) -> None:
    settings.ingest.label_pattern = "[a-z_]+"
    summary = ingest(build_hostile_folder(tmp_path / "src"), settings)
    expected = {**EVERY_REASON, "unsafe_path": 1, "not_a_file": 4, "unreadable": 1, "bad_label": 1}
    assert summary.by_reason == expected
    assert summary.seen == 20 + 7
    assert summary.seen == summary.stored + summary.duplicates + summary.conflicts + summary.quarantined
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert session.scalar(select(func.count()).select_from(IngestFile)) == summary.seen
    assert all(r["reason"] in REASONS and r["detail"] for r in summary.rejected)
    assert not any(b"root:" in p.read_bytes() for p in (settings.home / "quarantine").iterdir() if p.is_file())


def test_a_hostile_zip_ends_every_member_in_one_place_with_its_reason(tmp_path: Path, settings: Settings) -> None:
    summary = ingest(build_hostile_zip(tmp_path / "set.zip"), settings)
    assert summary.by_reason == {"unsafe_path": 1, "corrupt": 1, "unsupported_format": 2, "suspicious_archive": 1}
    assert (summary.seen, summary.stored, summary.duplicates) == (8, 2, 1)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert session.scalar(select(func.count()).select_from(IngestFile)) == summary.seen
    assert not (tmp_path.parent / "escape.png").exists()
    assert max(p.stat().st_size for p in (settings.home / "quarantine").iterdir()) < 100_000  # no bomb copied


def test_a_dicom_that_cannot_be_de_identified_is_refused_and_not_kept(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conveyor.data.ingest as ingest_module

    def refuse(data: bytes, salt: bytes) -> bytes:
        raise ValueError("the DICOM file cannot be de-identified: an element pydicom cannot write back")

    monkeypatch.setattr(ingest_module, "deidentify_dicom", refuse)
    settings.ingest.deidentify = True
    write(tmp_path / "src" / "ct" / "scan.dcm", pydicom_file("CT_small.dcm"))
    summary = ingest(tmp_path / "src", settings)
    assert [(r["reason"], r["detail"]) for r in summary.rejected] == [
        ("cannot_deidentify", "the DICOM file cannot be de-identified: an element pydicom cannot write back")
    ]
    assert [p.name.endswith(".reason.json") for p in (settings.home / "quarantine").iterdir()] == [True]
    assert not (settings.home / "raw").exists() or not any((settings.home / "raw").rglob("*.dcm"))


def test_damaged_copies_of_real_images_never_crash_ingest(tmp_path: Path, settings: Settings) -> None:
    """Headers garbled, files cut short (PNG, JPEG and DICOM): each is stored or refused with a reason."""
    import random

    from tests.helpers import encode, gradient

    rng = random.Random(7)
    originals = [png_bytes(96, 96, seed=1), encode(gradient(96, 96, seed=2), "JPEG"), pydicom_file("CT_small.dcm")]
    for index in range(60):
        damaged = bytearray(originals[index % 3])
        start = rng.randrange(0, min(400, len(damaged)))
        damaged[start : start + 64] = rng.randbytes(64)
        if index % 2:
            damaged = damaged[: rng.randrange(1, len(damaged))]
        write(tmp_path / "src" / "damaged" / f"{index:03d}.bin", bytes(damaged))
    summary = ingest(tmp_path / "src", settings)
    assert summary.seen == 60
    assert summary.stored + summary.duplicates + summary.quarantined == 60
    assert all(r["reason"] in REASONS for r in summary.rejected)
