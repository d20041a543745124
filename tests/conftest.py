"""Fixtures shared by the whole suite: settings in tmp_path, and the metadata DB on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.config import Settings

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _postgres_reason() -> str | None:
    """None if the PostgreSQL server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:
        return f"PostgreSQL at 127.0.0.1:5432 does not answer: {exc}"
    return None


_PG_REASON = _postgres_reason()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    import psycopg

    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        from conveyor.store.db import get_engine

        url = f"{PG_SERVER}/{name}"
        get_engine(url).dispose()
        get_engine.cache_clear()
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Run a test once on the default SQLite file (None) and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of a workspace in tmp_path on SQLite, with small limits that test files can reach."""
    return Settings(
        home=tmp_path / "ws",
        ingest={"min_side": 32, "max_pixels": 1_000_000, "max_file_bytes": 2_000_000},  # type: ignore[arg-type]
    )


@pytest.fixture
def db_settings(tmp_path: Path, db_url: str | None) -> Settings:
    """Like ``settings``, on each database in turn."""
    return Settings(
        home=tmp_path / "ws",
        db_url=db_url,
        ingest={"min_side": 32, "max_pixels": 1_000_000, "max_file_bytes": 2_000_000},  # type: ignore[arg-type]
    )


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's CONVEYOR_* variables or writes into the checkout."""
    import os

    for name in list(os.environ):
        if name.startswith("CONVEYOR_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "ws"))
    from conveyor.config import get_settings

    get_settings.cache_clear()
