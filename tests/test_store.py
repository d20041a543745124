"""The metadata DB's schema: every stage's tables, declared in one module, created idempotently."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from conveyor.store.db import create_schema, get_engine


def test_schema_is_created_on_each_database(db_url: str | None, tmp_path: Path) -> None:
    url = db_url or f"sqlite:///{tmp_path / 'c.db'}"
    engine = get_engine(url)
    create_schema(engine)
    create_schema(engine)  # idempotent
    tables = set(inspect(engine).get_table_names())
    assert {"images", "ingests", "ingest_files", "label_conflicts", "dataset_versions", "audit_log"} <= tables
    assert {"predictions", "feedback", "rollouts", "monitoring_runs"} <= tables
