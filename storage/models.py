"""The schema. These SQLModel tables are the source of truth; Alembic migrations create them.

The hot path does not use these classes as ORM objects: the repository runs SQLAlchemy Core
statements on ``Model.__table__``. The classes still work with a Session for staff tools.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    TextClause,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel

from storage.sqltypes import CleanString, CleanText, UTCDateTime, json_type, utcnow

PUBLIC_FIELDS: tuple[str, ...] = (
    "name",
    "phone",
    "city",
    "mall",
    "amount",
    "purchase_date",
    "brand",
    "delivery_date",
    "delivery_address",
    "order_no",
    "over_warranty",
    "priority",
    "description",
    "expectation",
)
"""The product's public case field names (PRODUCT.md field table), in the script's order."""

PRIORITIES: tuple[str, ...] = ("normal", "important", "major")

NATURES: tuple[str, ...] = ("quality", "service", "sales", "delivery")
"""What a complaint is about: product quality, service, sales, delivery & installation (the seeds' classes)."""

FINISHED_STATUSES: tuple[str, ...] = ("closed", "rejected")
"""A case in one of these is done: its deadlines no longer run and "my complaints" skips it."""

CASE_DEADLINES: tuple[str, ...] = ("first_contact_due", "next_update_due", "resolution_due")
"""The promises kept on a case, scanned by ``Reader.cases_due``; None means nothing is promised."""

CASE_WARNED_DUES: dict[str, str] = {
    "first_contact_due": "first_contact_warned_due",
    "next_update_due": "next_update_warned_due",
    "resolution_due": "resolution_warned_due",
}
"""Deadline column → the due no warning is owed for any more (one was sent, or an escalation set it).

Compared with the deadline itself, so any change of the deadline makes its warning owed again without
the writer knowing about warnings; ``Reader.cases_due`` filters on it through a partial index.
"""

CASE_MILESTONES: tuple[str, ...] = ("first_contacted_at", "resolved_at", "closed_at")
"""When the case reached each step, for the SLA figures of the monthly report."""

OPEN_CASE_SQL = "status NOT IN (" + ", ".join(f"'{status}'" for status in FINISHED_STATUSES) + ")"
"""SQL for "not finished", with the statuses as literals, not bound parameters.

The deadline indexes are partial on this predicate, and a query can only use a partial index if its
WHERE contains the same expression: PostgreSQL cannot prove it from ``$1`` placeholders (in a generic
plan) and SQLite matches terms literally. Queries on those indexes use this text as it is.
"""

OUTBOX_STATES: tuple[str, ...] = ("pending", "sending", "attempting", "sent", "failed", "uncertain")
"""An outbox item's life (``bot/dispatch.py`` tells the whole story):

pending → sending (claimed by a dispatcher under a lease) → attempting (committed just before the platform
call) → sent; or back to pending (retry later, or handed back untried), or failed for good. "uncertain" is
final too: the platform call of a customer message was interrupted (a crash, a timeout, a partial send), so
it may or may not have arrived, and it is not sent again: a person checks with the customer.
"""

OUTBOX_ACTIVE_STATES: tuple[str, ...] = ("sending", "attempting")
"""States held under a dispatcher's lease; the others are waiting (pending) or final."""

EVIDENCE_KINDS: tuple[str, ...] = ("photo", "document", "voice", "video", "other")
"""What a customer can send besides text; adapters map anything else to "other"."""


class Conversation(SQLModel, table=True):
    """One dialog per (channel, customer); ``version`` guards concurrent turns."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("channel", "customer_id", name="uq_conversations_channel_customer"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(sa_type=String, nullable=False)
    customer_id: str = Field(sa_type=String, nullable=False)
    state: dict[str, Any] = Field(default_factory=dict, sa_type=json_type(), nullable=False)
    version: int = Field(default=1, sa_type=Integer, nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Message(SQLModel, table=True):
    """Every inbound and outbound text; (channel, customer_id, channel_message_id) deduplicates retries.

    The customer is part of the key because platform message ids are only unique per chat
    (Telegram numbers each chat's messages from 1): another customer's id must never match.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "customer_id", "channel_message_id", name="uq_messages_channel_message_id"),
        Index("ix_messages_channel_customer_id", "channel", "customer_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(sa_type=String, nullable=False)
    customer_id: str = Field(sa_type=String, nullable=False)
    direction: str = Field(sa_type=String(3), nullable=False)  # "in" | "out"
    text: str = Field(sa_type=CleanText, nullable=False)
    channel_message_id: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    in_reply_to: int | None = Field(default=None, sa_type=Integer, nullable=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def open_case_predicate() -> TextClause:
    """``OPEN_CASE_SQL`` as a clause, for the queries that must match the partial indexes built on it."""
    return text(OPEN_CASE_SQL)


def _deadline_index(column: str) -> Index:
    """Open cases with this deadline set, in deadline order: the scanner reads a short index range.

    Partial, so neither finished cases (which may keep stale deadlines) nor cases without a promise
    take space or scan time; ``id`` breaks ties so ``ORDER BY due, id LIMIT n`` needs no sort.
    """
    where = text(f"{OPEN_CASE_SQL} AND {column} IS NOT NULL")
    return Index(f"ix_cases_{column}_open", column, "id", sqlite_where=where, postgresql_where=where)


def unwarned_predicate(column: str) -> TextClause:
    """Open, with this deadline set and its warning still owed: literal SQL, as ``open_case_predicate``."""
    warned = CASE_WARNED_DUES[column]
    return text(f"{OPEN_CASE_SQL} AND {column} IS NOT NULL AND ({warned} IS NULL OR {warned} <> {column})")


def _unwarned_index(column: str) -> Index:
    """Open cases whose warning for this deadline is still owed, in deadline order.

    Warned cases leave it, so a scan that has nothing to warn about reads an empty range instead of
    every case inside the warning lead.
    """
    where = unwarned_predicate(column)
    return Index(f"ix_cases_{column}_unwarned", column, "id", sqlite_where=where, postgresql_where=where)


class Case(SQLModel, table=True):
    """A complaint: the public fields, the transcript it was taken from, and the work on it since."""

    __tablename__ = "cases"
    __table_args__ = (
        UniqueConstraint("number", name="uq_cases_number"),
        Index("ix_cases_created_at", "created_at"),
        Index("ix_cases_mall_created_at", "mall", "created_at"),
        Index("ix_cases_customer", "channel", "customer_id", "created_at"),
        *(_deadline_index(column) for column in CASE_DEADLINES),
        *(_unwarned_index(column) for column in CASE_DEADLINES),
    )

    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(sa_type=String(20), nullable=False)
    status: str = Field(default="new", sa_type=String(32), nullable=False)
    channel: str = Field(sa_type=String, nullable=False)
    customer_id: str = Field(sa_type=String, nullable=False)
    conversation_id: int = Field(sa_type=Integer, nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)

    name: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    phone: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    city: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    mall: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    amount: Decimal | None = Field(default=None, sa_type=Numeric(12, 2), nullable=True)
    purchase_date: date | None = Field(default=None, sa_type=Date, nullable=True)
    brand: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    delivery_date: date | None = Field(default=None, sa_type=Date, nullable=True)
    delivery_address: str | None = Field(default=None, sa_type=CleanText, nullable=True)
    order_no: str | None = Field(default=None, sa_type=CleanText, nullable=True)
    over_warranty: bool | None = Field(default=None, sa_type=Boolean, nullable=True)
    priority: str = Field(default="normal", sa_type=String(16), nullable=False)
    description: str | None = Field(default=None, sa_type=CleanText, nullable=True)
    expectation: list[str] = Field(default_factory=list, sa_type=json_type(), nullable=False)
    transcript: list[dict[str, str]] = Field(default_factory=list, sa_type=json_type(), nullable=False)

    # Who handles it: set once, by the first staff member to claim it (see UnitOfWork.claim_case).
    owner: str | None = Field(default=None, sa_type=CleanString, nullable=True)  # "telegram:123456"
    owner_name: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    # The mall had no staff group of its own, so the case went to the deployment's fallback group.
    # The server default fills the rows that existed before the column did.
    unrouted: bool = Field(
        default=False, sa_type=Boolean, nullable=False, sa_column_kwargs={"server_default": false()}
    )

    # The work after intake (migration 0003). Changed only through UnitOfWork.update_case.
    nature: str | None = Field(default=None, sa_type=String(16), nullable=True)  # NATURES
    # {"codes": [...], "amount": "123.45" | None, "text": str, "proposed_by": str, "approved_by": str | None};
    # SQL NULL (not JSON null) when there is none, so "solution IS NULL" means what it says.
    solution: dict[str, Any] | None = Field(default=None, sa_type=json_type(none_as_null=True), nullable=True)
    first_contact_due: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    next_update_due: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    resolution_due: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    # CASE_WARNED_DUES (migration 0004): written by the deadline scanner only.
    first_contact_warned_due: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    next_update_warned_due: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    resolution_warned_due: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    first_contacted_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    satisfaction: int | None = Field(default=None, sa_type=Integer, nullable=True)  # 1..5, from the follow-up
    # Each missed deadline raises it: 0 owner, 1 mall manager, 2 escalation group.
    escalation_level: int = Field(
        default=0, sa_type=Integer, nullable=False, sa_column_kwargs={"server_default": text("0")}
    )
    # Bumped by every change to the case: staff and scanners pass it back as expected_version, so
    # an action based on what someone saw fails instead of overwriting what changed since.
    version: int = Field(default=1, sa_type=Integer, nullable=False, sa_column_kwargs={"server_default": text("1")})


class CaseEvent(SQLModel, table=True):
    """The case timeline (opened, field changes, claims, …): append-only."""

    __tablename__ = "case_events"
    __table_args__ = (Index("ix_case_events_case_id", "case_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(
        sa_type=Integer,
        sa_column_args=[ForeignKey("cases.id", name="fk_case_events_case_id", ondelete="CASCADE")],
        nullable=False,
    )
    kind: str = Field(sa_type=String(64), nullable=False)
    actor: str = Field(sa_type=String, nullable=False)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=json_type(), nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class CaseCounter(SQLModel, table=True):
    """Last case counter handed out per Shanghai day ("YYMMDD"); upserted atomically."""

    __tablename__ = "case_counters"

    day: str = Field(sa_type=String(6), primary_key=True)
    last_value: int = Field(default=0, sa_type=Integer, nullable=False)


class Outbox(SQLModel, table=True):
    """Every message Kesu must push, written in the transaction of the change that caused it.

    A crash can then never lose a notification nor send one for a change that rolled back;
    a dispatcher delivers the rows afterwards (``Store.claim_due``): staff messages at least once,
    customer messages at most once (see ``bot/dispatch.py``).
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_outbox_case_id", "case_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=String(64), nullable=False)  # "staff_notification" | "customer_reply" | …
    channel: str = Field(sa_type=String, nullable=False)  # "telegram" | "wechat" | "wecom" | …
    target: str = Field(sa_type=String, nullable=False)  # chat id, openid, robot key
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=json_type(), nullable=False)
    # SET NULL: the delivery log outlives a deleted case (what was pushed to whom stays auditable).
    case_id: int | None = Field(
        default=None,
        sa_type=Integer,
        sa_column_args=[ForeignKey("cases.id", name="fk_outbox_case_id", ondelete="SET NULL")],
        nullable=True,
    )
    state: str = Field(default="pending", sa_type=String(16), nullable=False)  # OUTBOX_STATES
    # Claims so far; also the claim's fencing token (see Store.claim_due).
    attempts: int = Field(default=0, sa_type=Integer, nullable=False)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    last_error: str | None = Field(default=None, sa_type=CleanText, nullable=True)
    external_id: str | None = Field(default=None, sa_type=String, nullable=True)  # to edit the message later
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class Evidence(SQLModel, table=True):
    """Photos and documents a customer sent; kept unattached until their case is opened.

    Only the platform's reference is stored (file id, media id or URL), never the bytes.
    """

    __tablename__ = "evidence"
    __table_args__ = (Index("ix_evidence_channel_customer_case", "channel", "customer_id", "case_id"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(sa_type=String, nullable=False)
    customer_id: str = Field(sa_type=String, nullable=False)
    # CASCADE: evidence belongs to its case; set free, it would be attached to the customer's next case.
    case_id: int | None = Field(
        default=None,
        sa_type=Integer,
        sa_column_args=[ForeignKey("cases.id", name="fk_evidence_case_id", ondelete="CASCADE")],
        nullable=True,
    )
    kind: str = Field(sa_type=String(16), nullable=False)  # EVIDENCE_KINDS
    file_ref: str = Field(sa_type=CleanString, nullable=False)
    file_name: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    mime: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    caption: str | None = Field(default=None, sa_type=CleanText, nullable=True)
    channel_message_id: str | None = Field(default=None, sa_type=CleanString, nullable=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def table_of(model: type[SQLModel]) -> Table:
    """The Core ``Table`` of a model, typed (``__table__`` is untyped on SQLModel classes)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


conversations = table_of(Conversation)
messages = table_of(Message)
cases = table_of(Case)
case_events = table_of(CaseEvent)
case_counters = table_of(CaseCounter)
outbox = table_of(Outbox)
evidence = table_of(Evidence)
