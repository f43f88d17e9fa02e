"""Engines and schema upgrades.

SQLite is the single-box default, PostgreSQL the multi-worker one; both get the same schema
through the Alembic migrations in ``storage/migrations``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool

from storage.sqltypes import dumps_json

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
BEGIN_OPTION = "kesu_sqlite_begin"
"""Execution option naming the SQLite BEGIN mode; readers set it to "DEFERRED"."""

_MIGRATION_LOCK_KEY = 0x6B657375  # "kesu": serialises concurrent upgrade_schema on PostgreSQL


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _configure_sqlite(engine: Engine, *, in_memory: bool) -> None:
    """WAL + BEGIN IMMEDIATE: readers never block, writers queue on busy_timeout instead of failing.

    pysqlite's own deferred BEGIN takes a read lock first and must upgrade it on the first
    write, which fails with "database is locked" no matter the busy_timeout. SQLAlchemy's
    documented recipe: turn off pysqlite's transaction handling and emit BEGIN ourselves.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN DEFERRED" if mode == "DEFERRED" else "BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Engine tuned for the backend: SQLite gets WAL/IMMEDIATE transactions, PostgreSQL a checked pool."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        in_memory = _is_memory_sqlite(parsed)
        if in_memory:
            # One shared connection: fine for single-threaded tools and tests, not for servers.
            engine = create_engine(
                parsed,
                json_serializer=dumps_json,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            assert parsed.database is not None
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, json_serializer=dumps_json, pool_size=8, max_overflow=24)
        _configure_sqlite(engine, in_memory=in_memory)
        return engine
    return create_engine(
        parsed,
        json_serializer=dumps_json,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_recycle=1800,
    )


def alembic_config() -> Config:
    """Alembic configuration pointing at the packaged migrations; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_schema(engine_or_url: Engine | str) -> None:
    """Bring the database to the newest migration; a no-op when it is already there."""
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
