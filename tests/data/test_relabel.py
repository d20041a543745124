"""A corrected labels CSV is taken in: a file decided under one label and filed again under another is decided anew."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.versions import dataset_members, list_versions
from conveyor.store.db import get_engine, session_scope
from conveyor.store.models import AuditEntry, Image, IngestFile, LabelConflict
from tests.helpers import png_bytes, write


@pytest.fixture
def db_settings(db_settings: Settings) -> Settings:
    db_settings.ingest.keep_paths = True  # the checks look files up by path
    return db_settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.ingest.keep_paths = True
    return settings


def _source(root: Path) -> Path:
    for seed in range(1, 5):
        write(root / "images" / f"{seed}.png", png_bytes(seed=seed))
    return root / "images"


def _labels(root: Path, rows: dict[str, str]) -> Path:
    text = "path,label\n" + "".join(f"{path},{label}\n" for path, label in rows.items())
    return write(root / "labels.csv", text.encode())


def _rows(settings: Settings) -> dict[str, tuple[str | None, str, str | None]]:
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        files = session.scalars(select(IngestFile)).all()
        return {f.relpath: (f.label, f.outcome, f.reason) for f in files}


def _image_labels(settings: Settings) -> dict[str, str]:
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        return {sha[:4]: label for sha, label in session.execute(select(Image.sha256, Image.label))}


def _audit(settings: Settings) -> list[AuditEntry]:
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "relabel_file")).all()
        session.expunge_all()
        return list(entries)


def test_a_file_without_a_label_is_taken_in_when_the_csv_gives_it_one(tmp_path: Path, db_settings: Settings) -> None:
    source = _source(tmp_path)
    first = ingest(source, db_settings, labels_csv=_labels(tmp_path, {"1.png": "yes", "2.png": "no", "3.png": "no"}))
    assert first.by_reason == {"no_label": 1}
    quarantined = list((db_settings.home / "quarantine").iterdir())
    assert len(quarantined) == 2  # the copy and its reason

    fixed = _labels(tmp_path, {"1.png": "yes", "2.png": "no", "3.png": "no", "4.png": "yes"})
    again = ingest(source, db_settings, labels_csv=fixed)

    assert (again.new, again.already_ingested, again.stored, again.quarantined) == (1, 3, 4, 0)
    assert _rows(db_settings)["4.png"] == ("yes", "stored", None)
    assert list((db_settings.home / "quarantine").iterdir()) == []  # its reason no longer holds
    assert again.dataset_version != first.dataset_version


def test_a_changed_label_relabels_an_image_only_that_file_labelled(tmp_path: Path, db_settings: Settings) -> None:
    source = _source(tmp_path)
    rows = {"1.png": "yes", "2.png": "no", "3.png": "no", "4.png": "yes"}
    first = ingest(source, db_settings, labels_csv=_labels(tmp_path, rows))

    again = ingest(source, db_settings, labels_csv=_labels(tmp_path, {**rows, "2.png": "yes"}))

    assert (again.new, again.stored, again.conflicts) == (1, 4, 0)
    engine = get_engine(db_settings.resolved_db_url)
    members = dataset_members(engine, again.dataset_version)
    assert sorted(label for _, label, _ in members) == ["no", "yes", "yes", "yes"]
    assert sorted(v.id for v in list_versions(engine)) == sorted([first.dataset_version, again.dataset_version])
    assert _rows(db_settings)["2.png"] == ("yes", "stored", None)
    (entry,) = _audit(db_settings)
    assert entry.details["path"] == "2.png"
    assert entry.details["was"] == {"label": "no", "outcome": "stored", "reason": None}
    assert entry.details["now"] == {"label": "yes", "outcome": "stored", "reason": None}


def test_a_changed_label_other_files_still_contradict_is_a_conflict(tmp_path: Path, db_settings: Settings) -> None:
    source = _source(tmp_path)
    write(source / "copy of 2.png", png_bytes(seed=2))
    rows = {"1.png": "yes", "2.png": "no", "copy of 2.png": "no", "3.png": "no", "4.png": "yes"}
    ingest(source, db_settings, labels_csv=_labels(tmp_path, rows))
    stored_as = _image_labels(db_settings)

    again = ingest(source, db_settings, labels_csv=_labels(tmp_path, {**rows, "2.png": "yes"}))

    assert (again.new, again.conflicts) == (1, 1)
    assert _image_labels(db_settings) == stored_as  # the copy still says "no": a person settles it
    assert _rows(db_settings)["2.png"] == ("yes", "conflict", None)
    with session_scope(get_engine(db_settings.resolved_db_url)) as session:
        assert session.scalars(select(LabelConflict.label)).all() == ["yes"]


def test_correcting_the_file_that_disagreed_settles_the_conflict(tmp_path: Path, db_settings: Settings) -> None:
    source = _source(tmp_path)
    write(source / "copy of 2.png", png_bytes(seed=2))
    rows = {"1.png": "yes", "2.png": "no", "copy of 2.png": "yes", "3.png": "no", "4.png": "yes"}
    first = ingest(source, db_settings, labels_csv=_labels(tmp_path, rows))
    engine = get_engine(db_settings.resolved_db_url)
    assert len(dataset_members(engine, first.dataset_version)) == 3  # the image in conflict is out

    again = ingest(source, db_settings, labels_csv=_labels(tmp_path, {**rows, "copy of 2.png": "no"}))

    assert (again.new, again.duplicates, again.conflicts) == (1, 1, 0)
    assert len(dataset_members(engine, again.dataset_version)) == 4
    with session_scope(engine) as session:
        assert session.scalars(select(LabelConflict.resolved)).all() == [True]


def test_the_corrected_csv_run_again_changes_nothing(tmp_path: Path, db_settings: Settings) -> None:
    source = _source(tmp_path)
    rows = {"1.png": "yes", "2.png": "no", "3.png": "no"}
    ingest(source, db_settings, labels_csv=_labels(tmp_path, rows))
    fixed = _labels(tmp_path, {**rows, "2.png": "yes", "4.png": "no"})
    ingest(source, db_settings, labels_csv=fixed)

    third = ingest(source, db_settings, labels_csv=fixed)

    assert (third.new, third.already_ingested, third.nothing_new) == (0, 4, True)
    assert len(_audit(db_settings)) == 2
    with session_scope(get_engine(db_settings.resolved_db_url)) as session:
        assert session.scalar(select(func.count()).select_from(IngestFile)) == 4  # one row per file, updated


def test_a_label_dropped_from_the_csv_keeps_the_earlier_decision(tmp_path: Path, settings: Settings) -> None:
    source = _source(tmp_path)
    rows = {"1.png": "yes", "2.png": "no", "3.png": "no", "4.png": "yes"}
    first = ingest(source, settings, labels_csv=_labels(tmp_path, rows))

    again = ingest(source, settings, labels_csv=_labels(tmp_path, {"1.png": "yes"}))

    assert (again.new, again.stored, again.dataset_version) == (0, 4, first.dataset_version)
