"""Patient data at rest: source paths stored as salted hashes, DICOM headers de-identified on request."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.data.decode import decode_image
from conveyor.data.ingest import ingest
from conveyor.data.privacy import PathNames, deidentify_dicom, workspace_salt
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import Image, Ingest, IngestFile
from tests.helpers import png_bytes, pydicom_file, write

PATIENT = "Smith^John 1957-03-02"


def _export(root: Path) -> Path:
    """A clinical export that names its patient in a folder and in file names, with one file it refuses."""
    for seed in range(1, 4):
        write(root / PATIENT / "tumour" / f"{PATIENT} slice {seed}.png", png_bytes(seed=seed))
    write(root / PATIENT / "tumour" / f"{PATIENT} notes.png", b"not pixels")
    return root / PATIENT


def _everything_stored(settings: Settings) -> str:
    """Every path and summary the workspace keeps: the database rows and the quarantine's file names and notes."""
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        rows = [(f.source_key, f.relpath, f.quarantine_path) for f in session.scalars(select(IngestFile))]
        runs = [(r.source, json.dumps(r.summary)) for r in session.scalars(select(Ingest))]
    quarantine = settings.home / "quarantine"
    files = [(p.name, p.read_text(errors="replace")) for p in quarantine.iterdir()]
    return repr((rows, runs, files))


def test_source_paths_are_stored_as_salted_hashes_by_default(tmp_path: Path, settings: Settings) -> None:
    summary = ingest(_export(tmp_path), settings)

    assert (summary.stored, summary.quarantined) == (3, 1)
    assert summary.rejected[0]["path"] == f"tumour/{PATIENT} notes.png"  # the user who ran it is told where
    stored = _everything_stored(settings)
    assert "Smith" not in stored and "1957" not in stored
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        keys = {(f.source_key[:5], f.relpath[:5]) for f in session.scalars(select(IngestFile))}
    assert keys == {("path-", "path-")}


def test_the_same_path_keeps_its_name_so_a_rerun_decides_nothing_anew(tmp_path: Path, settings: Settings) -> None:
    source = _export(tmp_path)
    ingest(source, settings)
    again = ingest(source, settings)
    assert (again.new, again.already_ingested) == (0, 4)


def test_keep_paths_stores_them_as_they_are(tmp_path: Path, settings: Settings) -> None:
    settings.ingest.keep_paths = True
    ingest(_export(tmp_path), settings)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        paths = sorted(session.scalars(select(IngestFile.relpath)))
    assert paths[0] == f"tumour/{PATIENT} notes.png"


def test_the_salt_is_the_workspaces_own_secret(tmp_path: Path) -> None:
    salt = workspace_salt(tmp_path / "a")
    assert len(salt) == 32
    assert workspace_salt(tmp_path / "a") == salt
    assert stat.S_IMODE((tmp_path / "a" / "salt").stat().st_mode) == 0o600
    other = workspace_salt(tmp_path / "b")
    assert PathNames(salt, keep=False).stored("x/scan.png") != PathNames(other, keep=False).stored("x/scan.png")
    assert PathNames(salt, keep=False).stored("x/scan.png").endswith(".png")


def _identifying(data: bytes) -> list[bytes]:
    return [word for word in (b"CompressedSamples", b"JFK IMAGING", b"1CT1", b"20040119") if word in data]


def test_deidentify_strips_the_header_and_keeps_the_pixels(tmp_path: Path, settings: Settings) -> None:
    original = pydicom_file("CT_small.dcm")
    write(tmp_path / "src" / "ct" / "scan.dcm", original)
    settings.ingest.deidentify = True
    ingest(tmp_path / "src", settings)

    with session_scope(get_engine(settings.resolved_db_url)) as session:
        raw_path = session.scalars(select(Image.raw_path)).one()
    stored = (settings.home / raw_path).read_bytes()
    assert _identifying(original) == [b"CompressedSamples", b"JFK IMAGING", b"1CT1", b"20040119"]
    assert _identifying(stored) == []
    header = pydicom.dcmread(io.BytesIO(stored))
    assert (header.PatientIdentityRemoved, header.PatientName, header.Modality) == ("YES", "", "CT")
    assert not any(element.tag.is_private for element in header)
    np.testing.assert_array_equal(decode_image(stored).pixels, decode_image(original).pixels)


def test_deidentified_files_of_one_study_keep_one_study_uid(tmp_path: Path) -> None:
    salt = workspace_salt(tmp_path)
    first = pydicom.dcmread(io.BytesIO(deidentify_dicom(pydicom_file("MR_small.dcm"), salt)))
    second = pydicom.dcmread(io.BytesIO(deidentify_dicom(pydicom_file("MR_small_jpeg_ls_lossless.dcm"), salt)))
    original = pydicom.dcmread(io.BytesIO(pydicom_file("MR_small.dcm")))
    assert first.StudyInstanceUID == second.StudyInstanceUID != original.StudyInstanceUID
    assert first.StudyInstanceUID.startswith("2.25.")


def test_a_quarantined_dicom_is_kept_de_identified(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "mr" / "jpeg-ls.dcm", pydicom_file("MR_small_jpeg_ls_lossless.dcm"))  # no decoder here
    settings.ingest.deidentify = True
    summary = ingest(tmp_path / "src", settings)
    assert summary.by_reason == {"dicom_unsupported_syntax": 1}
    (copy,) = [p for p in (settings.home / "quarantine").iterdir() if not p.name.endswith(".reason.json")]
    assert b"CompressedSamples" not in copy.read_bytes()
    assert pydicom.dcmread(copy).PatientIdentityRemoved == "YES"


def test_without_deidentify_the_raw_store_keeps_the_original_bytes(tmp_path: Path, settings: Settings) -> None:
    original = pydicom_file("CT_small.dcm")
    write(tmp_path / "src" / "ct" / "scan.dcm", original)
    ingest(tmp_path / "src", settings)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        raw_path = session.scalars(select(Image.raw_path)).one()
    assert (settings.home / raw_path).read_bytes() == original


def test_paths_a_workspace_kept_plain_are_hashed_and_still_known(tmp_path: Path, settings: Settings) -> None:
    """A workspace ingested with keep_paths (or before paths were hashed), then ingested again without it."""
    source = _export(tmp_path)
    settings.ingest.keep_paths = True
    ingest(source, settings)
    settings.ingest.keep_paths = False
    again = ingest(source, settings)
    assert (again.new, again.already_ingested) == (0, 4)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        stored = [(f.source_key[:5], f.relpath[:5]) for f in session.scalars(select(IngestFile))]
    assert stored == [("path-", "path-")] * 4


def test_a_corrected_labels_csv_is_taken_in_with_hashed_paths(tmp_path: Path, settings: Settings) -> None:
    for seed in (1, 2):
        write(tmp_path / "images" / f"{PATIENT} {seed}.png", png_bytes(seed=seed))
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label\n{PATIENT} 1.png,tumour\n{PATIENT} 2.png,no_tumour\n")
    ingest(tmp_path / "images", settings, labels_csv=csv)
    csv.write_text(f"path,label\n{PATIENT} 1.png,tumour\n{PATIENT} 2.png,tumour\n")
    again = ingest(tmp_path / "images", settings, labels_csv=csv)
    assert (again.new, again.stored, again.conflicts) == (1, 2, 0)
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        assert sorted(session.scalars(select(Image.label))) == ["tumour", "tumour"]
        assert all(relpath.startswith("path-") for relpath in session.scalars(select(IngestFile.relpath)))


def test_a_damaged_salt_is_a_clear_error_not_a_new_salt(tmp_path: Path) -> None:
    from conveyor.errors import ConfigError

    workspace_salt(tmp_path)
    (tmp_path / "salt").write_text("")  # truncated by a careless copy
    with pytest.raises(ConfigError, match=r"salt is damaged .* restore it from a backup"):
        workspace_salt(tmp_path)
