"""Rasa (rasa-sdk) custom actions: Kesu's intake as the form logic of a Rasa assistant.

Two actions, served in-process by ``kesu serve`` at ``POST /rasa/webhook`` (Rasa's action-server
protocol, through rasa-sdk's own ``ActionExecutor``) or by rasa-sdk's server::

    python -m rasa_sdk --actions handlers.rasa_actions

- ``validate_complaint_form`` (``FormValidationAction``): each customer message goes through the same
  dialog core as every other channel (``dialogs.engine.fill``): Kesu's extraction with ``asking`` set
  to Rasa's ``requested_slot``, every fact of a multi-fact message, corrections, derived ``city``,
  ``over_warranty`` and ``priority``. A slot that cannot be taken comes back ``None`` with Kesu's
  explanation (invalid phone, which of two malls, …), rendered from the templates.
- ``action_submit_complaint``: opens the case through ``IntakeService.submit`` (channel ``rasa``,
  customer id = Rasa's ``sender_id``) and tells the customer the case number.

Slots hold the public JSON values of PRODUCT.md (ISO dates, amount a number, expectation a list).
What Kesu must remember between turns besides the fields (fields the customer does not know, an open
choice between two malls, corrections, grading reasons) rides in one slot, ``kesu_state``
(type ``any``); see examples/rasa/domain.yml.

The service: ``kesu serve`` hands its own ``IntakeService`` to the actions. Actions constructed
without one (rasa-sdk's server constructs them without arguments) build a single service from
``Settings()`` (``KESU_*`` environment / ``.env``) on first use, once per process — never at import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import zlib
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rasa_sdk import utils as rasa_utils
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import ActionExecutor, CollectingDispatcher
from rasa_sdk.forms import REQUESTED_SLOT, FormValidationAction
from rasa_sdk.interfaces import (
    Action,
    ActionExecutionRejection,
    ActionMissingDomainException,
    ActionNotFoundException,
    Tracker,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.app import build_service
from bot.config import Settings
from bot.outbound import OutboundMessage
from bot.server import ChannelAdapter
from bot.service import IntakeService
from dialogs.engine import OPTIONAL_ATTEMPTS, DialogState, PendingChoice, fill
from dialogs.extraction.priority import PRIORITY_ORDER
from dialogs.fields import ASK_ORDER, FIELD_KEYS, SPECS

log = logging.getLogger(__name__)

CHANNEL = "rasa"
FORM = "complaint_form"
VALIDATE_FORM = f"validate_{FORM}"
SUBMIT = "action_submit_complaint"
STATE_SLOT = "kesu_state"
CASE_SLOT = "case_number"
FORM_SLOTS: tuple[str, ...] = tuple(spec.key for spec in ASK_ORDER)  # the form's required slots, asking order
DERIVED_SLOTS = ("city", "priority")  # set by Kesu, never asked

DomainDict = dict[str, Any]


class RasaIntakeState(BaseModel):
    """Kesu's bookkeeping between Rasa turns, kept in the ``kesu_state`` slot; Rasa keeps the fields."""

    model_config = ConfigDict(extra="ignore")

    unknown: list[str] = Field(default_factory=list)  # fields the customer does not know / has none of
    stated: list[str] = Field(default_factory=list)  # over_warranty said by the customer, not derived
    choice: PendingChoice | None = None  # "which of these malls": asked until answered
    priority_reasons: list[str] = Field(default_factory=list)
    corrections: list[dict[str, Any]] = Field(default_factory=list)
    purchase_span: tuple[date, date] | None = None
    recent_purchase: bool = False
    empathized: bool = False
    last_message: str | None = None  # the user message last read: one read again is not answered twice


# --------------------------------------------------------------------------- the service


_default_lock = threading.Lock()
_default_service: list[IntakeService] = []


def default_service() -> IntakeService:
    """The service of actions constructed without one: built from ``Settings()`` on first use, once."""
    with _default_lock:
        if not _default_service:
            _default_service.append(build_service(Settings()))
        return _default_service[0]


class _UsesIntakeService:
    """Mixin (not an Action: rasa-sdk registers every Action subclass it finds) holding the service."""

    def __init__(self, service: IntakeService | None = None) -> None:
        self._service = service

    async def intake_service(self) -> IntakeService:
        if self._service is None:
            self._service = await asyncio.to_thread(default_service)  # opens the database: off the loop
        return self._service


# --------------------------------------------------------------------------- reading one message


@dataclass
class _FormReading:
    """One customer message read into the form: the slots it sets and what Kesu says about it."""

    tracker: Tracker
    requested: str | None
    slots: dict[str, Any]  # every form and derived slot after this message
    updates: dict[str, Any]  # the slots whose value this message changed (kesu_state included)
    unknown: frozenset[str]
    choice_field: str | None
    has_purchase_date: bool
    messages: list[OutboundMessage]
    about: list[str | None]  # the field each message is about; None: about the whole message
    repeat: bool  # this message was read before (its events applied): say nothing twice
    said: set[int] = field(default_factory=set)

    def candidates(self) -> set[str]:
        """Form slots to hand to validation: changed, asked for, or spoken about."""
        spoken = {about for about in self.about if about}
        asked = {self.requested} if self.requested else set()
        chosen = {self.choice_field} if self.choice_field else set()
        return ({slot for slot in FORM_SLOTS if slot in self.updates} | asked | spoken | chosen) & set(FORM_SLOTS)

    def required(self, domain_slots: Iterable[str]) -> list[str]:
        """The form's slots still worth asking; an open choice first (its answer may be just "2")."""
        slots = [slot for slot in domain_slots if slot not in self.unknown
                 and not (slot == "over_warranty" and self.has_purchase_date)]
        if self.choice_field in slots:
            slots.remove(self.choice_field)
            slots.insert(0, self.choice_field)
        return slots


_READING: ContextVar[_FormReading | None] = ContextVar("kesu_rasa_reading", default=None)


def _message_key(tracker: Tracker) -> str | None:
    latest = tracker.latest_message or {}
    if latest.get("message_id"):
        return str(latest["message_id"])
    for event in reversed(tracker.events):
        if event.get("event") == "user":
            return f"{event.get('timestamp')}:{event.get('text')}"
    return None


def _answers(tracker: Tracker) -> dict[str, int]:
    """How often each field has been answered in this run of the form (this message included)."""
    counts: dict[str, int] = {}
    requested: str | None = None
    for event in tracker.applied_events():
        kind = event.get("event")
        if kind == "active_loop":  # activated or deactivated: an earlier complaint's answers do not count
            counts, requested = {}, None
        elif kind == "slot" and event.get("name") == REQUESTED_SLOT:
            requested = event.get("value")
        elif kind == "user" and requested in SPECS:
            counts[requested] = counts.get(requested, 0) + 1
    return counts


def _read(service: IntakeService, tracker: Tracker) -> _FormReading:
    """Run the latest message through the dialog core with the slots as its state."""
    now = service.clock()
    slots = tracker.slots
    kesu = RasaIntakeState.model_validate(slots.get(STATE_SLOT) or {})
    requested = slots.get(REQUESTED_SLOT)
    requested = requested if requested in FORM_SLOTS else None
    answers = _answers(tracker)
    priority = slots.get("priority")
    state = DialogState(
        fields={key: slots[key] for key in FIELD_KEYS if key != "priority" and slots.get(key) is not None},
        unknown=kesu.unknown, stated=kesu.stated, asking=requested, attempts=answers, choice=kesu.choice,
        priority=priority if priority in PRIORITY_ORDER else "normal", priority_reasons=kesu.priority_reasons,
        corrections=kesu.corrections, purchase_span=kesu.purchase_span, recent_purchase=kesu.recent_purchase,
        greeted=True, empathized=kesu.empathized, last_seen=now,
    )
    turn = fill(state, str((tracker.latest_message or {}).get("text") or ""), now=now, catalog=service.catalog)
    s = turn.state
    for spec in ASK_ORDER:  # an optional field asked once plus one clarification is recorded as unknown
        if (not spec.required and spec.key not in s.fields and spec.key not in s.unknown
                and answers.get(spec.key, 0) >= OPTIONAL_ATTEMPTS):
            s.unknown.append(spec.key)
    key = _message_key(tracker)
    after = {slot: s.fields.get(slot) for slot in (*FORM_SLOTS, "city")} | {"priority": s.priority}
    updates = {slot: value for slot, value in after.items() if value != slots.get(slot)}
    remembered = RasaIntakeState(
        unknown=s.unknown, stated=s.stated, choice=s.choice, priority_reasons=s.priority_reasons,
        corrections=s.corrections, purchase_span=s.purchase_span, recent_purchase=s.recent_purchase,
        empathized=s.empathized, last_message=key,
    ).model_dump(mode="json")
    if remembered != slots.get(STATE_SLOT):
        updates[STATE_SLOT] = remembered
    renderer = service.renderer
    return _FormReading(
        tracker=tracker, requested=requested, slots=after, updates=updates, unknown=frozenset(s.unknown),
        choice_field=s.choice.field if s.choice else None, has_purchase_date="purchase_date" in s.fields,
        messages=[renderer.message(r.template, r.context, [(c.payload, c.label) for c in r.choices])
                  for r in turn.replies],
        # "Which of these malls" closes the turn, after what was noted, as in every other channel.
        about=[r.context["field"] if isinstance(r.context.get("field"), str) and r.template != "choose" else None
               for r in turn.replies],
        repeat=key is not None and key == kesu.last_message,
    )


def _say(reading: _FormReading, dispatcher: CollectingDispatcher, about: str | None = None) -> None:
    """Utter Kesu's messages about one field (or, with None, all not said yet), each once."""
    for index, message in enumerate(reading.messages):
        if index in reading.said or (about is not None and reading.about[index] != about):
            continue
        reading.said.add(index)
        if not reading.repeat:
            dispatcher.utter_message(text=message.text, buttons=[
                {"title": button.label, "payload": button.payload} for row in message.buttons for button in row])


# --------------------------------------------------------------------------- the actions


class ValidateComplaintForm(_UsesIntakeService, FormValidationAction):  # type: ignore[misc]
    """``validate_complaint_form``: Kesu's extraction and validation for every slot of the form.

    rasa-sdk's ``FormValidationAction`` calls ``extract_<slot>`` for the form's required slots, then
    ``validate_<slot>`` for each candidate, then asks ``required_slots`` what to request next. Kesu
    reads the message once per request (in ``run``); the per-slot methods hand out that reading.
    """

    def name(self) -> str:
        return VALIDATE_FORM

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        service = await self.intake_service()
        reading = await asyncio.to_thread(_read, service, tracker)  # extraction is CPU work: off the loop
        token = _READING.set(reading)
        try:
            events: list[dict[str, Any]] = await super().run(dispatcher, tracker, domain)
        finally:
            _READING.reset(token)
        _say(reading, dispatcher)  # what no validate_<slot> said: noted, corrected, a refused optional field…
        already = {event.get("name") for event in events if event.get("event") == "slot"}
        events.extend(SlotSet(slot, value) for slot, value in reading.updates.items() if slot not in already)
        return events

    def _reading(self, tracker: Tracker) -> _FormReading:
        reading = _READING.get()
        if reading is None or reading.tracker is not tracker:  # called outside run(): read it now
            reading = _read(self._service or default_service(), tracker)
        return reading

    async def required_slots(self, domain_slots: list[str], dispatcher: CollectingDispatcher, tracker: Tracker,
                             domain: DomainDict) -> list[str]:
        """Fields the customer does not know are not asked again; an open choice is asked first."""
        return self._reading(tracker).required(domain_slots)

    def _extract(self, slot: str, tracker: Tracker) -> dict[str, Any]:
        reading = self._reading(tracker)
        return {slot: reading.slots.get(slot)} if slot in reading.candidates() else {}

    def _validate(self, slot: str, dispatcher: CollectingDispatcher, tracker: Tracker) -> dict[str, Any]:
        """The slot's value after this message (None: not taken, and Kesu said why), plus every other
        slot the same message filled or changed, the derived ones and ``kesu_state``."""
        reading = self._reading(tracker)
        _say(reading, dispatcher, about=slot)
        return {**reading.updates, slot: reading.slots.get(slot)}


def _slot_methods(slot: str) -> tuple[Callable[..., dict[str, Any]], Callable[..., dict[str, Any]]]:
    """The ``extract_<slot>``/``validate_<slot>`` pair rasa-sdk looks up by name (``getattr``)."""

    def extract(self: ValidateComplaintForm, dispatcher: CollectingDispatcher, tracker: Tracker,
                domain: DomainDict) -> dict[str, Any]:
        return self._extract(slot, tracker)

    def validate(self: ValidateComplaintForm, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker,
                 domain: DomainDict) -> dict[str, Any]:
        return self._validate(slot, dispatcher, tracker)

    return extract, validate


# One pair per slot of the form, from the slot table (dialogs/fields.py): a new field needs no code here.
for _slot in FORM_SLOTS:
    _extract_slot, _validate_slot = _slot_methods(_slot)
    setattr(ValidateComplaintForm, f"extract_{_slot}", _extract_slot)
    setattr(ValidateComplaintForm, f"validate_{_slot}", _validate_slot)


def _transcript(tracker: Tracker, now: datetime) -> list[dict[str, str]]:
    """This complaint's conversation as Rasa recorded it: since the last submitted complaint."""
    lines: list[dict[str, str]] = []
    for event in tracker.applied_events():
        kind = event.get("event")
        if kind == "action" and event.get("name") == SUBMIT:
            lines = []
        elif kind in ("user", "bot") and event.get("text"):
            stamp = event.get("timestamp")
            at = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else now
            lines.append({"role": "customer" if kind == "user" else "kesu", "text": str(event["text"]),
                          "at": at.isoformat()})
    return lines


class ActionSubmitComplaint(_UsesIntakeService, Action):  # type: ignore[misc]
    """``action_submit_complaint``: the collected slots become a case, through the same service as
    every other channel (one transaction with the staff notifications)."""

    def name(self) -> str:
        return SUBMIT

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        service = await self.intake_service()
        slots = tracker.slots
        kesu = RasaIntakeState.model_validate(slots.get(STATE_SLOT) or {})
        fields = {key: slots.get(key) for key in FIELD_KEYS}
        fields["priority"] = fields["priority"] if fields["priority"] in PRIORITY_ORDER else "normal"
        missing = [spec.key for spec in ASK_ORDER
                   if spec.required and fields[spec.key] is None and spec.key not in kesu.unknown]
        if missing:  # Rasa's rejection: its policies predict another action (e.g. the form again)
            raise ActionExecutionRejection(self.name(), f"{FORM} has not collected: {', '.join(missing)}")
        now = service.clock()
        case = await asyncio.to_thread(
            service.submit, CHANNEL, tracker.sender_id, fields, now, transcript=_transcript(tracker, now),
            priority_reasons=kesu.priority_reasons, corrections=kesu.corrections)
        dispatcher.utter_message(text=service.renderer.render(
            "case_opened", {"case_number": case.number, "priority": fields["priority"], "name": fields["name"]}))
        # The form's slots start empty again, so the same conversation can take another complaint.
        return [SlotSet(CASE_SLOT, case.number),
                *(SlotSet(slot, None) for slot in (*FORM_SLOTS, *DERIVED_SLOTS, STATE_SLOT))]


# --------------------------------------------------------------------------- in-process action server


def action_executor(service: IntakeService | None = None) -> ActionExecutor:
    """rasa-sdk's executor with Kesu's actions bound to `service`."""
    executor = ActionExecutor()
    executor.register_action(ValidateComplaintForm(service))
    executor.register_action(ActionSubmitComplaint(service))
    return executor


def rasa_adapter(service: IntakeService, *, token: str | None = None) -> ChannelAdapter:
    """``/rasa/webhook`` answering exactly as rasa-sdk's own ``/webhook`` (rasa_sdk/endpoint.py) does:
    200 {"events", "responses"}; 400 rejected ({"error", "action_name"}) or unreadable body; 404 unknown
    action; 449 domain missing (Rasa resends it); 500 {"error", "request_body"}. With `token`, requests
    must carry ``?token=…`` (what Rasa sends for ``action_endpoint: token:``); otherwise 403."""
    executor = action_executor(service)

    def authorized(request: Request) -> bool:
        return token is None or secrets.compare_digest(request.query_params.get("token", ""), token)

    async def webhook(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        body = await request.body()
        try:
            if request.headers.get("content-encoding") == "deflate":
                body = zlib.decompress(body)
            action_call = json.loads(body) if body else None
        except (zlib.error, ValueError):
            action_call = None
        if not isinstance(action_call, dict):
            return JSONResponse({"error": "Invalid body request"}, status_code=400)
        rasa_utils.check_version_compatibility(action_call.get("version"))
        try:
            result = await executor.run(action_call)
        except ActionExecutionRejection as e:
            return JSONResponse({"error": e.message, "action_name": e.action_name}, status_code=400)
        except ActionNotFoundException as e:
            log.error("%s", e)
            return JSONResponse({"error": e.message, "action_name": e.action_name}, status_code=404)
        except ActionMissingDomainException as e:
            return JSONResponse({"error": e.message, "action_name": e.action_name}, status_code=449)
        except Exception as e:
            log.exception("Rasa action %r failed", action_call.get("next_action"))
            return JSONResponse({"error": str(e), "request_body": action_call}, status_code=500)
        return JSONResponse(result.model_dump() if result else None)

    async def actions(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        return JSONResponse([item.model_dump() for item in executor.list_actions()])

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return ChannelAdapter(CHANNEL, routes=[
        Route("/rasa/webhook", webhook, methods=["POST"]),
        Route("/rasa/actions", actions),
        Route("/rasa/health", health),
    ])
