"""Case owner and routing flag, the outbox of messages to push, and customer evidence.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Upgrades a live 0001 database in place: existing cases keep their data, get no owner, and
``unrouted`` false through its server default (a NOT NULL column cannot be added without one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    # recreate="never": plain ALTER TABLE ADD COLUMN on both backends. A SQLite table rebuild would
    # DROP TABLE cases, whose implicit DELETE fires ON DELETE CASCADE and empties case_events.
    with op.batch_alter_table("cases", recreate="never") as batch:
        batch.add_column(sa.Column("owner", sa.String(), nullable=True))
        batch.add_column(sa.Column("owner_name", sa.String(), nullable=True))
        batch.add_column(sa.Column("claimed_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("unrouted", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _timestamp(), nullable=False),
        sa.Column("lease_until", _timestamp(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("external_id", sa.String(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("sent_at", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_outbox_case_id", ondelete="SET NULL"),
    )
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_case_id", "outbox", ["case_id"])
    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("file_ref", sa.String(), nullable=False),
        sa.Column("file_name", sa.String(), nullable=True),
        sa.Column("mime", sa.String(), nullable=True),
        sa.Column("caption", sa.Text(), nullable=True),
        sa.Column("channel_message_id", sa.String(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name="fk_evidence_case_id", ondelete="CASCADE"),
    )
    op.create_index("ix_evidence_channel_customer_case", "evidence", ["channel", "customer_id", "case_id"])


def downgrade() -> None:
    op.drop_index("ix_evidence_channel_customer_case", table_name="evidence")
    op.drop_table("evidence")
    op.drop_index("ix_outbox_case_id", table_name="outbox")
    op.drop_index("ix_outbox_state_next_attempt_at", table_name="outbox")
    op.drop_table("outbox")
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), never a rebuild: see upgrade().
    with op.batch_alter_table("cases", recreate="never") as batch:
        batch.drop_column("unrouted")
        batch.drop_column("claimed_at")
        batch.drop_column("owner_name")
        batch.drop_column("owner")
