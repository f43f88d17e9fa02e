"""Column types that behave the same on SQLite and PostgreSQL.

Migrations use the plain SQLAlchemy types these wrap (the DDL is identical), so these
decorators only change how Python values go in and come out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def utcnow() -> datetime:
    """Aware UTC now: every datetime this package stores or returns is aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Normalise to aware UTC; a naive value is refused because its zone is a guess."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
    return value.astimezone(UTC)


def clean_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; replace it on every backend so both store the same."""
    return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value


def _clean_json_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json_value(v) for v in value]
    return value


def dumps_json(value: Any) -> str:
    """Engine JSON serializer: readable non-ASCII on SQLite, and no NUL (PostgreSQL JSONB rejects it)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if "\\u0000" in text:  # rare: only pay for the walk when a NUL may be present
        text = json.dumps(_clean_json_value(value), ensure_ascii=False, allow_nan=False)
    return text


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE that always returns aware UTC (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class CleanText(TypeDecorator[str]):
    """TEXT for customer-typed content (any unicode, NUL replaced)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean_text(value)


class CleanString(TypeDecorator[str]):
    """VARCHAR (no length limit) for short customer-typed values (NUL replaced)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean_text(value)


def json_type(*, none_as_null: bool = False) -> TypeEngine[Any]:
    """JSON on SQLite, JSONB on PostgreSQL; ``none_as_null`` stores Python None as SQL NULL, not JSON null."""
    return JSON(none_as_null=none_as_null).with_variant(JSONB(none_as_null=none_as_null), "postgresql")
