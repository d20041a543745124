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


def test_a_workspace_from_before_a_new_column_gets_it(tmp_path: Path) -> None:
    """An images table made before group_key existed: create_schema adds the column (and its index), rows keep NULL."""
    from sqlalchemy import create_engine, inspect, text

    from conveyor.store.db import create_schema

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_images_group_key"))
        connection.execute(text("ALTER TABLE images DROP COLUMN group_key"))
    assert "group_key" not in {c["name"] for c in inspect(engine).get_columns("images")}
    create_schema(engine)
    inspector = inspect(engine)
    assert "group_key" in {c["name"] for c in inspector.get_columns("images")}
    assert "ix_images_group_key" in {i["name"] for i in inspector.get_indexes("images")}
