"""The intake service: every channel hands it a channel-neutral message and sends back its replies.

One turn is one transaction: the inbound message, the new dialog state, any case it opens and
the replies are committed together, so a crash between two messages loses nothing and a
channel's retry of the same message id gets the same answer without being processed twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.templating import Renderer
from dialogs.catalog import Catalog
from dialogs.engine import DialogState, LookUpCases, OpenCase, Turn, new_state, step
from storage.case_numbers import find_case_number
from storage.repository import CaseDraft, CaseRecord, ConversationRecord, StaleConversation, Store, UnitOfWork

# Two turns of one customer racing each other: the loser reloads the winner's state and redoes
# its turn. More than a handful of rounds means something is wrong, not busy.
MAX_TURN_ATTEMPTS = 5
STATUS_CASES_SHOWN = 3


@dataclass(frozen=True)
class InboundMessage:
    """A customer message as every channel adapter delivers it."""

    channel: str  # "console", "telegram", "wechat", "web", …
    customer_id: str  # the channel's stable id for this customer
    text: str
    message_id: str | None = None  # the channel's id, for de-duplicating retries
    at: datetime | None = None


@dataclass(frozen=True)
class TurnOutcome:
    replies: list[str]
    state: DialogState
    case: CaseRecord | None = None
    duplicate: bool = False


class IntakeService:
    def __init__(self, store: Store, catalog: Catalog, renderer: Renderer,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.catalog = catalog
        self.renderer = renderer
        self.clock = clock

    def state_of(self, channel: str, customer_id: str) -> DialogState:
        record = self.store.load_conversation(channel, customer_id)
        return DialogState.model_validate(record.state) if record else new_state(self.clock())

    def handle(self, message: InboundMessage) -> TurnOutcome:
        if message.message_id is not None:
            earlier = self.store.replies_for(message.channel, message.customer_id, message.message_id)
            if earlier is not None:
                return self._duplicate(message, earlier)
        now = message.at or self.clock()
        for _ in range(MAX_TURN_ATTEMPTS):
            record = self.store.load_conversation(message.channel, message.customer_id)
            state = DialogState.model_validate(record.state) if record else new_state(now)
            turn = step(state, message.text, now=now, catalog=self.catalog)
            try:
                return self._commit(message, now, record, turn)
            except StaleConversation:
                continue
            except _AlreadyProcessed:
                earlier = self.store.replies_for(message.channel, message.customer_id, message.message_id or "")
                return self._duplicate(message, earlier or [])
        raise RuntimeError(f"conversation {message.channel}/{message.customer_id} kept changing under this turn")

    def _duplicate(self, message: InboundMessage, replies: list[str]) -> TurnOutcome:
        return TurnOutcome(replies, self.state_of(message.channel, message.customer_id), duplicate=True)

    def _commit(self, message: InboundMessage, now: datetime, record: ConversationRecord | None,
                turn: Turn) -> TurnOutcome:
        transcript = self._transcript(message, record, now) if any(
            isinstance(e, OpenCase) for e in turn.effects) else []
        with self.store.unit_of_work() as uow:
            inbound_id = uow.record_inbound(channel=message.channel, customer_id=message.customer_id,
                                            text=message.text, at=now, channel_message_id=message.message_id)
            if inbound_id is None:
                raise _AlreadyProcessed
            state = turn.state
            previous_start = DialogState.model_validate(record.state).transcript_from if record else None
            if state.transcript_from is None and previous_start is None:
                # The first message of a new intake; a turn that just reset the intake (case opened,
                # cancelled, restarted) leaves it to the next message.
                state = state.model_copy(update={"transcript_from": inbound_id})
            saved = uow.save_conversation(channel=message.channel, customer_id=message.customer_id,
                                          state=state.model_dump(mode="json"),
                                          expected_version=record.version if record else None, at=now)
            context: dict[str, Any] = {}
            case: CaseRecord | None = None
            for effect in turn.effects:
                if isinstance(effect, OpenCase):
                    case = self._open_case(uow, message, saved.id, effect, transcript, now)
                    context["case_number"] = case.number
                elif isinstance(effect, LookUpCases):
                    context.update(self._status_context(message, effect))
            texts = [self.renderer.render(reply.template, {**reply.context, **context}) for reply in turn.replies]
            uow.record_outbound(channel=message.channel, customer_id=message.customer_id, texts=texts,
                                in_reply_to=inbound_id, at=now)
        return TurnOutcome(texts, state, case)

    def _open_case(self, uow: UnitOfWork, message: InboundMessage, conversation_id: int, effect: OpenCase,
                   transcript: list[dict[str, str]], now: datetime) -> CaseRecord:
        case = uow.open_case(CaseDraft(channel=message.channel, customer_id=message.customer_id,
                                       conversation_id=conversation_id, fields=effect.fields,
                                       transcript=transcript, opened_at=now))
        if effect.priority_reasons:
            uow.add_case_event(case_id=case.id, kind="graded", actor="kesu",
                               data={"priority": effect.fields["priority"], "rules": effect.priority_reasons}, at=now)
        return case

    def _transcript(self, message: InboundMessage, record: ConversationRecord | None,
                    now: datetime) -> list[dict[str, str]]:
        """This intake's messages, from its first message to the confirming one."""
        first = DialogState.model_validate(record.state).transcript_from if record else None
        lines = [
            {"role": "customer" if m.direction == "in" else "kesu", "text": m.text, "at": m.created_at.isoformat()}
            for m in self.store.messages(message.channel, message.customer_id, limit=500)
            if first is None or m.id >= first
        ]
        lines.append({"role": "customer", "text": message.text, "at": now.astimezone(UTC).isoformat()})
        return lines

    def _status_context(self, message: InboundMessage, effect: LookUpCases) -> dict[str, Any]:
        """Only the asking customer's own cases; a number typed for someone else's case reveals nothing."""
        own = self.store.cases_for_customer(message.channel, message.customer_id)
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


class _AlreadyProcessed(Exception):
    """The channel re-sent a message this service already answered."""
