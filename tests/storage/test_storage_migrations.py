"""Migrations create exactly the models' schema, on every backend, and are safe to re-run."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Boolean, Engine, Integer, Numeric, String, column, inspect, table
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables)
from storage.case_numbers import format_case_number
from storage.db import MIGRATIONS_DIR, alembic_config, make_engine, upgrade_schema
from storage.models import CASE_DEADLINES
from storage.repository import CaseDraft, Store
from storage.sqltypes import UTCDateTime, json_type

TABLES = {"conversations", "messages", "cases", "case_events", "case_counters", "outbox", "evidence"}


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_deadline_indexes_are_partial_on_open_cases(db_url: str) -> None:
    """compare_metadata ignores index predicates, so check them here: the scanner relies on them."""
    engine = make_engine(db_url)
    try:
        upgrade_schema(engine)
        with engine.connect() as conn:
            indexes = {index["name"]: index for index in inspect(conn).get_indexes("cases")}
    finally:
        engine.dispose()
    for deadline in CASE_DEADLINES:
        index = indexes[f"ix_cases_{deadline}_open"]
        assert index["column_names"] == [deadline, "id"] and not index["unique"]
        options = index.get("dialect_options", {})
        where = str(options.get("sqlite_where", options.get("postgresql_where", "")))
        assert "'closed'" in where and "'rejected'" in where and f"{deadline} IS NOT NULL" in where, where


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
    assert "CREATE TABLE outbox" in sql and "CREATE TABLE evidence" in sql
    assert "ALTER TABLE cases ADD COLUMN unrouted" in sql
    assert "ALTER TABLE cases ADD COLUMN version INTEGER DEFAULT 1 NOT NULL" in sql
    assert "CREATE INDEX ix_cases_resolution_due_open ON cases (resolution_due, id) WHERE " in sql
    assert "CREATE TABLE _alembic_tmp_cases" not in sql  # never a SQLite table rebuild
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


# ----------------------------------------------------------------- 0001 -> 0002 on live data

CASES_0001 = table(
    "cases",
    column("id", Integer),  # not inserted explicitly: PostgreSQL's sequence would not follow
    column("number", String),
    column("status", String),
    column("channel", String),
    column("customer_id", String),
    column("conversation_id", Integer),
    column("created_at", UTCDateTime),
    column("updated_at", UTCDateTime),
    column("name", String),
    column("amount", Numeric(12, 2)),
    column("priority", String),
    column("expectation", json_type()),
    column("transcript", json_type()),
)
EVENTS_0001 = table(
    "case_events",
    column("case_id", Integer),
    column("kind", String),
    column("actor", String),
    column("data", json_type()),
    column("created_at", UTCDateTime),
)


def migrate_to(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_upgrade_0001_to_0002_keeps_existing_cases_and_defaults_the_new_columns(db_url: str) -> None:
    opened = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    number = format_case_number(date(2026, 11, 20), 1)
    engine = make_engine(db_url)
    try:
        migrate_to(engine, "0001")
        with engine.begin() as conn:
            case_id = conn.execute(
                CASES_0001.insert().returning(CASES_0001.c.id),
                {
                    "number": number,
                    "status": "new",
                    "channel": "wechat",
                    "customer_id": "o-1",
                    "conversation_id": 7,
                    "created_at": opened,
                    "updated_at": opened,
                    "name": "张",
                    "amount": Decimal("12800.00"),
                    "priority": "important",
                    "expectation": ["exchange"],
                    "transcript": [{"role": "customer", "text": "沙发坏了"}],
                },
            ).scalar_one()
            event = {"kind": "opened", "actor": "customer", "data": {"channel": "wechat"}, "created_at": opened}
            conn.execute(EVENTS_0001.insert(), {"case_id": case_id, **event})
        assert current_revision(db_url) == "0001"

        upgrade_schema(engine)

        assert current_revision(db_url) == head_revision()
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, SQLModel.metadata) == []
        store = Store(engine)
        case = store.get_case(number)
        assert case is not None and case.id == case_id and case.created_at == opened
        assert case.fields["name"] == "张" and case.fields["amount"] == Decimal("12800")
        assert case.fields["priority"] == "important" and case.fields["expectation"] == ["exchange"]
        assert case.transcript == [{"role": "customer", "text": "沙发坏了"}]
        assert (case.owner, case.owner_name, case.claimed_at, case.unrouted) == (None, None, None, False)
        assert [e.kind for e in store.get_case_events(case_id)] == ["opened"]  # no rebuild cascaded them away
        # The upgraded case takes part in the new features.
        with store.unit_of_work() as uow:
            won, claimed = uow.claim_case(case_id=case_id, owner="telegram:42", owner_name="李经理", at=opened)
            uow.enqueue(kind="staff_notification", channel="telegram", target="-100", payload={"text": "x"},
                        case_id=case_id, at=opened)
            newer = uow.open_case(CaseDraft(channel="wechat", customer_id="o-2", conversation_id=8, fields={},
                                            transcript=[], opened_at=opened + timedelta(days=1), unrouted=True))
        assert won and claimed.owner_name == "李经理"
        assert [item.case_id for item in store.outbox_items()] == [case_id]
        assert newer.number != number and store.get_case(newer.number) == newer and newer.unrouted
    finally:
        engine.dispose()


# ----------------------------------------------------------------- 0002 -> 0003 on live data

CASES_0002 = table(
    "cases",
    *(column(c.name, c.type) for c in CASES_0001.c),
    column("owner", String),
    column("owner_name", String),
    column("claimed_at", UTCDateTime),
    column("unrouted", Boolean),
)
EVIDENCE_0002 = table(
    "evidence",
    column("channel", String),
    column("customer_id", String),
    column("case_id", Integer),
    column("kind", String),
    column("file_ref", String),
    column("created_at", UTCDateTime),
)


def test_upgrade_0002_to_0003_keeps_cases_and_their_history_and_defaults_the_new_columns(db_url: str) -> None:
    opened = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    number = format_case_number(date(2026, 11, 29), 1)
    engine = make_engine(db_url)
    try:
        migrate_to(engine, "0002")
        with engine.begin() as conn:
            case_id = conn.execute(
                CASES_0002.insert().returning(CASES_0002.c.id),
                {
                    "number": number,
                    "status": "claimed",
                    "channel": "telegram",
                    "customer_id": "77",
                    "conversation_id": 3,
                    "created_at": opened,
                    "updated_at": opened,
                    "name": "王",
                    "amount": Decimal("899.90"),
                    "priority": "major",
                    "expectation": ["refund"],
                    "transcript": [{"role": "customer", "text": "床板裂了"}],
                    "owner": "telegram:42",
                    "owner_name": "李经理",
                    "claimed_at": opened,
                    "unrouted": True,
                },
            ).scalar_one()
            for kind in ("opened", "claimed"):
                event = {"kind": kind, "actor": "customer", "data": {}, "created_at": opened}
                conn.execute(EVENTS_0001.insert(), {"case_id": case_id, **event})
            conn.execute(
                EVIDENCE_0002.insert(),
                {"channel": "telegram", "customer_id": "77", "case_id": case_id, "kind": "photo",
                 "file_ref": "AgAC-1", "created_at": opened},
            )
        store = Store(engine)
        with store.unit_of_work() as uow:
            uow.enqueue(kind="staff_notification", channel="telegram", target="-100", payload={"text": "x"},
                        case_id=case_id, at=opened)
        assert current_revision(db_url) == "0002"

        upgrade_schema(engine)

        assert current_revision(db_url) == "0004" == head_revision()
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, SQLModel.metadata) == []
        case = store.get_case(number)
        assert case is not None and case.id == case_id and case.created_at == opened
        assert (case.status, case.owner, case.owner_name, case.claimed_at, case.unrouted) == (
            "claimed", "telegram:42", "李经理", opened, True
        )
        assert case.fields["amount"] == Decimal("899.90") and case.fields["priority"] == "major"
        assert case.transcript == [{"role": "customer", "text": "床板裂了"}]
        assert (case.version, case.escalation_level) == (1, 0)
        assert (case.nature, case.solution, case.satisfaction) == (None, None, None)
        assert (case.first_contact_due, case.next_update_due, case.resolution_due) == (None, None, None)
        assert (case.first_contacted_at, case.resolved_at, case.closed_at) == (None, None, None)
        # Nothing the case had was cascaded away (no table rebuild).
        assert [e.kind for e in store.get_case_events(case_id)] == ["opened", "claimed"]
        assert [e.file_ref for e in store.evidence_for_case(case_id)] == ["AgAC-1"]
        assert [item.case_id for item in store.outbox_items()] == [case_id]
        # The upgraded case takes part in the new features.
        due = opened + timedelta(hours=24)
        with store.unit_of_work() as uow:
            updated = uow.update_case(case_id=case_id, expected_status="claimed", expected_version=1,
                                      changes={"nature": "quality", "first_contact_due": due},
                                      event=("classified", "telegram:42", {"nature": "quality"}), at=opened)
        assert updated is not None and updated.version == 2 and updated.nature == "quality"
        assert store.cases_due(now=due) == [updated] and store.cases_due(now=opened) == []
        assert store.open_cases_for_customer("telegram", "77") == [updated]
        assert store.cases_in_month(year=2026, month=11) == [updated]
    finally:
        engine.dispose()
