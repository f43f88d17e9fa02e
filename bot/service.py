"""The intake service: every channel hands it a channel-neutral message and sends back its replies.

One turn is one transaction: the inbound message, the new dialog state, any case it opens and
the replies are committed together, so a crash between two messages loses nothing and a
channel's retry of the same message id gets the same answer without being processed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.deadlines import DeadlinePolicy
from bot.lifecycle import AWAITS_ANSWER, Status
from bot.notify import StaffNotifier
from bot.outbound import OutboundMessage
from bot.staff import StaffService
from bot.templating import Renderer
from dialogs.catalog import Catalog
from dialogs.engine import CaseReply, DialogState, LookUpCases, OpenCase, Reply, new_state, step
from dialogs.extraction.nature import suggest_nature
from dialogs.extraction.priority import PRIORITY_ORDER
from dialogs.fields import FIELD_KEYS, from_state_value
from storage.case_numbers import find_case_number
from storage.repository import CaseDraft, CaseRecord, Reader, StaleConversation, Store, UnitOfWork

# Two turns of one customer racing each other: the loser reloads the winner's state and redoes
# its turn. More than a handful of rounds means something is wrong, not busy.
MAX_TURN_ATTEMPTS = 5
STATUS_CASES_SHOWN = 3
# What the customer is told once their answer to a case is recorded, by the event it became.
CASE_REPLY_ACKS: dict[str, str] = {
    "customer_answer": "answer_relayed", "customer_agreed": "solution_agreed",
    "customer_declined": "solution_declined", "satisfied": "satisfaction_thanks",
    "dissatisfied": "satisfaction_reopened",
}


@dataclass(frozen=True)
class Attachment:
    """A photo or file the customer sent: evidence for the case (receipts, damage photos)."""

    kind: str  # "photo" | "document" | "voice" | "video" | "other"
    file_ref: str  # the platform's file id / media id / URL
    file_name: str | None = None
    mime: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    """A customer message as every channel adapter delivers it."""

    channel: str  # "console", "telegram", "wechat", "web", …
    customer_id: str  # the channel's stable id for this customer
    text: str
    message_id: str | None = None  # the channel's id, for de-duplicating retries
    at: datetime | None = None
    attachments: tuple[Attachment, ...] = ()
    # Push channels (Telegram) set where replies go: they are then written to the outbox in the
    # turn's transaction and delivered by the dispatcher, so a failed send is retried, not lost.
    # Request/response channels (WeChat passive reply, web, console) leave it None.
    push_to: str | None = None


@dataclass(frozen=True)
class TurnOutcome:
    messages: list[OutboundMessage]
    state: DialogState
    case: CaseRecord | None = None
    duplicate: bool = False

    @property
    def replies(self) -> list[str]:
        return [message.text for message in self.messages]


class IntakeService:
    def __init__(self, store: Store, catalog: Catalog, renderer: Renderer,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 notifier: StaffNotifier | None = None, on_outbox: Callable[[], None] = lambda: None,
                 casework: StaffService | None = None, deadlines: DeadlinePolicy | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.renderer = renderer
        self.clock = clock
        self.notifier = notifier
        self.on_outbox = on_outbox  # wakes the dispatcher after a turn that queued messages
        self.casework = casework  # where customers' answers to staff go
        # The promises a new case starts with: the deployment's (via casework) unless given.
        self.deadlines = deadlines or (casework.deadlines if casework is not None else DeadlinePolicy())

    def state_of(self, channel: str, customer_id: str) -> DialogState:
        record = self.store.load_conversation(channel, customer_id)
        return DialogState.model_validate(record.state) if record else new_state(self.clock())

    def handle(self, message: InboundMessage) -> TurnOutcome:
        now = message.at or self.clock()
        for _ in range(MAX_TURN_ATTEMPTS):
            try:
                outcome, queued = self._turn(message, now)
            except StaleConversation:
                continue
            if queued:
                self.on_outbox()
            return outcome
        raise RuntimeError(f"conversation {message.channel}/{message.customer_id} kept changing under this turn")

    def submit(self, channel: str, customer_id: str, fields: Mapping[str, Any], at: datetime | None = None, *,
               transcript: Sequence[Mapping[str, str]] = (), priority_reasons: Sequence[str] = (),
               corrections: Sequence[Mapping[str, Any]] = ()) -> CaseRecord:
        """Open a case from fields another dialog collected (Rasa): public keys, JSON values as `kesu extract`
        prints them; missing keys are None, `priority` defaults to normal.

        Same as the confirming turn of `handle`: one transaction with the staff notices, and the
        customer's intake conversation on `channel` starts afresh. The transcript is stored as given
        ({"role": "customer" | "kesu", "text", "at"}); corrections as the engine records them.
        """
        extra = set(fields) - set(FIELD_KEYS)
        if extra:
            raise ValueError(f"not case fields: {', '.join(sorted(extra))}")
        typed = {key: from_state_value(key, fields.get(key)) for key in FIELD_KEYS}
        typed["priority"] = fields.get("priority") or "normal"
        if typed["priority"] not in PRIORITY_ORDER:
            raise ValueError(f"priority must be one of {', '.join(PRIORITY_ORDER)}")
        effect = OpenCase(fields=typed, priority_reasons=list(priority_reasons),
                          corrections=[dict(change) for change in corrections])
        now = at or self.clock()
        opening = InboundMessage(channel, customer_id, text="", at=now)
        for _ in range(MAX_TURN_ATTEMPTS):
            try:
                with self.store.unit_of_work() as uow:
                    record = uow.load_conversation(channel, customer_id)
                    saved = uow.save_conversation(channel=channel, customer_id=customer_id,
                                                  state=new_state(now, greeted=True).model_dump(mode="json"),
                                                  expected_version=record.version if record else None, at=now)
                    case = self._open_case(uow, opening, saved.id, effect, [dict(line) for line in transcript], now)
                    queued = self._notify_staff(uow, case, now)
            except StaleConversation:
                continue
            if queued:
                self.on_outbox()
            return case
        raise RuntimeError(f"conversation {channel}/{customer_id} kept changing under this submission")

    def _turn(self, message: InboundMessage, now: datetime) -> tuple[TurnOutcome, bool]:
        """The whole turn in one transaction: a crash anywhere leaves all of it or none of it.

        Returns the outcome and whether anything was queued in the outbox.
        """
        with self.store.unit_of_work() as uow:
            inbound_id = uow.record_inbound(channel=message.channel, customer_id=message.customer_id,
                                            text=message.text, at=now, channel_message_id=message.message_id)
            record = uow.load_conversation(message.channel, message.customer_id)
            previous = DialogState.model_validate(record.state) if record else None
            if inbound_id is None:  # the channel re-sent a message we answered: same answer, no new turn
                earlier = uow.replies_for(message.channel, message.customer_id, message.message_id or "")
                return TurnOutcome([OutboundMessage(text) for text in earlier or []], previous or new_state(now),
                                   duplicate=True), False
            before, awaited = self._still_awaited(uow, previous) if previous else (new_state(now), None)
            evidence_case = self._evidence_case(uow, message, before, awaited) if message.attachments else None
            for attachment in message.attachments:
                uow.add_evidence(channel=message.channel, customer_id=message.customer_id, kind=attachment.kind,
                                 file_ref=attachment.file_ref, file_name=attachment.file_name, mime=attachment.mime,
                                 caption=message.text or None, channel_message_id=message.message_id, at=now,
                                 case_id=evidence_case.id if evidence_case else None)
            turn = step(before, message.text, now=now, catalog=self.catalog, attachments=len(message.attachments),
                        evidence_case=evidence_case.number if evidence_case else None)
            state = turn.state
            if state.transcript_from is None and (previous is None or previous.transcript_from is None):
                # The first message of a new intake; a turn that just reset the intake (case opened,
                # cancelled, restarted) leaves it to the next message.
                state = state.model_copy(update={"transcript_from": inbound_id})
            saved = uow.save_conversation(channel=message.channel, customer_id=message.customer_id,
                                          state=state.model_dump(mode="json"),
                                          expected_version=record.version if record else None, at=now)
            context: dict[str, Any] = {}
            case: CaseRecord | None = None
            queued = False
            replies = list(turn.replies)
            if evidence_case is not None and self.casework is not None:
                queued = self.casework.customer_evidence(uow, evidence_case, [a.kind for a in message.attachments],
                                                         caption=message.text, now=now)
            for effect in turn.effects:
                if isinstance(effect, OpenCase):
                    transcript = self._transcript(uow, message, previous)
                    case = self._open_case(uow, message, saved.id, effect, transcript, now)
                    queued = self._notify_staff(uow, case, now) or queued
                    context["case_number"] = case.number
                elif isinstance(effect, LookUpCases):
                    context.update(self._status_context(uow, message, effect))
                elif isinstance(effect, CaseReply):
                    event = self.casework.customer_reply(
                        uow, effect.number, effect.kind, effect.text, channel=message.channel,
                        customer_id=message.customer_id, score=effect.score, agrees=effect.agrees,
                        now=now) if self.casework is not None else None
                    queued = queued or event is not None
                    replies.append(self._case_reply_ack(effect, event))
            outbound = [self.renderer.message(reply.template, {**reply.context, **context},
                                              [(c.payload, c.label) for c in reply.choices])
                        for reply in replies]
            uow.record_outbound(channel=message.channel, customer_id=message.customer_id,
                                texts=[m.text for m in outbound], in_reply_to=inbound_id, at=now)
            if message.push_to is not None:
                for reply in outbound:
                    uow.enqueue(kind="customer_reply", channel=message.channel, target=message.push_to,
                                payload=reply.as_payload(), case_id=case.id if case else None, at=now)
                queued = queued or bool(outbound)
        return TurnOutcome(outbound, state, case), queued

    @staticmethod
    def _case_reply_ack(effect: CaseReply, event: str | None) -> Reply:
        if event is None:
            return Reply("not_understood")
        if effect.kind == "solution" and effect.agrees is not None and event == "customer_answer":
            # a yes or no to a proposal staff replaced meanwhile with one that awaits approval
            return Reply("solution_revised", {"number": effect.number})
        return Reply(CASE_REPLY_ACKS[event], {"number": effect.number, "score": effect.score})

    @staticmethod
    def _evidence_case(reader: Reader, message: InboundMessage, state: DialogState,
                       awaited: CaseRecord | None) -> CaseRecord | None:
        """The open case files sent outside an intake are for: the one awaiting an answer, else the newest."""
        if state.fields:
            return None  # a complaint is being told: the files join the case it opens
        if awaited is not None:
            return awaited
        open_cases = reader.open_cases_for_customer(message.channel, message.customer_id)
        return open_cases[0] if open_cases else None

    @staticmethod
    def _still_awaited(reader: Reader, state: DialogState) -> tuple[DialogState, CaseRecord | None]:
        """Forget an awaited answer the case no longer waits for (agreed by phone, closed, ...); the case
        that still waits for one, if any."""
        awaited = state.awaiting_case
        if awaited is None:
            return state, None
        case = reader.get_case(awaited.number)
        if case is not None and Status(case.status) in AWAITS_ANSWER.get(awaited.kind, frozenset()):
            return state, case
        return state.model_copy(update={"awaiting_case": None}), None

    def _notify_staff(self, uow: UnitOfWork, case: CaseRecord, now: datetime) -> bool:
        """Queue the new-case notices in the case's own transaction: a case is never silently unnotified."""
        if self.notifier is None:
            return False
        deliveries = self.notifier.new_case(case)
        for delivery in deliveries:
            uow.enqueue(kind="staff_notification", channel=delivery.channel, target=delivery.target,
                        payload=delivery.message.as_payload(), case_id=case.id, at=now)
        return bool(deliveries)

    def _open_case(self, uow: UnitOfWork, message: InboundMessage, conversation_id: int, effect: OpenCase,
                   transcript: list[dict[str, str]], now: datetime) -> CaseRecord:
        routed = self.notifier is None or self.notifier.is_routed(effect.fields.get("mall"))
        case = uow.open_case(CaseDraft(channel=message.channel, customer_id=message.customer_id,
                                       conversation_id=conversation_id, fields=effect.fields,
                                       transcript=transcript, opened_at=now, unrouted=not routed))
        # The first-contact and resolution deadlines start with the case, in its transaction, and its
        # nature is guessed from the customer's words (staff correct it with /classify).
        nature = suggest_nature(case.fields.get("description"), case.fields.get("expectation"))
        case = uow.update_case(case_id=case.id, expected_status=None, expected_version=case.version,
                               changes={**self.deadlines.opened(now, case.fields["priority"]), "nature": nature},
                               event=None, at=now) or case
        uow.attach_evidence(channel=message.channel, customer_id=message.customer_id, case_id=case.id)
        if effect.priority_reasons:
            uow.add_case_event(case_id=case.id, kind="graded", actor="kesu",
                               data={"priority": effect.fields["priority"], "rules": effect.priority_reasons}, at=now)
        for change in effect.corrections:
            uow.add_case_event(case_id=case.id, kind="field_changed", actor="customer",
                               data={key: change[key] for key in ("field", "old", "new")},
                               at=datetime.fromisoformat(change["at"]))
        return case

    @staticmethod
    def _transcript(reader: Reader, message: InboundMessage, previous: DialogState | None) -> list[dict[str, str]]:
        """This intake's messages, from its first message to the confirming one."""
        first = previous.transcript_from if previous else None
        return [
            {"role": "customer" if m.direction == "in" else "kesu", "text": m.text, "at": m.created_at.isoformat()}
            for m in reader.messages(message.channel, message.customer_id, limit=500)
            if first is None or m.id >= first
        ]

    def _status_context(self, reader: Reader, message: InboundMessage, effect: LookUpCases) -> dict[str, Any]:
        """Only the asking customer's own cases; a number typed for someone else's case reveals nothing."""
        own = reader.cases_for_customer(message.channel, message.customer_id)
        requested = find_case_number(effect.text)
        shown = [c for c in own if c.number == requested] if requested else own[:STATUS_CASES_SHOWN]
        return {
            "requested": requested,
            "requested_found": bool(requested) and bool(shown),
            "cases": [self._case_view(c) for c in shown],
        }

    def _case_view(self, case: CaseRecord) -> dict[str, Any]:
        mall = self.catalog.mall(case.fields.get("mall") or "")
        return {"number": case.number, "status": case.status, "created_at": case.created_at,
                "mall_name": mall.name if mall else (case.fields.get("mall") or "")}
