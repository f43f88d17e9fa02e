"""Alembic migrations for the Kesu schema (run them with ``storage.db.upgrade_schema``)."""
