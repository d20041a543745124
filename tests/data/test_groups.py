"""Grouped splits: a patient's (clip's, slide's) images stay on one side, the group known from the labels CSV, a
path pattern or the DICOM header, and stored as a salted hash only."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.privacy import group_key, workspace_salt
from conveyor.store.db import session_scope
from conveyor.store.models import Image
from conveyor.workspace import open_workspace
from tests.helpers import png_bytes, write


def _stored(settings: Settings) -> list[tuple[str, str | None, str | None]]:
    with session_scope(open_workspace(settings)) as session:
        return [
            (r.sha256, r.split, r.group_key)
            for r in session.execute(select(Image.sha256, Image.split, Image.group_key))
        ]


def _patients_folder(root: Path, patients: int = 12, slices: int = 4) -> dict[str, str]:
    """``root/<label>/P<n>_s<k>.png``; returns relpath -> patient."""
    owner = {}
    for p in range(patients):
        label = "tumour" if p % 2 else "no_tumour"
        for k in range(slices):
            relpath = f"{label}/P{p:03d}_s{k}.png"
            write(root / relpath, png_bytes(seed=1000 + p * 10 + k))
            owner[relpath] = f"P{p:03d}"
    return owner


def _sides_per_patient(settings: Settings, root: Path, owner: dict[str, str]) -> dict[str, set[str]]:
    import hashlib

    split_of = {sha: split for sha, split, _ in _stored(settings)}
    sides: dict[str, set[str]] = defaultdict(set)
    for relpath, patient in owner.items():
        sides[patient].add(str(split_of[hashlib.sha256((root / relpath).read_bytes()).hexdigest()]))
    return sides


def test_a_labels_csv_group_column_keeps_each_patient_on_one_side(tmp_path: Path, settings: Settings) -> None:
    owner = _patients_folder(tmp_path / "src")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,group\n" + "".join(f"{p},{p.split('/')[0]},{g}\n" for p, g in owner.items()))
    ingest(tmp_path / "src", settings, labels_csv=csv)
    sides = _sides_per_patient(settings, tmp_path / "src", owner)
    assert all(len(side) == 1 for side in sides.values())
    assert sum(side == {"test"} for side in sides.values()) == 2  # a fifth of each class's 6 patients, whole


def test_the_group_is_stored_as_a_salted_hash_never_as_the_id(tmp_path: Path, settings: Settings) -> None:
    owner = _patients_folder(tmp_path / "src", patients=2, slices=2)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,group\n" + "".join(f"{p},{p.split('/')[0]},{g}\n" for p, g in owner.items()))
    ingest(tmp_path / "src", settings, labels_csv=csv)
    salt = workspace_salt(settings.home)
    assert sorted({g for _, _, g in _stored(settings)}) == sorted({group_key("P000", salt), group_key("P001", salt)})
    assert b"P000" not in (settings.home / "conveyor.db").read_bytes()


def test_a_group_pattern_names_the_patient_from_the_path(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "ws", ingest={"min_side": 32, "group_pattern": r"(P\d+)_s"})  # type: ignore[arg-type]
    owner = _patients_folder(tmp_path / "src")
    ingest(tmp_path / "src", settings)
    salt = workspace_salt(settings.home)
    assert {g for _, _, g in _stored(settings)} == {group_key(p, salt) for p in set(owner.values())}
    assert all(len(side) == 1 for side in _sides_per_patient(settings, tmp_path / "src", owner).values())


def test_without_a_group_every_image_is_its_own(tmp_path: Path, settings: Settings) -> None:
    _patients_folder(tmp_path / "src", patients=2, slices=2)
    ingest(tmp_path / "src", settings)
    assert {g for _, _, g in _stored(settings)} == {None}


def test_a_dicom_patient_id_is_the_group(tmp_path: Path, settings: Settings) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    patient = str(ds.PatientID)
    for k in range(2):
        ds.InstanceNumber = k + 1  # another file of the same patient (different bytes)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        write(tmp_path / "src" / "ct" / f"slice{k}.dcm", buffer.getvalue())
    write(tmp_path / "src" / "other" / "x.png", png_bytes(seed=3))
    ingest(tmp_path / "src", settings)
    key = group_key(patient, workspace_salt(settings.home))
    assert sorted(str(g) for _, _, g in _stored(settings)) == sorted(["None", key, key])


def test_a_pattern_with_two_capture_groups_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="has 2 capture groups"):
        Settings(home=tmp_path, ingest={"group_pattern": r"(P\d+)_(s\d+)"})  # type: ignore[arg-type]
