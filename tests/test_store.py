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


def test_a_workspace_from_before_subgroups_opens_and_its_images_have_none(tmp_path: Path) -> None:
    """An images table made before the subgroups column, with an image in it: the workspace opens, the column is
    added, the old image reads as having no subgroups (and is left out of subgroup reports)."""
    from sqlalchemy import create_engine, inspect, text

    from conveyor.data.versions import subgroups_of

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE images DROP COLUMN subgroups"))
        connection.execute(text("INSERT INTO ingests (id, source, started_at) VALUES (1, 's', '2024-01-01')"))
        connection.execute(
            text(
                "INSERT INTO images (sha256, label, format, width, height, channels, mode, bit_depth, n_frames, "
                "file_size, phash, brightness, contrast, raw_path, conflict, created_at, ingest_id) VALUES ('a', "
                "'yes', 'png', 64, 64, 1, 'L', 8, 1, 10, '00', 0.5, 0.1, 'raw/a.png', 0, '2024-01-01', 1)"
            )
        )
    create_schema(engine)
    assert "subgroups" in {c["name"] for c in inspect(engine).get_columns("images")}
    assert subgroups_of(engine, ["a"]) == {}
