"""Migrations create exactly the models' schema, on every backend, and are safe to re-run."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables)
from storage.db import MIGRATIONS_DIR, alembic_config, make_engine, upgrade_schema
from storage.repository import CaseDraft, Store

TABLES = {"conversations", "messages", "cases", "case_events", "case_counters"}


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_upgrade_is_idempotent_and_keeps_data(db_url: str) -> None:
    upgrade_schema(db_url)
    upgrade_schema(db_url)
    assert current_revision(db_url) == head_revision() is not None
    store = Store.from_url(db_url)  # upgrades a third time, on an existing database
    try:
        with store.unit_of_work() as uow:
            number = uow.open_case(
                CaseDraft(
                    channel="tg",
                    customer_id="1",
                    conversation_id=1,
                    fields={},
                    transcript=[],
                    opened_at=datetime(2026, 11, 22, tzinfo=UTC),
                )
            ).number
    finally:
        store.close()
    upgrade_schema(db_url)
    again = Store.from_url(db_url)
    try:
        assert again.get_case(number) is not None
    finally:
        again.close()


def test_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade_schema(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, SQLModel.metadata) == []
            assert set(inspect(conn).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def cli_config(url: str, *, output: io.StringIO | None = None) -> Config:
    """What `alembic -c storage/migrations/alembic.ini -x url=...` builds."""
    return Config(
        str(MIGRATIONS_DIR / "alembic.ini"),
        cmd_opts=argparse.Namespace(x=[f"url={url}"]),
        output_buffer=output,
    )


def test_alembic_command_line_upgrade_and_downgrade(db_url: str) -> None:
    command.upgrade(cli_config(db_url), "head")
    assert current_revision(db_url) == head_revision()
    command.downgrade(cli_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert not TABLES & set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    upgrade_schema(db_url)
    assert current_revision(db_url) == head_revision()


def test_offline_sql_generation(db_backend: str) -> None:
    url = "sqlite:///unused.db" if db_backend == "sqlite" else "postgresql+psycopg://u@localhost/unused"
    output = io.StringIO()
    command.upgrade(cli_config(url, output=output), "head", sql=True)
    sql = output.getvalue()
    assert "CREATE TABLE cases" in sql and "CREATE TABLE case_counters" in sql
    assert ("JSONB" in sql) is (db_backend == "postgres")


def test_make_engine_configures_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "kesu.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        engine.dispose()
    assert path.exists()
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 10_000}


def test_in_memory_sqlite_works_for_single_threaded_tools() -> None:
    store = Store.from_url("sqlite://")
    try:
        assert store.load_conversation("tg", "1") is None
        assert store.list_cases() == []
    finally:
        store.close()
