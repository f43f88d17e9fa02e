"""Database fixtures shared by all tests.

- ``db_url``: URL of a fresh, empty (not migrated) database, parametrised over SQLite
  (a file in tmp_path) and PostgreSQL (a uniquely named database created from
  ``$KESU_TEST_PG_URL`` and dropped afterwards).
- ``store``: a migrated ``Store`` on ``db_url`` (so tests using it run on both backends).
- ``sqlite_store``: a migrated ``Store`` on a SQLite file only.

Without ``KESU_TEST_PG_URL`` the PostgreSQL cases are skipped, unless ``KESU_REQUIRE_PG=1``
(CI), in which case they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from storage.repository import Store

PG_URL_ENV = "KESU_TEST_PG_URL"
REQUIRE_PG_ENV = "KESU_REQUIRE_PG"
DB_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
# Read at start-up: channel tests clear every KESU_* variable so that only their own settings reach the
# app (test_telegram.py's clean_environment), and that must not switch the PostgreSQL matrix off.
PG_URL = os.environ.get(PG_URL_ENV)
REQUIRE_PG = os.environ.get(REQUIRE_PG_ENV) == "1"


def pg_base_url() -> str:
    """The PostgreSQL server to create test databases on; skips (or fails in CI) when unset."""
    if PG_URL:
        return PG_URL
    if REQUIRE_PG:
        pytest.fail(f"{REQUIRE_PG_ENV}=1 but {PG_URL_ENV} is not set", pytrace=False)
    pytest.skip(f"PostgreSQL tests need {PG_URL_ENV}")


@contextmanager
def fresh_pg_database(base_url: str) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, then drop it (after ending its sessions)."""
    name = f"kesu_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.dispose()


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'kesu.db'}"


@pytest.fixture(params=DB_BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """Which backend the database is on: "sqlite" or "postgres"."""
    backend: str = request.param
    return backend


@pytest.fixture
def db_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend."""
    if db_backend == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with fresh_pg_database(pg_base_url()) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated Store on each backend."""
    instance = Store.from_url(db_url)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A migrated Store on a SQLite file (for tests that need no backend matrix)."""
    instance = Store.from_url(sqlite_url(tmp_path))
    try:
        yield instance
    finally:
        instance.close()
