"""The due each deadline's warning was sent for, so the deadline scanner can skip warned cases in SQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

Until 0003 the only record of a warning was the ``deadline_warning`` event on the timeline, so every
scan re-read each case inside the warning lead, and its timeline, to learn that nothing was owed.
``<deadline>_warned_due`` holds the due no warning is owed for any more; a partial index per deadline
keeps only the open cases whose warning is still owed (``storage.models.unwarned_sql``).

Existing cases are backfilled from their timelines, with the rule the scanner used until now: a
warning event for the deadline's current due, or an escalation that rescheduled the deadline to it
(a rescheduled due gets no warning). Plain ALTER TABLE ADD COLUMN on both backends, as in 0003.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (a migration must do the same forever, whatever the code says later).
_OPEN_CASE_SQL = "status NOT IN ('closed', 'rejected')"
_DEADLINES = {"first_contact": "first_contact_due", "next_update": "next_update_due",
              "resolution": "resolution_due"}
_HANDLED_BY = {"deadline_warning": "due", "escalated": "next_due", "still_overdue": "next_due"}
_CHUNK = 1000


def _warned(column: str) -> str:
    return column.replace("_due", "_warned_due")


def _unwarned_sql(column: str) -> str:
    warned = _warned(column)
    return f"{_OPEN_CASE_SQL} AND {column} IS NOT NULL AND ({warned} IS NULL OR {warned} <> {column})"


def _stamp(moment: datetime) -> str:
    """As the scanner wrote dues into events: UTC ISO 8601 (SQLite hands the column back naive, in UTC)."""
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)).isoformat()


def upgrade() -> None:
    with op.batch_alter_table("cases", recreate="never") as batch:  # never a rebuild: see 0003
        for column in _DEADLINES.values():
            batch.add_column(sa.Column(_warned(column), sa.DateTime(timezone=True), nullable=True))
    _backfill()
    for column in _DEADLINES.values():
        where = sa.text(_unwarned_sql(column))
        op.create_index(f"ix_cases_{column}_unwarned", "cases", [column, "id"], sqlite_where=where,
                        postgresql_where=where)


def _backfill() -> None:
    """Set the marker where the timeline shows the current due needs no warning (open cases only)."""
    if op.get_context().as_sql:  # offline SQL generation: there are no rows to read
        return
    conn = op.get_bind()
    moments = [*_DEADLINES.values(), *map(_warned, _DEADLINES.values())]
    cases = sa.table("cases", sa.column("id", sa.Integer), sa.column("status", sa.String),
                     *(sa.column(column, sa.DateTime(timezone=True)) for column in moments))
    events = sa.table("case_events", sa.column("case_id", sa.Integer), sa.column("kind", sa.String),
                      sa.column("data", sa.JSON))
    kinds = list(_HANDLED_BY)
    open_ids = sa.select(cases.c.id).where(sa.text(_OPEN_CASE_SQL))
    handled: set[tuple[int, str, str]] = set()
    query = sa.select(events.c.case_id, events.c.kind, events.c.data).where(
        events.c.kind.in_(kinds), events.c.case_id.in_(open_ids))
    for case_id, kind, data in conn.execute(query):  # data is always an object (UnitOfWork.add_case_event)
        handled.add((case_id, str(data.get("deadline")), str(data.get(_HANDLED_BY[kind]))))
    marked: dict[str, list[int]] = defaultdict(list)
    with_events = sa.select(events.c.case_id).where(events.c.kind.in_(kinds))
    candidates = sa.select(cases).where(sa.text(_OPEN_CASE_SQL), cases.c.id.in_(with_events))
    for row in conn.execute(candidates).mappings():
        for deadline, column in _DEADLINES.items():
            due = row[column]
            if due is not None and (row["id"], deadline, _stamp(due)) in handled:
                marked[column].append(row["id"])
    for column, ids in marked.items():
        for start in range(0, len(ids), _CHUNK):
            conn.execute(sa.update(cases).where(cases.c.id.in_(ids[start:start + _CHUNK]))
                         .values({_warned(column): cases.c[column]}))


def downgrade() -> None:
    for column in _DEADLINES.values():
        op.drop_index(f"ix_cases_{column}_unwarned", table_name="cases")
    with op.batch_alter_table("cases", recreate="never") as batch:
        for column in reversed(_DEADLINES.values()):
            batch.drop_column(_warned(column))
