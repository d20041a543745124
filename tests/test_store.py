"""The metadata DB's schema: every stage's tables, created idempotently; a stage that is not installed is fine."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from conveyor.store import db
from conveyor.store.db import create_schema, get_engine


def test_schema_is_created_on_each_database(db_url: str | None, tmp_path: Path) -> None:
    url = db_url or f"sqlite:///{tmp_path / 'c.db'}"
    engine = get_engine(url)
    create_schema(engine)
    create_schema(engine)  # idempotent
    tables = set(inspect(engine).get_table_names())
    assert {"images", "ingests", "ingest_files", "label_conflicts", "dataset_versions", "audit_log"} <= tables


def test_a_stage_whose_package_is_absent_is_skipped(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(db, "TABLE_MODULES", ("conveyor.store.models", "conveyor.not_a_stage.tables"))
    engine = get_engine(f"sqlite:///{tmp_path / 'c.db'}")
    create_schema(engine)
    assert "images" in set(inspect(engine).get_table_names())


def test_a_stage_with_a_broken_import_is_reported(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(db, "TABLE_MODULES", ("conveyor.store.models", "tests.broken_tables"))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        create_schema(get_engine(f"sqlite:///{tmp_path / 'c.db'}"))
