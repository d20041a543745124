"""Subgroup values stored per image: derived from DICOM headers, image facts and a labels CSV; never an identifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.subgroups import MAX_CHARS, age_band, identifying_column, size_band
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import Image, Ingest
from tests.helpers import png_bytes, pydicom_file, write


def _stored_subgroups(settings: Settings) -> list[dict[str, str]]:
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        return [dict(row) for row in session.scalars(select(Image.subgroups).order_by(Image.width))]


@pytest.mark.parametrize(
    ("value", "band"),
    [
        ("045Y", "40-49"),
        ("000Y", "0-9"),
        ("009Y", "0-9"),
        ("010Y", "10-19"),
        ("089Y", "80-89"),
        ("090Y", "90+"),
        ("105Y", "90+"),
        ("45Y", "40-49"),
        (" 045y ", "40-49"),
        ("011M", "0-9"),
        ("130M", "10-19"),
        ("006W", "0-9"),
        ("003D", "0-9"),
        ("045", None),  # no unit
        ("", None),
        (None, None),
        ("abcY", None),
        ("045X", None),
        ("-45Y", None),
        ("1045Y", None),
        ("45 Y", None),
    ],
)
def test_patient_age_becomes_a_decade_band(value: str | None, band: str | None) -> None:
    assert age_band(value) == band


@pytest.mark.parametrize(
    ("width", "height", "band"),
    [(64, 64, "<256"), (255, 4000, "<256"), (256, 300, "256-511"), (1023, 2048, "512-1023"), (1024, 1024, ">=1024")],
)
def test_size_band_is_of_the_shorter_side(width: int, height: int, band: str) -> None:
    assert size_band(width, height) == band


@pytest.mark.parametrize(
    ("name", "identifying"),
    [
        ("patient_id", True),
        ("PatientID", True),
        ("Name", True),
        ("surname", True),
        ("birth_date", True),
        ("DOB", True),
        ("MRN", True),
        ("study date", True),
        ("scanner", False),
        ("site", False),
        ("scanner_model", False),
        ("valid", False),
    ],
)
def test_columns_named_like_identifiers_are_recognised(name: str, identifying: bool) -> None:
    assert identifying_column(name) is identifying


def test_real_dicom_files_give_their_header_values(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "ct" / "ct.dcm", pydicom_file("CT_small.dcm"))
    write(tmp_path / "src" / "mr" / "mr.dcm", pydicom_file("MR_small.dcm"))

    summary = ingest(tmp_path / "src", settings)

    assert summary.stored == 2
    mr, ct = _stored_subgroups(settings)  # 64 then 128 pixels wide
    assert ct == {
        "manufacturer": "GE MEDICAL SYSTEMS",
        "model": "RHAPSODE",
        "modality": "CT",
        "sex": "O",
        "age_band": "0-9",  # PatientAge 000Y
        "institution": "JFK IMAGING CENTER",
        "format": "dicom",
        "bit_depth": "16",
        "size": "<256",
    }
    assert mr == {
        "manufacturer": "TOSHIBA_MEC",
        "model": "MRT50H1",
        "modality": "MR",
        "sex": "F",
        "institution": "TOSHIBA",
        "format": "dicom",
        "bit_depth": "16",
        "size": "<256",
    }


def test_no_patient_name_or_id_is_stored_with_the_subgroups(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "ct" / "ct.dcm", pydicom_file("CT_small.dcm"))
    write(tmp_path / "src" / "mr" / "mr.dcm", pydicom_file("MR_small.dcm"))

    ingest(tmp_path / "src", settings)

    stored = json.dumps(_stored_subgroups(settings))
    for identifier in ("CompressedSamples", "CT1", "MR1", "1CT1", "4MR1"):  # PatientName and PatientID of both files
        assert identifier not in stored


def test_a_labels_csv_gives_its_extra_columns(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "b.png", png_bytes(height=300, width=300, seed=2))
    long = "x" * 100
    write(
        tmp_path / "labels.csv",
        f"path,label,Scanner,site,note\na.png,yes, Siemens  Aera ,north,\nb.png,no,GE,south,{long}\n".encode(),
    )

    ingest(tmp_path / "src", settings, labels_csv=tmp_path / "labels.csv")

    a, b = _stored_subgroups(settings)
    assert a == {"format": "png", "bit_depth": "8", "size": "<256", "scanner": "Siemens Aera", "site": "north"}
    assert b == {"format": "png", "bit_depth": "8", "size": "256-511", "scanner": "GE", "site": "south",
                 "note": "x" * MAX_CHARS}  # fmt: skip


def test_an_identifying_csv_column_is_dropped_and_reported(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "a.png", png_bytes(seed=1))
    write(tmp_path / "labels.csv", b"path,label,patient_id,Name,scanner\na.png,yes,P-00917,Smith^John,GE\n")

    summary = ingest(tmp_path / "src", settings, labels_csv=tmp_path / "labels.csv")

    assert (summary.stored, summary.quarantined) == (1, 0)
    assert summary.dropped_columns == ["patient_id", "name"]
    assert _stored_subgroups(settings) == [{"format": "png", "bit_depth": "8", "size": "<256", "scanner": "GE"}]
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        kept = json.dumps([run.summary for run in session.scalars(select(Ingest))])
    assert "P-00917" not in kept and "Smith" not in kept
