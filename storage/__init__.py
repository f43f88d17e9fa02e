"""Kesu's storage layer: schema (models), migrations, engines (db) and the Store interface (repository)."""
