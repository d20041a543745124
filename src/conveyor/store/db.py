"""Engine and sessions of the metadata DB: a SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from conveyor.errors import ConfigError
from conveyor.store.models import Base

__all__ = ["create_schema", "get_engine", "session_scope"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets a reader (the server) and a writer (an ingest) work at once; NORMAL sync is crash-safe under WAL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process. ``postgresql://`` URLs use psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        # A server connection can drop between uses (ping before reuse); a SQLite file cannot, and a ping per
        # session was a tenth of a served request's time.
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    except Exception as exc:  # bad URL syntax or missing driver
        raise ConfigError(f"db_url {url!r} is not a usable SQLAlchemy URL: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


#: The PostgreSQL advisory lock :func:`create_schema` holds (an arbitrary constant: "conveyor" in ASCII).
SCHEMA_LOCK = 0x636F6E7665796F72


def create_schema(engine: Engine) -> None:
    """Create the tables that do not exist yet (idempotent): every stage's, all in :mod:`conveyor.store.models`; and
    add to an existing table the nullable columns a newer conveyor declares (a workspace made before them).

    On PostgreSQL it runs in one transaction under an advisory lock: server replicas that start at once on an empty
    database would otherwise both find a table missing and both create it, and one would fail."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            Base.metadata.create_all(connection)
            _add_new_columns(connection)
        return
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        _add_new_columns(connection)


def _add_new_columns(connection: Connection) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for every declared nullable column an existing table lacks (with its index).

    Only additions that old rows can take as they are (NULL) are made here; anything else would need a migration.
    """
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateIndex

    inspector = inspect(connection)
    columns = inspector.get_multi_columns()  # one query for every table, not one per table
    present_of = {name: {column["name"] for column in found} for (_, name), found in columns.items()}
    for table in Base.metadata.sorted_tables:
        if table.name not in present_of:
            continue
        present = present_of[table.name]
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
            for index in table.indexes:
                if [c.name for c in index.columns] == [column.name]:
                    connection.execute(CreateIndex(index, if_not_exists=True))


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
