"""Staff work on cases: one service for every front end (Telegram groups, the CLI, a console later).

Authorization and the lifecycle live here, not in adapters:
- who: with a staff directory in the catalog, only listed staff serving the case's mall; without
  one, whoever acts from a staff group serving that mall (the group is the directory). A
  customer's private chat never qualifies, whatever it sends.
- what: `bot.lifecycle` decides which action applies in which state; money beyond the actor's
  limit waits for an approver.
- every change is one transaction: the case update (conditional on its state, so two people
  pressing at once cannot corrupt it), its timeline event, and the messages it causes — to the
  customer on their own channel, to staff groups — queued in the outbox.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bot.config import Settings
from bot.customer_push import push_to_customer
from bot.deadlines import CONTACT_ACTIONS, NOTHING_OWED, DeadlinePolicy
from bot.lifecycle import (
    DEFAULT_LIMITS,
    MONEY_CODES,
    SOLUTION_CODES,
    Action,
    ApprovalRule,
    NotAllowedNow,
    Status,
    next_status,
)
from bot.notify import StaffNotifier
from bot.outbound import OutboundMessage
from bot.templating import Renderer
from dialogs.catalog import Catalog
from dialogs.engine import AwaitingCase, DialogState
from storage.models import NATURES, PRIORITIES
from storage.repository import CaseRecord, Store, UnitOfWork

log = logging.getLogger(__name__)

CUSTOMER_LEFT = "customer_unsubscribed"
# "48h 品牌方已安排检测" / "3天 …": when the next news is promised, written before the message.
_PROMISE = re.compile(r"^\s*(?P<count>\d{1,3})\s*(?P<unit>h|小时|d|天)(?:\s+|$)(?P<rest>.*)$",
                      re.DOTALL | re.IGNORECASE)
# A next update promised further out than this is a typo (a year for a month), not a promise.
MAX_PROMISE = timedelta(days=30)


def split_promise(text: str) -> tuple[timedelta | None, str]:
    """("48h 品牌方已安排检测") → (48 hours, "品牌方已安排检测"): staff name the next update in front."""
    match = _PROMISE.match(text)
    if match is None:
        return None, text
    count = int(match["count"])
    amount = timedelta(days=count) if match["unit"].lower() in ("d", "天") else timedelta(hours=count)
    return amount, match["rest"].strip()


@dataclass(frozen=True)
class StaffMember:
    id: str  # "telegram:123456"
    name: str
    role: str | None = None  # only trusted without a staff directory (the CLI operator says who they are)


@dataclass(frozen=True)
class ClaimResult:
    allowed: bool
    won: bool
    case: CaseRecord | None


@dataclass(frozen=True)
class ActionResult:
    """What happened; `refusal` names the template that explains a refusal to the staff member."""

    case: CaseRecord | None
    refusal: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.refusal is None


class StaffService:
    def __init__(self, store: Store, catalog: Catalog, settings: Settings, renderer: Renderer | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_outbox: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.catalog = catalog
        self.renderer = renderer or Renderer()
        self.clock = clock
        self.on_outbox = on_outbox
        self.notifier = StaffNotifier(catalog, self.renderer, settings)
        self.approval = ApprovalRule({**DEFAULT_LIMITS, **catalog.approval_limits})
        self.deadlines = DeadlinePolicy.from_settings(settings)  # what each action does to the case's deadlines
        self.deployment_chats = {chat for chat in (settings.fallback_telegram_chat, settings.escalation_telegram_chat)
                                 if chat is not None}

    # ------------------------------------------------------------------ who may act

    def telegram_chat_serves(self, chat_id: int, case: CaseRecord) -> bool:
        """Only members of a staff group that receives this case's notifications may act on it."""
        if chat_id in self.deployment_chats:
            return True
        mall = self.catalog.mall(case.fields.get("mall") or "")
        return mall is not None and mall.serves_telegram_chat(chat_id)

    def is_staff_chat(self, chat_id: int) -> bool:
        return chat_id in self.deployment_chats or any(m.serves_telegram_chat(chat_id) for m in self.catalog.malls)

    def authorized(self, member: StaffMember, case: CaseRecord, *, telegram_chat: int | None) -> bool:
        """Both must hold: the chat (if any) serves the case's mall, and the directory (if any) lists the member."""
        if telegram_chat is not None and not self.telegram_chat_serves(telegram_chat, case):
            return False
        if self.catalog.staff:
            entry = self.catalog.staff_member(member.id)
            return entry is not None and entry.serves(case.fields.get("mall"))
        return True  # no directory: the staff group is the directory; the CLI operator (no chat) is trusted

    def role_of(self, member: StaffMember) -> str:
        """The directory decides when there is one; otherwise a stated role, else the lowest."""
        if self.catalog.staff:
            entry = self.catalog.staff_member(member.id)
            return entry.role if entry else "specialist"
        return member.role or "specialist"

    def find(self, number: str) -> CaseRecord | None:
        return self.store.get_case(number)

    # ------------------------------------------------------------------ actions

    def claim(self, number: str, member: StaffMember, *, telegram_chat: int | None) -> ClaimResult:
        """First claimer owns the case (首问负责制); later claimers learn who does."""
        case = self.store.get_case(number)
        if case is None or not self.authorized(member, case, telegram_chat=telegram_chat):
            return ClaimResult(allowed=False, won=False, case=case)
        with self.store.unit_of_work() as uow:
            won, current = uow.claim_case(case_id=case.id, owner=member.id, owner_name=member.name, at=self.clock())
            if won:
                self._tell_customer(uow, current, "case/claimed", {"case": current})
        self.on_outbox()
        return ClaimResult(allowed=True, won=won, case=current)

    def act(self, number: str, action: Action, member: StaffMember, *, telegram_chat: int | None = None,
            text: str = "", codes: tuple[str, ...] = (), amount: Decimal | None = None, to: str | None = None,
            nature: str | None = None, priority: str | None = None,
            next_update: datetime | None = None) -> ActionResult:
        """Any staff action but claim; refusals come back as template names, never exceptions.

        ``next_update``: when the customer was told to expect the next news (a progress update that
        names it); the deadline then follows that promise instead of the default interval.
        """
        case = self.store.get_case(number)
        if case is None:
            return ActionResult(None, "staff/case_not_found")
        if not self.authorized(member, case, telegram_chat=telegram_chat):
            return ActionResult(case, "staff/not_allowed")
        if action in (Action.ASK, Action.PROGRESS, Action.REJECT, Action.NOTE) and not text.strip():
            return ActionResult(case, "staff/text_required", {"action": action.value})
        if (nature is not None and nature not in NATURES) or (priority is not None and priority not in PRIORITIES) \
                or (action is Action.CLASSIFY and nature is None and priority is None):
            return ActionResult(case, "staff/classify_what", {"natures": NATURES, "priorities": PRIORITIES})
        try:
            target = next_status(action, case.status)
        except NotAllowedNow:
            return ActionResult(case, "staff/not_now", {"action": action.value, "state": case.status})
        now = self.clock()
        if next_update is not None and (action not in CONTACT_ACTIONS or Status(case.status) in NOTHING_OWED
                                        or not now < next_update <= now + MAX_PROMISE):
            return ActionResult(case, "staff/next_update_invalid", {"action": action.value})
        with self.store.unit_of_work() as uow:
            result = self._apply(uow, case, action, target, member, now, text=text, codes=codes, amount=amount,
                                 to=to, nature=nature, priority=priority, next_update=next_update)
        self.on_outbox()
        return result

    def _apply(self, uow: UnitOfWork, case: CaseRecord, action: Action, target: Status | None,
               member: StaffMember, now: datetime, *, text: str, codes: tuple[str, ...], amount: Decimal | None,
               to: str | None, nature: str | None, priority: str | None,
               next_update: datetime | None) -> ActionResult:
        changes: dict[str, Any] = {}
        data: dict[str, Any] = {"by": member.name}
        customer: tuple[str, dict[str, Any], str | None] | None = None  # template, context, awaited reply kind
        if text:
            data["text"] = text
        if action is Action.PROPOSE:
            unknown = [code for code in codes if code not in SOLUTION_CODES]
            if unknown:
                return ActionResult(case, "staff/unknown_code", {"codes": unknown})
            if MONEY_CODES & set(codes) and (amount is None or amount <= 0):
                return ActionResult(case, "staff/amount_required", {})
            solution = {"codes": list(codes), "amount": str(amount) if amount is not None else None, "text": text,
                        "proposed_by": member.name, "approved_by": None}
            changes["solution"] = solution
            if self.approval.needs_approval(list(codes), amount, self.role_of(member)):
                target = Status.AWAITING_APPROVAL
                data["approver_role"] = self.approval.approver_for(amount or Decimal(0))
            else:
                customer = ("case/solution", {"solution": solution}, "solution")
        elif action is Action.APPROVE:
            solution = dict(case.solution or {})
            amount_due = Decimal(str(solution.get("amount") or 0))
            if not self.approval.may_approve(self.role_of(member), amount_due):
                return ActionResult(case, "staff/approval_limit",
                                    {"approver_role": self.approval.approver_for(amount_due)})
            solution["approved_by"] = member.name
            changes["solution"] = solution
            customer = ("case/solution", {"solution": solution}, "solution")
        elif action is Action.REASSIGN:
            entry = self.catalog.staff_member(to or "")
            if to is None or (self.catalog.staff and (entry is None or not entry.serves(case.fields.get("mall")))):
                return ActionResult(case, "staff/unknown_member", {"to": to})
            changes |= {"owner": to, "owner_name": entry.name if entry else to}
            data |= {"from": case.owner_name, "to": changes["owner_name"]}
        elif action is Action.ASK:
            customer = ("case/question", {"question": text}, "question")
        elif action is Action.PROGRESS:
            customer = ("case/progress", {"progress": text}, None)
        elif action is Action.REJECT:
            customer = ("case/rejected", {"reason": text}, None)
        elif action is Action.RESOLVE:
            changes["resolved_at"] = now
            target = Status.FOLLOW_UP  # the satisfaction question goes out with the resolution
            customer = ("case/resolved", {"summary": text}, "satisfaction")
        elif action is Action.CLOSE:
            changes["closed_at"] = now
        if nature is not None and nature != case.nature:
            changes["nature"] = data["nature"] = nature
        raised_to_major = priority == "major" and case.fields.get("priority") != "major"
        if priority is not None and priority != case.fields.get("priority"):
            changes["priority"] = data["priority"] = priority
            changes |= self.deadlines.regraded(case, priority, now)
            data["from_priority"] = case.fields.get("priority")
        if action is Action.CLASSIFY and not changes:
            return ActionResult(case, detail=data)  # already so: nothing to record or announce
        if target is not None:
            changes["status"] = target.value
        if case.owner is None and action not in (Action.NOTE, Action.REASSIGN, Action.CLASSIFY):
            changes |= {"owner": member.id, "owner_name": member.name}  # whoever acts first owns it
        if next_update is not None:
            data["next_update"] = next_update.isoformat()
        changes |= self.deadlines.after_action(case, action, changes.get("status", case.status), now,
                                               promised_update=next_update)
        updated = uow.update_case(case_id=case.id, expected_status=case.status, expected_version=case.version,
                                  changes=changes, event=(action.value, member.id, data), at=now)
        if updated is None:
            return ActionResult(self.store.get_case(case.number), "staff/conflict")
        if customer is not None:
            template, context, awaited = customer
            self._tell_customer(uow, updated, template, {**context, "case": updated}, awaiting=awaited)
        if raised_to_major:
            for delivery in self.notifier.raised_to_major(updated, member.name):
                uow.enqueue(kind="staff_notification", channel=delivery.channel, target=delivery.target,
                            payload=delivery.message.as_payload(), case_id=updated.id, at=now)
        if action is Action.REASSIGN:  # the new owner hears it from us, with the history one command away
            self._to_owner(uow, updated, OutboundMessage(self.renderer.render(
                "staff/reassigned", {"case": updated, "by": member.name})))
        return ActionResult(updated, detail=data)

    # ------------------------------------------------------------------ customer side

    def _tell_customer(self, uow: UnitOfWork, case: CaseRecord, template: str, context: dict[str, Any],
                       awaiting: str | None = None) -> None:
        """Queue a message to the customer on their channel; remember what answer we wait for."""
        choices: list[tuple[str, str | None]] = []
        if awaiting == "solution":
            choices = [("同意", None), ("不同意", None)]
        elif awaiting == "satisfaction":
            choices = [(str(score), None) for score in (5, 4, 3, 2, 1)]
        push_to_customer(uow, case, self.renderer.message(template, context, choices), self.clock())
        if awaiting is not None:
            self._await_customer(uow, case, awaiting)

    def _await_customer(self, uow: UnitOfWork, case: CaseRecord, kind: str) -> None:
        record = uow.load_conversation(case.channel, case.customer_id)
        if record is None:
            return
        state = DialogState.model_validate(record.state)
        state.awaiting_case = AwaitingCase(number=case.number, kind=kind)
        uow.save_conversation(channel=case.channel, customer_id=case.customer_id, state=state.model_dump(mode="json"),
                              expected_version=record.version, at=self.clock())

    def customer_reply(self, uow: UnitOfWork, number: str, kind: str, text: str, *, channel: str, customer_id: str,
                       score: int | None, agrees: bool | None, now: datetime) -> str | None:
        """The customer's answer to what staff asked, proposed or the satisfaction question.

        Returns the timeline event it became (``customer_answer``, ``customer_agreed``/``declined``,
        ``satisfied``/``dissatisfied``), which decides what the customer is told; None if nothing
        was recorded. An agreement counts only while the proposal it answers is the one on the
        case: once a new proposal waits for approval it is relayed to the owner as an answer.
        """
        case = uow.get_case(number)
        if case is None or (case.channel, case.customer_id) != (channel, customer_id):
            return None  # only a case's own customer answers for it
        data: dict[str, Any] = {"text": text}
        changes: dict[str, Any] = {}
        event = "customer_answer"
        if kind == "solution" and agrees is not None and case.status == Status.PROPOSED:
            event = "customer_agreed" if agrees else "customer_declined"
            if agrees:
                changes["status"] = Status.AGREED.value
        elif kind == "satisfaction" and score is not None and case.status in (Status.FOLLOW_UP, Status.RESOLVED):
            data["score"] = score
            changes["satisfaction"] = score
            if score >= 3:
                event, changes["status"], changes["closed_at"] = "satisfied", Status.CLOSED.value, now
            else:
                event, changes["status"] = "dissatisfied", Status.REOPENED.value
                changes |= self.deadlines.reopened(now, case.fields.get("priority") or "normal")
        updated = uow.update_case(case_id=case.id, expected_status=None, changes=changes,
                                  event=(event, "customer", data), at=now)
        if updated is None:
            return None
        if updated.owner:
            self._tell_owner(uow, updated, event, text, score)
        return event

    def customer_evidence(self, uow: UnitOfWork, case: CaseRecord, file_kinds: Sequence[str], *, caption: str,
                          now: datetime) -> bool:
        """Photos or files (one kind per file) the customer sent for an open case, with what they wrote
        along: on its timeline, and the owner hears of them. Returns whether a message was queued.
        """
        data = {"count": len(file_kinds), "kinds": sorted(set(file_kinds)), "caption": caption.strip()}
        uow.add_case_event(case_id=case.id, kind="customer_evidence", actor="customer", data=data, at=now)
        if not case.owner:
            return False
        self._to_owner(uow, case, OutboundMessage(self.renderer.render("staff/customer_evidence",
                                                                       {"case": case, **data})))
        return True

    def customer_left(self, channel: str, customer_id: str) -> list[CaseRecord]:
        """The customer can no longer be messaged (unfollowed the Official Account): every open case
        records it and its owner (or the mall's groups) is told to phone them. A platform retry of the
        same notice records nothing twice. Returns the cases that recorded it."""
        now = self.clock()
        recorded: list[CaseRecord] = []
        with self.store.unit_of_work() as uow:
            for case in uow.open_cases_for_customer(channel, customer_id):
                latest = uow.get_case_events(case.id)[-1:]
                if latest and latest[0].kind == CUSTOMER_LEFT:
                    continue
                # Versioned: of a retry racing the first notice, one records it (the other finds it changed).
                updated = uow.update_case(case_id=case.id, expected_status=None, expected_version=case.version,
                                          changes={}, event=(CUSTOMER_LEFT, "customer", {}), at=now)
                if updated is None:
                    continue
                self._to_owner(uow, updated, OutboundMessage(self.renderer.render("staff/customer_left",
                                                                                  {"case": updated})))
                recorded.append(updated)
        if recorded:
            self.on_outbox()
        return recorded

    def _tell_owner(self, uow: UnitOfWork, case: CaseRecord, event: str, text: str, score: int | None) -> None:
        message = OutboundMessage(self.renderer.render("staff/customer_replied", {
            "case": case, "event": event, "text": text, "score": score}))
        self._to_owner(uow, case, message)

    def _to_owner(self, uow: UnitOfWork, case: CaseRecord, message: OutboundMessage) -> None:
        """The owner's private Telegram chat; without an owner on Telegram, the groups where the case's
        staff work (its mall's, else the fallback group), on Telegram and WeCom alike."""
        channel, _, user = (case.owner or "").partition(":")
        if channel == "telegram" and user:
            targets = [("telegram", user)]
        else:
            groups = self.notifier.staff_groups(case)
            targets = [("telegram", str(chat)) for chat in groups.telegram] + [("wecom", key) for key in groups.wecom]
        if not targets:
            log.warning("case %s: nobody to tell (no owner on Telegram, no staff or fallback group)", case.number)
        for target_channel, target in targets:
            uow.enqueue(kind="staff_update", channel=target_channel, target=target, payload=message.as_payload(),
                        case_id=case.id, at=self.clock())
