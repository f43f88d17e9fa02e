"""The small storage interface the rest of Kesu uses.

One chat turn is one ``UnitOfWork``: record the inbound message, save the dialog state,
record the replies and sometimes open a case, all in one transaction. The hot path runs
prebuilt SQLAlchemy Core statements on the SQLModel tables (the ORM costs ~3x per insert)
and hands back frozen dataclasses, never ORM objects.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache, lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    RowMapping,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Executable

from storage.case_numbers import format_case_number, normalize_case_number
from storage.db import BEGIN_OPTION, make_engine, upgrade_schema
from storage.models import (
    CASE_DEADLINES,
    CASE_MILESTONES,
    CASE_WARNED_DUES,
    EVIDENCE_KINDS,
    NATURES,
    OUTBOX_ACTIVE_STATES,
    OUTBOX_STATES,
    PRIORITIES,
    PUBLIC_FIELDS,
    case_counters,
    case_events,
    cases,
    conversations,
    evidence,
    messages,
    open_case_predicate,
    outbox,
    unwarned_predicate,
)
from storage.sqltypes import as_utc

SHANGHAI = ZoneInfo("Asia/Shanghai")
"""Case numbers carry the day of opening as the customer sees it."""

_CENT = Decimal("0.01")
_MAX_AMOUNT = Decimal("1e10")  # Numeric(12, 2)

CASE_CHANGE_KEYS: frozenset[str] = frozenset(
    {
        "status",
        "owner",
        "owner_name",
        "claimed_at",
        "nature",
        "priority",
        "solution",
        *CASE_DEADLINES,
        *CASE_WARNED_DUES.values(),
        *CASE_MILESTONES,
        "satisfaction",
        "escalation_level",
    }
)
"""What ``UnitOfWork.update_case`` may change; the intake fields and the transcript are the customer's words."""

SOLUTION_KEYS: tuple[str, ...] = ("codes", "amount", "text", "proposed_by", "approved_by")
"""A case's ``solution``: codes ("refund", "repair", …), yuan as a string with cents or None, the words
the customer is shown, and the display names of who proposed and who approved (None until someone does)."""

_STATUS_LENGTH = 32  # cases.status is String(32); PostgreSQL would refuse longer, SQLite would not


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ConversationRecord:
    """A dialog's saved state; pass ``version`` back as ``expected_version`` when saving."""

    id: int
    channel: str
    customer_id: str
    state: dict[str, Any]
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    """One stored message; ``direction`` is "in" (customer) or "out" (Kesu)."""

    id: int
    channel: str
    customer_id: str
    direction: str
    text: str
    channel_message_id: str | None
    in_reply_to: int | None
    created_at: datetime


@dataclass(frozen=True)
class CaseDraft:
    """What the dialog collected, ready to become a case. Missing field keys mean None."""

    channel: str
    customer_id: str
    conversation_id: int
    fields: dict[str, Any]
    transcript: list[dict[str, str]]
    opened_at: datetime
    unrouted: bool = False
    """The mall has no staff group of its own: the notification goes to the deployment's fallback group."""


@dataclass(frozen=True)
class CaseEventRecord:
    """One entry of a case's timeline."""

    kind: str
    actor: str
    data: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class CaseRecord:
    """A stored case; ``fields`` has all public keys with Python types (Decimal, date, bool, list)."""

    id: int
    number: str
    status: str
    channel: str
    customer_id: str
    conversation_id: int
    created_at: datetime
    updated_at: datetime
    fields: dict[str, Any] = field(default_factory=dict)
    transcript: list[dict[str, str]] = field(default_factory=list)
    owner: str | None = None
    """Staff identity that claimed the case ("telegram:123456"); None until someone does."""
    owner_name: str | None = None
    claimed_at: datetime | None = None
    unrouted: bool = False
    nature: str | None = None
    """One of NATURES once staff classified the case."""
    solution: dict[str, Any] | None = None
    """See SOLUTION_KEYS; ``amount`` is a string ("123.45") because JSON has no decimals."""
    first_contact_due: datetime | None = None
    next_update_due: datetime | None = None
    resolution_due: datetime | None = None
    first_contact_warned_due: datetime | None = None
    next_update_warned_due: datetime | None = None
    resolution_warned_due: datetime | None = None
    """The due each deadline's warning is no longer owed for (``CASE_WARNED_DUES``; the scanner's)."""
    first_contacted_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    satisfaction: int | None = None
    """The customer's 1..5 answer to the follow-up."""
    escalation_level: int = 0
    version: int = 1
    """Bumped by every change; pass it back as ``expected_version`` to act only on what you saw."""

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready view with the product's public keys, for the CLI, exports and APIs.

        The owner's display name is shown, never the staff identity (a platform account id).
        The keys are exactly the intake-era ones: the work after intake (nature, solution, deadlines,
        satisfaction, …) is read from the record's attributes.
        """
        out: dict[str, Any] = {
            "number": self.number,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
        }
        for key in PUBLIC_FIELDS:
            out[key] = _json_value(self.fields.get(key))
        out["owner_name"] = self.owner_name
        out["unrouted"] = self.unrouted
        return out


@dataclass(frozen=True)
class OutboxItem:
    """A message to push; ``state`` is one of OUTBOX_STATES and ``attempts`` counts claims so far.

    A claimed item's ``attempts`` is also its claim's fencing token: pass it back as ``attempt`` to
    the outbox transitions, and a dispatcher whose lease lapsed (the item claimed again since) changes nothing.
    """

    id: int
    kind: str
    channel: str
    target: str
    payload: dict[str, Any]
    case_id: int | None
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    external_id: str | None
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True)
class EvidenceRecord:
    """A photo or document reference a customer sent; ``case_id`` is None until its case is opened."""

    id: int
    channel: str
    customer_id: str
    case_id: int | None
    kind: str
    file_ref: str
    file_name: str | None
    mime: str | None
    caption: str | None
    created_at: datetime


class StaleConversation(Exception):
    """Another turn saved this conversation first; the caller reloads and retries."""


class CaseNotFound(LookupError):
    """No case has this id (a claim button for a case that was deleted, or a caller bug)."""


# --------------------------------------------------------------------------- conversions


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return list(value)
    return value


def _to_amount(value: Any) -> Decimal | None:
    """Yuan as Decimal with cents; floats go through str() so 3500.5 stays 3500.50."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise ValueError(f"amount must be a number, got {value!r}")
    try:
        amount = Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:
        raise ValueError(f"amount must be a number, got {value!r}") from exc
    if not amount.is_finite() or abs(amount) >= _MAX_AMOUNT:
        raise ValueError(f"amount out of range: {value!r}")
    return amount


def _to_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value)
    raise ValueError(f"expected a date, got {value!r}")


def _case_field_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a draft's fields into column values; unknown keys are a caller bug, not data to drop."""
    unknown = set(fields) - set(PUBLIC_FIELDS)
    if unknown:
        raise ValueError(f"unknown case fields: {sorted(unknown)}")
    values = {key: fields.get(key) for key in PUBLIC_FIELDS}
    values["amount"] = _to_amount(values["amount"])
    values["purchase_date"] = _to_date(values["purchase_date"])
    values["delivery_date"] = _to_date(values["delivery_date"])
    values["priority"] = values["priority"] or "normal"
    if values["priority"] not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {values['priority']!r}")
    values["expectation"] = [str(item) for item in values["expectation"] or []]
    return values


def _aware_or_none(key: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"{key} must be an aware datetime or None, got {value!r}")
    return as_utc(value)


def _small_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _text_or_none(key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string or None, got {value!r}")
    return None if value is None else str(value)


def _solution_value(value: Any) -> dict[str, Any] | None:
    """Check a solution's shape (SOLUTION_KEYS) and store its amount as a string with cents."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"solution must be a dict or None, got {value!r}")
    unknown = set(value) - set(SOLUTION_KEYS)
    if unknown:
        raise ValueError(f"unknown solution keys: {sorted(unknown)}")
    codes = value.get("codes")
    if not isinstance(codes, list | tuple) or not all(isinstance(code, str) for code in codes):
        raise ValueError(f"solution codes must be a list of strings, got {codes!r}")
    for key in ("text", "proposed_by"):
        if not isinstance(value.get(key), str):
            raise ValueError(f"solution {key} must be a string, got {value.get(key)!r}")
    amount = _to_amount(value.get("amount"))
    if amount is not None and amount < 0:
        raise ValueError(f"solution amount cannot be negative, got {value.get('amount')!r}")
    return {
        "codes": list(codes),
        "amount": None if amount is None else str(amount),
        "text": value["text"],
        "proposed_by": value["proposed_by"],
        "approved_by": _text_or_none("solution approved_by", value.get("approved_by")),
    }


def _case_change_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``update_case`` changes into column values; an unknown key is a caller bug, never dropped."""
    unknown = set(changes) - CASE_CHANGE_KEYS
    if unknown:
        raise ValueError(f"case fields that update_case cannot change: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "status":
            if not isinstance(value, str) or not 0 < len(value) <= _STATUS_LENGTH:
                raise ValueError(f"status must be a non-empty string of at most {_STATUS_LENGTH}, got {value!r}")
            values[key] = str(value)  # a StrEnum member goes in as its plain value
        elif key in ("owner", "owner_name"):
            values[key] = _text_or_none(key, value)
        elif key == "nature":
            if value is not None and value not in NATURES:
                raise ValueError(f"nature must be one of {NATURES} or None, got {value!r}")
            values[key] = None if value is None else str(value)
        elif key == "priority":
            if value not in PRIORITIES:
                raise ValueError(f"priority must be one of {PRIORITIES}, got {value!r}")
            values[key] = str(value)
        elif key == "solution":
            values[key] = _solution_value(value)
        elif key == "satisfaction":
            if value is not None and not 1 <= _small_int(key, value) <= 5:
                raise ValueError(f"satisfaction must be 1..5 or None, got {value!r}")
            values[key] = value
        elif key == "escalation_level":
            if _small_int(key, value) < 0:
                raise ValueError(f"escalation_level must be >= 0, got {value!r}")
            values[key] = value
        else:  # claimed_at, the deadlines, their warned dues and the milestones
            values[key] = _aware_or_none(key, value)
    return values


def _conversation_record(row: RowMapping) -> ConversationRecord:
    return ConversationRecord(
        id=row["id"],
        channel=row["channel"],
        customer_id=row["customer_id"],
        state=row["state"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


def _message_record(row: RowMapping) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        channel=row["channel"],
        customer_id=row["customer_id"],
        direction=row["direction"],
        text=row["text"],
        channel_message_id=row["channel_message_id"],
        in_reply_to=row["in_reply_to"],
        created_at=row["created_at"],
    )


def _case_record(row: RowMapping) -> CaseRecord:
    return CaseRecord(
        id=row["id"],
        number=row["number"],
        status=row["status"],
        channel=row["channel"],
        customer_id=row["customer_id"],
        conversation_id=row["conversation_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        fields={key: row[key] for key in PUBLIC_FIELDS},
        transcript=row["transcript"],
        owner=row["owner"],
        owner_name=row["owner_name"],
        claimed_at=row["claimed_at"],
        unrouted=row["unrouted"],
        nature=row["nature"],
        solution=row["solution"],
        first_contact_due=row["first_contact_due"],
        next_update_due=row["next_update_due"],
        resolution_due=row["resolution_due"],
        first_contact_warned_due=row["first_contact_warned_due"],
        next_update_warned_due=row["next_update_warned_due"],
        resolution_warned_due=row["resolution_warned_due"],
        first_contacted_at=row["first_contacted_at"],
        resolved_at=row["resolved_at"],
        closed_at=row["closed_at"],
        satisfaction=row["satisfaction"],
        escalation_level=row["escalation_level"],
        version=row["version"],
    )


def _event_record(row: RowMapping) -> CaseEventRecord:
    return CaseEventRecord(
        kind=row["kind"], actor=row["actor"], data=row["data"], created_at=row["created_at"]
    )


def _outbox_item(row: RowMapping) -> OutboxItem:
    return OutboxItem(
        id=row["id"],
        kind=row["kind"],
        channel=row["channel"],
        target=row["target"],
        payload=row["payload"],
        case_id=row["case_id"],
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        external_id=row["external_id"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
    )


def _evidence_record(row: RowMapping) -> EvidenceRecord:
    return EvidenceRecord(
        id=row["id"],
        channel=row["channel"],
        customer_id=row["customer_id"],
        case_id=row["case_id"],
        kind=row["kind"],
        file_ref=row["file_ref"],
        file_name=row["file_name"],
        mime=row["mime"],
        caption=row["caption"],
        created_at=row["created_at"],
    )


def shanghai_day(moment: datetime) -> date:
    """The calendar day in Asia/Shanghai: 16:00 UTC is already tomorrow there."""
    return as_utc(moment).astimezone(SHANGHAI).date()


def shanghai_month(year: int, month: int) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in Asia/Shanghai, as aware UTC (a month starts at 16:00 UTC)."""
    start = datetime(year, month, 1, tzinfo=SHANGHAI)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=SHANGHAI)
    return as_utc(start), as_utc(end)


# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class _Statements:
    """Hot-path statements built once per dialect (their compiled form and cache key are reused)."""

    load_conversation: Executable
    insert_inbound: Executable
    insert_outbound: Executable
    insert_conversation: Executable
    update_conversation: Executable
    next_counter: Executable
    insert_case: Executable
    insert_event: Executable
    find_inbound: Executable
    replies_after: Executable
    claim_case: Executable
    cases_due: Executable
    insert_outbox: Executable
    insert_evidence: Executable
    attach_evidence: Executable
    claim_due: Executable
    mark_attempting: Executable
    mark_sent: Executable
    mark_retry: Executable
    mark_failed: Executable
    mark_uncertain: Executable
    defer: Executable


def _claim_due(dialect_name: str) -> Executable:
    """Lease the oldest due items in one statement: pending and due, or held under a lapsed lease.

    A lapsed lease means the dispatcher that held the item died (or stalled). "sending" items were
    never handed to the platform: they are claimed as "sending" again, safe to send. "attempting"
    items were being handed over: they stay "attempting", so the caller sees the send was
    interrupted and decides (``bot/dispatch.py``: staff messages again, customer messages never).
    Every claim counts one more attempt, which makes ``attempts`` the claim's fencing token.
    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` in a MATERIALIZED CTE (evaluated once, so the LIMIT
    holds) lets several dispatchers take disjoint batches without waiting on each other; a row
    another one claimed and committed meanwhile is re-checked against the WHERE and dropped.
    SQLite: the caller's BEGIN IMMEDIATE already makes this the only writer.
    Items for the (channel, target) pairs in ``:busy`` (expanding) are left alone: the caller is
    still sending to them, and a target gets one message at a time.
    """
    o = outbox.c
    now = bindparam("now", type_=o.next_attempt_at.type)
    due = (
        select(o.id)
        .where(
            or_(
                and_(o.state == "pending", o.next_attempt_at <= now),
                *(and_(o.state == state, o.lease_until < now) for state in OUTBOX_ACTIVE_STATES),
            ),
            tuple_(o.channel, o.target).not_in(bindparam("busy", expanding=True)),
        )
        .order_by(o.next_attempt_at, o.id)
        .limit(bindparam("limit", type_=Integer()))
    )
    claim = update(outbox).values(
        state=case((o.state == "attempting", "attempting"), else_="sending"),
        attempts=o.attempts + 1,
        lease_until=bindparam("lease_until", type_=o.lease_until.type),
        updated_at=bindparam("now", type_=o.updated_at.type),
    )
    if dialect_name == "postgresql":
        taken = due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
        return claim.where(o.id == taken.c.id).returning(*outbox.c)
    return claim.where(o.id.in_(due.scalar_subquery())).returning(*outbox.c)


def _cases_due() -> Executable:
    """Open cases with a deadline at or before ``:now``, or one at or before ``:warn_until`` whose
    warning is still owed; earliest such deadline first, at most ``:limit``.

    Two ordered range reads per deadline, each stopped after ``:limit`` rows: the passed ones on
    ``ix_cases_<deadline>_open``, the ones to warn about on ``ix_cases_<deadline>_unwarned``, which
    warned cases have left. So a pass costs O(limit) however many cases are open or already warned.
    A case's place is its earliest qualifying deadline; a case cut from the branch that gives it has
    at least ``:limit`` cases before it there, so the outer LIMIT drops it anyway. The predicates are
    the literal SQL the indexes were built with; with bound values neither backend could prove the
    index applies.
    """
    c = cases.c
    now = bindparam("now", type_=c.first_contact_due.type)
    warn_until = bindparam("warn_until", type_=c.first_contact_due.type)
    limit = bindparam("limit", type_=Integer())
    branches = []
    for name in CASE_DEADLINES:
        due = c[name]
        ranges = {"due": (open_case_predicate(), now), "warn": (unwarned_predicate(name), warn_until)}
        for label, (predicate, until) in ranges.items():
            branch = (
                select(c.id, due.label("due"))
                .where(predicate, due <= until)
                .order_by(due, c.id)
                .limit(limit)
                .subquery(f"{label}_{name}")
            )
            branches.append(select(branch.c.id, branch.c.due))
    candidates = union_all(*branches).subquery("candidates")
    earliest = (
        select(candidates.c.id, func.min(candidates.c.due).label("due"))
        .group_by(candidates.c.id)
        .order_by(func.min(candidates.c.due), candidates.c.id)
        .limit(limit)
        .subquery("earliest")
    )
    return (
        select(cases)
        .join_from(cases, earliest, c.id == earliest.c.id)
        .order_by(earliest.c.due, c.id)
    )


@lru_cache(maxsize=256)
def _update_case(keys: tuple[str, ...], check_status: bool, check_version: bool) -> Executable:
    """The conditional UPDATE of ``UnitOfWork.update_case`` for one set of changed columns, built once.

    Callers change a handful of column sets, so each shape is built (and compiled) once, like the
    statements of ``_Statements``.
    """
    c = cases.c
    where = [c.id == bindparam("w_id")]
    if check_status:
        where.append(c.status.in_(bindparam("w_status", expanding=True)))
    if check_version:
        where.append(c.version == bindparam("w_version"))
    return (
        update(cases)
        .where(*where)
        .values(
            {
                **{key: bindparam(key, type_=c[key].type) for key in keys},
                "version": c.version + 1,
                "updated_at": bindparam("at", type_=c.updated_at.type),
            }
        )
        .returning(*cases.c)
    )


@cache
def _statements(dialect_name: str) -> _Statements:
    upsert: Callable[..., postgresql.Insert | sqlite.Insert]
    if dialect_name == "postgresql":
        upsert = postgresql.insert
    elif dialect_name == "sqlite":
        upsert = sqlite.insert
    else:
        raise NotImplementedError(f"unsupported database dialect: {dialect_name}")
    m, c, o, e = messages.c, conversations.c, outbox.c, evidence.c
    return _Statements(
        load_conversation=select(conversations).where(
            c.channel == bindparam("channel"), c.customer_id == bindparam("customer_id")
        ),
        insert_inbound=upsert(messages)
        .on_conflict_do_nothing(index_elements=[m.channel, m.customer_id, m.channel_message_id])
        .returning(m.id),
        insert_outbound=insert(messages),
        insert_conversation=upsert(conversations)
        .on_conflict_do_nothing(index_elements=[c.channel, c.customer_id])
        .returning(c.id),
        update_conversation=update(conversations)
        .where(
            c.channel == bindparam("w_channel"),
            c.customer_id == bindparam("w_customer_id"),
            c.version == bindparam("w_version"),
        )
        .values(
            state=bindparam("state", type_=c.state.type),
            updated_at=bindparam("updated_at", type_=c.updated_at.type),
            version=c.version + 1,
        )
        .returning(c.id, c.version),
        next_counter=upsert(case_counters)
        .on_conflict_do_update(
            index_elements=[case_counters.c.day],
            set_={"last_value": case_counters.c.last_value + 1},
        )
        .returning(case_counters.c.last_value),
        insert_case=insert(cases).returning(cases.c.id),
        insert_event=insert(case_events),
        find_inbound=select(m.id, m.customer_id).where(
            m.channel == bindparam("channel"),
            m.customer_id == bindparam("customer_id"),
            m.channel_message_id == bindparam("channel_message_id"),
            m.direction == "in",
        ),
        replies_after=select(m.text)
        .where(
            m.channel == bindparam("channel"),
            m.customer_id == bindparam("customer_id"),
            m.id > bindparam("inbound_id"),
            m.in_reply_to == bindparam("inbound_id"),
            m.direction == "out",
        )
        .order_by(m.id),
        claim_case=update(cases)
        .where(cases.c.id == bindparam("w_id"), cases.c.owner.is_(None))
        .values(
            owner=bindparam("owner", type_=cases.c.owner.type),
            owner_name=bindparam("owner_name", type_=cases.c.owner_name.type),
            claimed_at=bindparam("at", type_=cases.c.claimed_at.type),
            status="claimed",
            updated_at=bindparam("at", type_=cases.c.updated_at.type),
            version=cases.c.version + 1,  # a claim is a case change: actions based on the unclaimed case fail
        )
        .returning(cases.c.id),
        cases_due=_cases_due(),
        insert_outbox=insert(outbox).returning(o.id),
        insert_evidence=insert(evidence).returning(e.id),
        attach_evidence=update(evidence)
        .where(
            e.channel == bindparam("w_channel"),
            e.customer_id == bindparam("w_customer_id"),
            e.case_id.is_(None),
        )
        .values(case_id=bindparam("case_id", type_=e.case_id.type)),
        claim_due=_claim_due(dialect_name),
        **_outbox_transitions(dialect_name),
    )


def _outbox_transitions(dialect_name: str) -> dict[str, Executable]:
    """The UPDATEs that move a claimed outbox item on (see ``UnitOfWork.mark_attempting`` and the rest).

    All but ``mark_sent`` are fenced: they apply only while the item is still held by the caller's
    claim (``attempts = :w_attempt`` in an active state). A dispatcher whose lease lapsed and whose
    item was claimed again since can therefore neither send it a second time nor undo what the new
    holder records. ``mark_sent`` is not fenced: the platform took the message, and that is the
    truth whatever another dispatcher recorded meanwhile; only a first "sent" is kept.
    """
    o = outbox.c
    at = bindparam("at", type_=o.updated_at.type)

    def held(*states: str) -> Any:
        return and_(o.id == bindparam("w_id"), o.state.in_(states), o.attempts == bindparam("w_attempt"))

    return {
        "mark_attempting": update(outbox)
        .where(held(*OUTBOX_ACTIVE_STATES))
        .values(
            state="attempting",
            lease_until=bindparam("lease_until", type_=o.lease_until.type),
            updated_at=at,
        ),
        "mark_sent": update(outbox)
        .where(o.id == bindparam("w_id"), o.state != "sent")
        .values(
            state="sent",
            external_id=bindparam("external_id", type_=o.external_id.type),
            lease_until=None,
            sent_at=bindparam("at", type_=o.sent_at.type),
            updated_at=at,
        ),
        "mark_retry": update(outbox)
        .where(held(*OUTBOX_ACTIVE_STATES))
        .values(
            state="pending",
            last_error=bindparam("last_error", type_=o.last_error.type),
            next_attempt_at=bindparam("next_attempt_at", type_=o.next_attempt_at.type),
            lease_until=None,
            updated_at=at,
        ),
        "mark_failed": update(outbox)
        .where(held(*OUTBOX_ACTIVE_STATES))
        .values(
            state="failed",
            last_error=bindparam("last_error", type_=o.last_error.type),
            lease_until=None,
            updated_at=at,
        ),
        "mark_uncertain": update(outbox)
        .where(held("attempting"))
        .values(
            state="uncertain",
            last_error=bindparam("last_error", type_=o.last_error.type),
            lease_until=None,
            updated_at=at,
        ),
        # Handed back untried (the sender's own rate limit): the claim's attempt is given back.
        # Only the holder's last step, so the fencing token cannot repeat while a stale holder
        # still acts: every later claim counts up again from here.
        "defer": update(outbox)
        .where(held(*OUTBOX_ACTIVE_STATES))
        .values(
            state="pending",
            attempts=func.max(o.attempts - 1, 0) if dialect_name == "sqlite" else func.greatest(o.attempts - 1, 0),
            next_attempt_at=bindparam("next_attempt_at", type_=o.next_attempt_at.type),
            lease_until=None,
            updated_at=at,
        ),
    }


# --------------------------------------------------------------------------- unit of work


class Reader:
    """The queries, on one connection: a snapshot read, or the reads inside a turn's transaction."""

    def __init__(self, connection: Connection, statements: _Statements) -> None:
        self._conn = connection
        self._sql = statements

    def load_conversation(self, channel: str, customer_id: str) -> ConversationRecord | None:
        """The dialog state to continue from, or None for a first-time customer."""
        params = {"channel": channel, "customer_id": customer_id}
        row = self._conn.execute(self._sql.load_conversation, params).mappings().first()
        return None if row is None else _conversation_record(row)

    def replies_for(self, channel: str, customer_id: str, channel_message_id: str) -> list[str] | None:
        """What we answered to this customer's inbound message, so a platform retry gets the same answer."""
        params = {"channel": channel, "customer_id": customer_id, "channel_message_id": channel_message_id}
        inbound = self._conn.execute(self._sql.find_inbound, params).first()
        if inbound is None:
            return None
        params = {"channel": channel, "customer_id": customer_id, "inbound_id": inbound[0]}
        return list(self._conn.execute(self._sql.replies_after, params).scalars())

    def get_case(self, number: str) -> CaseRecord | None:
        """Look a case up by what a customer or staff member typed; a wrong check digit finds nothing."""
        canonical = normalize_case_number(number)
        if canonical is None:
            return None
        row = self._conn.execute(select(cases).where(cases.c.number == canonical)).mappings().first()
        return None if row is None else _case_record(row)

    def get_case_by_id(self, case_id: int) -> CaseRecord | None:
        """The case behind a staff button or an outbox item (they carry the id, not the number)."""
        row = self._conn.execute(select(cases).where(cases.c.id == case_id)).mappings().first()
        return None if row is None else _case_record(row)

    def get_case_events(self, case_id: int) -> list[CaseEventRecord]:
        """A case's timeline, oldest first."""
        query = select(case_events).where(case_events.c.case_id == case_id).order_by(case_events.c.id)
        return [_event_record(row) for row in self._conn.execute(query).mappings()]

    def list_cases(self, *, limit: int = 50, offset: int = 0, mall: str | None = None) -> list[CaseRecord]:
        """Staff listing, newest first, optionally for one mall."""
        query = (
            select(cases).order_by(cases.c.created_at.desc(), cases.c.id.desc()).limit(limit).offset(offset)
        )
        if mall is not None:
            query = query.where(cases.c.mall == mall)
        return self._cases(query)

    def cases_for_customer(self, channel: str, customer_id: str) -> list[CaseRecord]:
        """A customer's own cases, newest first (never anyone else's: privacy)."""
        query = (
            select(cases)
            .where(cases.c.channel == channel, cases.c.customer_id == customer_id)
            .order_by(cases.c.created_at.desc(), cases.c.id.desc())
        )
        return self._cases(query)

    def open_cases_for_customer(self, channel: str, customer_id: str) -> list[CaseRecord]:
        """A customer's cases that are not closed or rejected, newest first ("我的投诉怎么样了")."""
        query = (
            select(cases)
            .where(cases.c.channel == channel, cases.c.customer_id == customer_id, open_case_predicate())
            .order_by(cases.c.created_at.desc(), cases.c.id.desc())
        )
        return self._cases(query)

    def cases_due(self, *, now: datetime, limit: int = 500, warn_until: datetime | None = None) -> list[CaseRecord]:
        """Open cases with a deadline (first contact, next update, resolution) at or before ``now``,
        and those with one at or before ``warn_until`` that no warning was recorded for
        (``CASE_WARNED_DUES`` differs from the deadline).

        Earliest deadline first, at most ``limit``: the deadline scanner works through them and
        records what it did with ``update_case(expected_version=...)``, so when several processes
        scan at once each reminder or escalation is written once. Finished cases never show up,
        whatever deadlines they kept.
        """
        if limit <= 0:
            return []
        params = {"now": as_utc(now), "warn_until": as_utc(warn_until or now), "limit": limit}
        return self._cases(self._sql.cases_due, params)

    def cases_in_month(self, *, year: int, month: int) -> list[CaseRecord]:
        """Cases opened in a calendar month as Shanghai counts it, oldest first, for the monthly report."""
        start, end = shanghai_month(year, month)
        query = (
            select(cases)
            .where(cases.c.created_at >= start, cases.c.created_at < end)
            .order_by(cases.c.created_at, cases.c.id)
        )
        return self._cases(query)

    def messages(self, channel: str, customer_id: str, *, limit: int = 200) -> list[MessageRecord]:
        """The newest ``limit`` messages of a customer, oldest first (for transcripts and staff)."""
        query = (
            select(messages)
            .where(messages.c.channel == channel, messages.c.customer_id == customer_id)
            .order_by(messages.c.id.desc())
            .limit(limit)
        )
        rows = [_message_record(row) for row in self._conn.execute(query).mappings()]
        rows.reverse()
        return rows

    def evidence_for_case(self, case_id: int) -> list[EvidenceRecord]:
        """The photos and documents attached to a case, in the order the customer sent them."""
        query = select(evidence).where(evidence.c.case_id == case_id).order_by(evidence.c.id)
        return [_evidence_record(row) for row in self._conn.execute(query).mappings()]

    def outbox_items(
        self, *, state: str | None = None, case_id: int | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        """Outbox items newest first, optionally of one state or case, so stuck or failed pushes are visible."""
        query = select(outbox).order_by(outbox.c.created_at.desc(), outbox.c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(outbox.c.state == state)
        if case_id is not None:
            query = query.where(outbox.c.case_id == case_id)
        return [_outbox_item(row) for row in self._conn.execute(query).mappings()]

    def outbox_counts(self) -> dict[str, int]:
        """Items per state; every state of OUTBOX_STATES is present, so a health check can read 0."""
        query = select(outbox.c.state, func.count()).group_by(outbox.c.state)
        counts = dict.fromkeys(OUTBOX_STATES, 0)
        for state, count in self._conn.execute(query):
            counts[state] = count
        return counts

    def _cases(self, query: Executable, params: Mapping[str, Any] | None = None) -> list[CaseRecord]:
        return [_case_record(row) for row in self._conn.execute(query, params).mappings()]


class UnitOfWork(Reader):
    """One transaction (one chat turn): the reads of ``Reader`` plus the writes.

    Obtain it from ``Store.unit_of_work()``.
    """

    def record_inbound(
        self, *, channel: str, customer_id: str, text: str, at: datetime, channel_message_id: str | None
    ) -> int | None:
        """Store a customer message; None means the platform retried one we already have."""
        params = {
            "channel": channel,
            "customer_id": customer_id,
            "direction": "in",
            "text": text,
            "channel_message_id": channel_message_id,
            "in_reply_to": None,
            "created_at": as_utc(at),
        }
        new_id: int | None = self._conn.execute(self._sql.insert_inbound, params).scalar_one_or_none()
        return new_id

    def save_conversation(
        self,
        *,
        channel: str,
        customer_id: str,
        state: dict[str, Any],
        expected_version: int | None,
        at: datetime,
    ) -> ConversationRecord:
        """Insert (expected_version None) or compare-and-swap update; a lost race raises StaleConversation."""
        at = as_utc(at)
        if expected_version is None:
            params = {
                "channel": channel,
                "customer_id": customer_id,
                "state": state,
                "version": 1,
                "created_at": at,
                "updated_at": at,
            }
            row_id = self._conn.execute(self._sql.insert_conversation, params).scalar_one_or_none()
            if row_id is None:
                raise StaleConversation(f"conversation {channel}/{customer_id} already exists")
            version = 1
        else:
            params = {
                "w_channel": channel,
                "w_customer_id": customer_id,
                "w_version": expected_version,
                "state": state,
                "updated_at": at,
            }
            found = self._conn.execute(self._sql.update_conversation, params).first()
            if found is None:
                raise StaleConversation(f"conversation {channel}/{customer_id} is past v{expected_version}")
            row_id, version = found
        return ConversationRecord(
            id=row_id, channel=channel, customer_id=customer_id, state=state, version=version, updated_at=at
        )

    def record_outbound(
        self, *, channel: str, customer_id: str, texts: list[str], in_reply_to: int | None, at: datetime
    ) -> None:
        """Store Kesu's replies in order, linked to the inbound message they answer (for retries)."""
        if not texts:
            return
        at = as_utc(at)
        rows = [
            {
                "channel": channel,
                "customer_id": customer_id,
                "direction": "out",
                "text": text,
                "channel_message_id": None,
                "in_reply_to": in_reply_to,
                "created_at": at,
            }
            for text in texts
        ]
        self._conn.execute(self._sql.insert_outbound, rows)

    def open_case(self, draft: CaseDraft) -> CaseRecord:
        """Allocate the next number of the Shanghai day atomically, insert the case and its "opened" event."""
        values = _case_field_values(draft.fields)
        opened_at = as_utc(draft.opened_at)
        day = shanghai_day(opened_at)
        counter: int = self._conn.execute(
            self._sql.next_counter, {"day": f"{day:%y%m%d}", "last_value": 1}
        ).scalar_one()
        number = format_case_number(day, counter)
        transcript = [dict(turn) for turn in draft.transcript]
        case_id: int = self._conn.execute(
            self._sql.insert_case,
            {
                "number": number,
                "status": "new",
                "channel": draft.channel,
                "customer_id": draft.customer_id,
                "conversation_id": draft.conversation_id,
                "created_at": opened_at,
                "updated_at": opened_at,
                **values,
                "transcript": transcript,
                "owner": None,
                "owner_name": None,
                "claimed_at": None,
                "unrouted": draft.unrouted,
                "nature": None,
                "solution": None,
                **dict.fromkeys((*CASE_DEADLINES, *CASE_MILESTONES)),
                "satisfaction": None,
                "escalation_level": 0,
                "version": 1,
            },
        ).scalar_one()
        self.add_case_event(
            case_id=case_id, kind="opened", actor="customer", data={"channel": draft.channel}, at=opened_at
        )
        return CaseRecord(
            id=case_id,
            number=number,
            status="new",
            channel=draft.channel,
            customer_id=draft.customer_id,
            conversation_id=draft.conversation_id,
            created_at=opened_at,
            updated_at=opened_at,
            fields=values,
            transcript=transcript,
            unrouted=draft.unrouted,
        )

    def add_case_event(
        self, *, case_id: int, kind: str, actor: str, data: dict[str, Any], at: datetime
    ) -> None:
        """Append to a case's timeline (the history a hand-over must keep)."""
        params = {"case_id": case_id, "kind": kind, "actor": actor, "data": data, "created_at": as_utc(at)}
        self._conn.execute(self._sql.insert_event, params)

    def claim_case(self, *, case_id: int, owner: str, owner_name: str, at: datetime) -> tuple[bool, CaseRecord]:
        """Make ``owner`` the case's owner unless someone already is; True if this call won.

        One conditional UPDATE (``WHERE owner IS NULL``) decides, so of two staff tapping "claim"
        at once exactly one wins on either backend: PostgreSQL re-checks the condition after
        waiting for the winner's row lock, SQLite has one writer. The loser gets the current case
        to say who has it. Only the winner writes the "claimed" event.
        """
        at = as_utc(at)
        params = {"w_id": case_id, "owner": owner, "owner_name": owner_name, "at": at}
        won = self._conn.execute(self._sql.claim_case, params).first() is not None
        if won:
            self.add_case_event(
                case_id=case_id, kind="claimed", actor=owner, data={"owner_name": owner_name}, at=at
            )
        case = self.get_case_by_id(case_id)
        if case is None:
            raise CaseNotFound(f"no case with id {case_id}")
        return won, case

    def update_case(
        self,
        *,
        case_id: int,
        expected_status: str | tuple[str, ...] | None,
        expected_version: int | None = None,
        changes: dict[str, Any],
        event: tuple[str, str, dict[str, Any]] | None,
        at: datetime,
    ) -> CaseRecord | None:
        """Apply ``changes`` if the case is still as the caller saw it; the updated case, or None.

        One conditional UPDATE (``WHERE id = :id [AND status IN expected] [AND version = expected]``)
        decides, as in ``claim_case``: of two staff acting on the same state at once exactly one
        succeeds on either backend. It sets ``changes`` (keys: CASE_CHANGE_KEYS, anything else is a
        ValueError, as is a value of the wrong kind), bumps ``version`` and sets ``updated_at`` to
        ``at``. Empty ``changes`` still bump the version (an answer or a note recorded against
        the state it answers). None means the condition failed (someone changed the case first,
        or no case has this id): nothing was written, and the caller reloads and tells the user.
        Only on success is ``event`` = (kind, actor, data) added to the timeline, in this transaction.
        """
        values = _case_change_values(changes)
        statuses = (expected_status,) if isinstance(expected_status, str) else expected_status
        if statuses is not None and not statuses:
            raise ValueError("expected_status must name at least one status, or be None")
        at = as_utc(at)
        statement = _update_case(tuple(sorted(values)), statuses is not None, expected_version is not None)
        params: dict[str, Any] = {"w_id": case_id, "at": at, **values}
        if statuses is not None:
            params["w_status"] = [str(status) for status in statuses]
        if expected_version is not None:
            params["w_version"] = expected_version
        row = self._conn.execute(statement, params).mappings().first()
        if row is None:
            return None
        if event is not None:
            kind, actor, data = event
            self.add_case_event(case_id=case_id, kind=kind, actor=actor, data=data, at=at)
        return _case_record(row)

    def enqueue(
        self,
        *,
        kind: str,
        channel: str,
        target: str,
        payload: dict[str, Any],
        case_id: int | None,
        at: datetime,
    ) -> int:
        """Queue a push in this turn's transaction: it is sent if and only if the turn commits."""
        at = as_utc(at)
        params = {
            "kind": kind,
            "channel": channel,
            "target": target,
            "payload": payload,
            "case_id": case_id,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": at,
            "lease_until": None,
            "last_error": None,
            "external_id": None,
            "created_at": at,
            "updated_at": at,
            "sent_at": None,
        }
        item_id: int = self._conn.execute(self._sql.insert_outbox, params).scalar_one()
        return item_id

    # A dispatcher's steps for one claimed item (``Store.claim_due``). Each returns whether it applied.
    # All but ``mark_sent`` apply only while the item is still held by the claim whose ``attempts``
    # is passed as ``attempt``: the fencing token that keeps a dispatcher whose lease lapsed out.

    def mark_attempting(self, item_id: int, *, attempt: int, lease_until: datetime, at: datetime) -> bool:
        """The item is about to be handed to the platform: commit this before the call.

        False means the claim is no longer ours (its lease lapsed and someone claimed it since):
        do not send. ``lease_until`` is renewed to cover the platform call. After a crash an item
        found "attempting" may or may not have reached the platform.
        """
        params = {"w_id": item_id, "w_attempt": attempt, "lease_until": as_utc(lease_until), "at": as_utc(at)}
        return self._conn.execute(self._sql.mark_attempting, params).rowcount == 1

    def mark_sent(self, item_id: int, *, external_id: str | None, at: datetime) -> bool:
        """Delivered; ``external_id`` is the platform's message id, kept to edit the message later.

        Not fenced: the platform took it, whatever was recorded meanwhile. A first "sent" is kept.
        """
        params = {"w_id": item_id, "external_id": external_id, "at": as_utc(at)}
        return self._conn.execute(self._sql.mark_sent, params).rowcount == 1

    def mark_retry(self, item_id: int, *, attempt: int, error: str, next_attempt_at: datetime, at: datetime) -> bool:
        """A transient failure: back to pending until ``next_attempt_at``."""
        params = {
            "w_id": item_id,
            "w_attempt": attempt,
            "last_error": error,
            "next_attempt_at": as_utc(next_attempt_at),
            "at": as_utc(at),
        }
        return self._conn.execute(self._sql.mark_retry, params).rowcount == 1

    def mark_failed(self, item_id: int, *, attempt: int, error: str, at: datetime) -> bool:
        """A permanent failure (blocked bot, bad target): never retried."""
        params = {"w_id": item_id, "w_attempt": attempt, "last_error": error, "at": as_utc(at)}
        return self._conn.execute(self._sql.mark_failed, params).rowcount == 1

    def mark_uncertain(self, item_id: int, *, attempt: int, error: str, at: datetime) -> bool:
        """An "attempting" item that may or may not have reached the platform, and is never sent again.

        Final, like "failed": a person checks with the recipient. ``error`` says why it is uncertain.
        """
        params = {"w_id": item_id, "w_attempt": attempt, "last_error": error, "at": as_utc(at)}
        return self._conn.execute(self._sql.mark_uncertain, params).rowcount == 1

    def defer(self, item_id: int, *, attempt: int, next_attempt_at: datetime, at: datetime) -> bool:
        """Hand a claimed item back untried (the sender's own rate limit was full): pending again
        until ``next_attempt_at``, and the attempt its claim counted is given back, so waiting for a
        slot never brings an item nearer to failing. ``last_error`` is kept.
        """
        params = {"w_id": item_id, "w_attempt": attempt, "next_attempt_at": as_utc(next_attempt_at),
                  "at": as_utc(at)}
        return self._conn.execute(self._sql.defer, params).rowcount == 1

    def add_evidence(
        self,
        *,
        channel: str,
        customer_id: str,
        kind: str,
        file_ref: str,
        file_name: str | None,
        mime: str | None,
        caption: str | None,
        channel_message_id: str | None,
        at: datetime,
        case_id: int | None = None,
    ) -> int:
        """Keep a reference to a file the customer sent; it joins their case when it is opened (or
        ``case_id``, an open case it was sent for)."""
        if kind not in EVIDENCE_KINDS:
            raise ValueError(f"evidence kind must be one of {EVIDENCE_KINDS}, got {kind!r}")
        params = {
            "channel": channel,
            "customer_id": customer_id,
            "case_id": case_id,
            "kind": kind,
            "file_ref": file_ref,
            "file_name": file_name,
            "mime": mime,
            "caption": caption,
            "channel_message_id": channel_message_id,
            "created_at": as_utc(at),
        }
        evidence_id: int = self._conn.execute(self._sql.insert_evidence, params).scalar_one()
        return evidence_id

    def attach_evidence(self, *, channel: str, customer_id: str, case_id: int) -> int:
        """Link this customer's not-yet-attached evidence to ``case_id``; returns how many were linked.

        Matching on (channel, customer_id) means another customer's files never join the case.
        """
        params = {"w_channel": channel, "w_customer_id": customer_id, "case_id": case_id}
        return self._conn.execute(self._sql.attach_evidence, params).rowcount


# --------------------------------------------------------------------------- store


class Store:
    """Entry point: reads on short snapshot connections, writes through ``unit_of_work()``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})  # SQLite: no write lock
        self._sql = _statements(engine.dialect.name)
        # SQLite has one writer at a time. Threads of this process queue on a lock instead of in
        # SQLite's busy handler, whose sleeps of up to 100 ms made the p99 of a 1 ms turn 400 ms
        # under 16 threads (benchmarks/turn_throughput.py). Other processes still queue on
        # busy_timeout.
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext())

    @classmethod
    def from_url(cls, url: str, *, migrate: bool = True) -> Store:
        """Engine for ``url``, schema brought up to date unless ``migrate`` is False."""
        engine = make_engine(url)
        if migrate:
            upgrade_schema(engine)
        return cls(engine)

    @property
    def engine(self) -> Engine:
        """The underlying engine, for tools that need more than this interface."""
        return self._engine

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """One transaction: commits on normal exit, rolls back if the block raises."""
        return self._transaction()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[UnitOfWork]:
        with self._writing() as connection:
            yield UnitOfWork(connection, self._sql)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._write_lock, self._engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def reading(self) -> Iterator[Reader]:
        """A short read-only snapshot; on SQLite it never waits for the write lock."""
        with self._reader.connect() as connection:
            yield Reader(connection, self._sql)

    def load_conversation(self, channel: str, customer_id: str) -> ConversationRecord | None:
        with self.reading() as reader:
            return reader.load_conversation(channel, customer_id)

    def replies_for(self, channel: str, customer_id: str, channel_message_id: str) -> list[str] | None:
        with self.reading() as reader:
            return reader.replies_for(channel, customer_id, channel_message_id)

    def get_case(self, number: str) -> CaseRecord | None:
        with self.reading() as reader:
            return reader.get_case(number)

    def get_case_by_id(self, case_id: int) -> CaseRecord | None:
        with self.reading() as reader:
            return reader.get_case_by_id(case_id)

    def get_case_events(self, case_id: int) -> list[CaseEventRecord]:
        with self.reading() as reader:
            return reader.get_case_events(case_id)

    def list_cases(self, *, limit: int = 50, offset: int = 0, mall: str | None = None) -> list[CaseRecord]:
        with self.reading() as reader:
            return reader.list_cases(limit=limit, offset=offset, mall=mall)

    def cases_for_customer(self, channel: str, customer_id: str) -> list[CaseRecord]:
        with self.reading() as reader:
            return reader.cases_for_customer(channel, customer_id)

    def open_cases_for_customer(self, channel: str, customer_id: str) -> list[CaseRecord]:
        with self.reading() as reader:
            return reader.open_cases_for_customer(channel, customer_id)

    def cases_due(self, *, now: datetime, limit: int = 500, warn_until: datetime | None = None) -> list[CaseRecord]:
        with self.reading() as reader:
            return reader.cases_due(now=now, limit=limit, warn_until=warn_until)

    def cases_in_month(self, *, year: int, month: int) -> list[CaseRecord]:
        with self.reading() as reader:
            return reader.cases_in_month(year=year, month=month)

    def messages(self, channel: str, customer_id: str, *, limit: int = 200) -> list[MessageRecord]:
        with self.reading() as reader:
            return reader.messages(channel, customer_id, limit=limit)

    def evidence_for_case(self, case_id: int) -> list[EvidenceRecord]:
        with self.reading() as reader:
            return reader.evidence_for_case(case_id)

    def outbox_items(
        self, *, state: str | None = None, case_id: int | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        with self.reading() as reader:
            return reader.outbox_items(state=state, case_id=case_id, limit=limit)

    def outbox_counts(self) -> dict[str, int]:
        with self.reading() as reader:
            return reader.outbox_counts()

    # ------------------------------------------------------------------ outbox dispatch
    # Each call is its own short write transaction: a dispatcher holds no transaction while it
    # talks to a platform, only the lease recorded on the items it took.

    def claim_due(
        self,
        *,
        now: datetime,
        limit: int = 20,
        lease: timedelta = timedelta(seconds=60),
        busy: Collection[tuple[str, str]] = (),
    ) -> list[OutboxItem]:
        """Take up to ``limit`` due items (oldest first) for ``lease``; no two callers get the same item.

        Due means pending with ``next_attempt_at <= now``, or "sending"/"attempting" with a lapsed
        lease (its dispatcher died or stalled). A lapsed "sending" item was never handed to the
        platform and comes back "sending"; a lapsed "attempting" one comes back "attempting": its
        send was interrupted and may or may not have arrived, the caller decides. Each taken item
        counts one more attempt, and that ``attempts`` is the claim's fencing token for the steps
        that follow (``mark_attempting``, then ``mark_sent``, ``mark_retry``, ``mark_failed``,
        ``mark_uncertain`` or ``defer``). An item left unfinished when the lease runs out is due again.
        Items to the ``busy`` (channel, target) pairs are not taken: the caller is still sending to them.
        """
        if lease <= timedelta(0):
            raise ValueError(f"lease must be positive, got {lease!r}")
        if limit <= 0:
            return []
        now = as_utc(now)
        params = {"now": now, "lease_until": now + lease, "limit": limit, "busy": list(busy)}
        with self._writing() as connection:
            rows = connection.execute(self._sql.claim_due, params).mappings().all()
        # RETURNING order is unspecified (PostgreSQL returns join order): restore the claim order.
        return sorted((_outbox_item(row) for row in rows), key=lambda item: (item.next_attempt_at, item.id))

    # One short write transaction each; a dispatcher that records more with the outcome (a case
    # event, a staff message) calls the same steps on a ``unit_of_work()`` instead.

    def mark_attempting(self, item_id: int, *, attempt: int, lease_until: datetime, at: datetime) -> bool:
        """See ``UnitOfWork.mark_attempting``: commit this before the platform call; False: do not send."""
        with self.unit_of_work() as uow:
            return uow.mark_attempting(item_id, attempt=attempt, lease_until=lease_until, at=at)

    def mark_sent(self, item_id: int, *, external_id: str | None, at: datetime) -> bool:
        """See ``UnitOfWork.mark_sent``."""
        with self.unit_of_work() as uow:
            return uow.mark_sent(item_id, external_id=external_id, at=at)

    def mark_retry(self, item_id: int, *, attempt: int, error: str, next_attempt_at: datetime, at: datetime) -> bool:
        """See ``UnitOfWork.mark_retry``."""
        with self.unit_of_work() as uow:
            return uow.mark_retry(item_id, attempt=attempt, error=error, next_attempt_at=next_attempt_at, at=at)

    def mark_failed(self, item_id: int, *, attempt: int, error: str, at: datetime) -> bool:
        """See ``UnitOfWork.mark_failed``."""
        with self.unit_of_work() as uow:
            return uow.mark_failed(item_id, attempt=attempt, error=error, at=at)

    def mark_uncertain(self, item_id: int, *, attempt: int, error: str, at: datetime) -> bool:
        """See ``UnitOfWork.mark_uncertain``."""
        with self.unit_of_work() as uow:
            return uow.mark_uncertain(item_id, attempt=attempt, error=error, at=at)

    def defer(self, item_id: int, *, attempt: int, next_attempt_at: datetime, at: datetime) -> bool:
        """See ``UnitOfWork.defer``."""
        with self.unit_of_work() as uow:
            return uow.defer(item_id, attempt=attempt, next_attempt_at=next_attempt_at, at=at)

    def close(self) -> None:
        """Release pooled connections."""
        self._engine.dispose()



__all__ = [
    "CASE_CHANGE_KEYS",
    "SOLUTION_KEYS",
    "CaseDraft",
    "CaseEventRecord",
    "CaseNotFound",
    "CaseRecord",
    "ConversationRecord",
    "EvidenceRecord",
    "MessageRecord",
    "OutboxItem",
    "Reader",
    "StaleConversation",
    "Store",
    "UnitOfWork",
    "shanghai_day",
    "shanghai_month",
]
