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
from dialogs.engine import DialogState, LookUpCases, OpenCase, new_state, step
from storage.case_numbers import find_case_number
from storage.repository import CaseDraft, CaseRecord, Reader, StaleConversation, Store, UnitOfWork

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
        now = message.at or self.clock()
        for _ in range(MAX_TURN_ATTEMPTS):
            try:
                return self._turn(message, now)
            except StaleConversation:
                continue
        raise RuntimeError(f"conversation {message.channel}/{message.customer_id} kept changing under this turn")

    def _turn(self, message: InboundMessage, now: datetime) -> TurnOutcome:
        """The whole turn in one transaction: a crash anywhere leaves all of it or none of it."""
        with self.store.unit_of_work() as uow:
            inbound_id = uow.record_inbound(channel=message.channel, customer_id=message.customer_id,
                                            text=message.text, at=now, channel_message_id=message.message_id)
            record = uow.load_conversation(message.channel, message.customer_id)
            previous = DialogState.model_validate(record.state) if record else None
            if inbound_id is None:  # the channel re-sent a message we answered: same answer, no new turn
                earlier = uow.replies_for(message.channel, message.customer_id, message.message_id or "")
                return TurnOutcome(earlier or [], previous or new_state(now), duplicate=True)
            turn = step(previous or new_state(now), message.text, now=now, catalog=self.catalog)
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
            for effect in turn.effects:
                if isinstance(effect, OpenCase):
                    transcript = self._transcript(uow, message, previous)
                    case = self._open_case(uow, message, saved.id, effect, transcript, now)
                    context["case_number"] = case.number
                elif isinstance(effect, LookUpCases):
                    context.update(self._status_context(uow, message, effect))
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
