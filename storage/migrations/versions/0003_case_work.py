"""The work on a case after intake: nature, solution, deadlines, milestones, satisfaction, escalation, version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Upgrades a live 0002 database in place, like 0002: plain ALTER TABLE ADD COLUMN on both backends.
Existing cases get no deadlines, ``escalation_level`` 0 and ``version`` 1 through server defaults
(a NOT NULL column cannot be added without one). The deadline indexes are partial on open cases
so the deadline scanner reads a short index range however many cases are open or finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of storage.models.OPEN_CASE_SQL: a migration must create the same index forever,
# whatever the models say later.
_OPEN_CASE_SQL = "status NOT IN ('closed', 'rejected')"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    # recreate="never": a SQLite table rebuild would DROP TABLE cases, whose implicit DELETE fires
    # ON DELETE CASCADE and empties case_events and evidence (see 0002).
    with op.batch_alter_table("cases", recreate="never") as batch:
        batch.add_column(sa.Column("nature", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("solution", _json(), nullable=True))
        batch.add_column(sa.Column("first_contact_due", _timestamp(), nullable=True))
        batch.add_column(sa.Column("next_update_due", _timestamp(), nullable=True))
        batch.add_column(sa.Column("resolution_due", _timestamp(), nullable=True))
        batch.add_column(sa.Column("first_contacted_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("resolved_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("closed_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("satisfaction", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("escalation_level", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False))
    # Partial: only open cases with that deadline set, in deadline order (then id, so the scanner's
    # ORDER BY due, id LIMIT n is a range read with no sort).
    _create_deadline_index("first_contact_due")
    _create_deadline_index("next_update_due")
    _create_deadline_index("resolution_due")


def _create_deadline_index(column: str) -> None:
    where = sa.text(f"{_OPEN_CASE_SQL} AND {column} IS NOT NULL")
    op.create_index(f"ix_cases_{column}_open", "cases", [column, "id"], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    # Indexes first: SQLite refuses to drop a column an index (or its WHERE) uses.
    op.drop_index("ix_cases_resolution_due_open", table_name="cases")
    op.drop_index("ix_cases_next_update_due_open", table_name="cases")
    op.drop_index("ix_cases_first_contact_due_open", table_name="cases")
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), never a rebuild: see upgrade().
    with op.batch_alter_table("cases", recreate="never") as batch:
        batch.drop_column("version")
        batch.drop_column("escalation_level")
        batch.drop_column("satisfaction")
        batch.drop_column("closed_at")
        batch.drop_column("resolved_at")
        batch.drop_column("first_contacted_at")
        batch.drop_column("resolution_due")
        batch.drop_column("next_update_due")
        batch.drop_column("first_contact_due")
        batch.drop_column("solution")
        batch.drop_column("nature")
