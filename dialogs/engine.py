"""The intake conversation as a pure function: (state, message, clock, catalog) → turn.

No I/O and no rendering happen here (rasa-sdk's CollectingDispatcher idea): the turn lists the
replies as template names with their context, and the effects the service must carry out in
the same transaction as the new state (open a case, look up a customer's cases). That keeps
every path of the conversation testable without a database or a template directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from dialogs.catalog import Catalog
from dialogs.extraction import CORRECTION, SHANGHAI, Extraction, extract, over_warranty_from, to_public
from dialogs.extraction.names import name_from_answer
from dialogs.extraction.priority import LARGE_AMOUNT, PRIORITY_ORDER
from dialogs.extraction.text import MAX_EXTRACT_CHARS, clean_message, has_cjk
from dialogs.extraction.wants import NO, YES
from dialogs.fields import ASK_ORDER, FIELD_KEYS, SPECS, from_state_value, to_state_value
from dialogs.intents import Intent, classify

# A customer who comes back after this long is greeted back and reminded where we were.
RESUME_AFTER = timedelta(hours=6)
# Optional fields are asked once, plus one clarification when the answer could not be used.
OPTIONAL_ATTEMPTS = 2
# Required, yet a customer may truly not know it: after one explanation we record it as unknown
# and staff verify from the order, rather than asking a third time.
UNKNOWABLE_REQUIRED = frozenset({"brand"})
_FREE_BRAND = re.compile(r"^[\u4e00-\u9fffA-Za-z0-9 &·.-]{2,16}$")
_BRAND_FILLER = re.compile(r"^(?:是|买的是|品牌是|牌子是|就是)|(?:的|牌|牌子|品牌|家的|吧|啊)$")
# Messages that get their own answer, after which the intake carries on where it was.
_ANSWER_THEN_CARRY_ON: dict[Intent, str | None] = {
    Intent.STAFF: "staff_only", Intent.ABOUT_BOT: "about_bot", Intent.THANKS: "thanks",
    Intent.GIBBERISH: "not_understood", Intent.GREETING: None,
}
_ORDINALS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5}


class AwaitingCase(BaseModel):
    """Staff asked the customer something about an open case; their next message answers it."""

    number: str
    kind: str  # "question" | "solution" (agree?) | "satisfaction" (1-5)


class PendingChoice(BaseModel):
    field: str
    options: list[str]


class DialogState(BaseModel):
    """Everything the conversation needs between turns; stored as JSON on every turn."""

    schema_version: int = 1
    phase: str = "collecting"  # "collecting" | "confirming" | "cancelling"
    fields: dict[str, Any] = Field(default_factory=dict)  # public keys, JSON values
    unknown: list[str] = Field(default_factory=list)  # fields the customer does not know / has none of
    stated: list[str] = Field(default_factory=list)  # derivable fields the customer stated (over_warranty)
    asking: str | None = None
    attempts: dict[str, int] = Field(default_factory=dict)
    choice: PendingChoice | None = None
    priority: str = "normal"
    priority_reasons: list[str] = Field(default_factory=list)
    # Values the customer corrected during intake, kept for the case timeline: staff should
    # know a phone number was changed, not only its final value.
    corrections: list[dict[str, Any]] = Field(default_factory=list)
    purchase_span: tuple[date, date] | None = None
    recent_purchase: bool = False
    resume_phase: str | None = None
    greeted: bool = False
    empathized: bool = False
    last_seen: datetime | None = None
    awaiting_case: AwaitingCase | None = None
    # Id of the stored message this intake started with, set by the service: a case's transcript
    # runs from there, never into the previous intake.
    transcript_from: int | None = None


@dataclass(frozen=True)
class Choice:
    """A suggested answer a channel may offer as a button; choosing it sends `payload` as the reply."""

    payload: str
    label: str | None = None  # None: the label template names it; set for data such as a mall's name


@dataclass(frozen=True)
class Reply:
    template: str
    context: dict[str, Any] = field(default_factory=dict)
    choices: tuple[Choice, ...] = ()


# Suggested answers per question; answers stay free text, buttons only save typing.
_CHOICES: dict[str, tuple[Choice, ...]] = {
    "summary": (Choice("确认"), Choice("修改"), Choice("取消")),
    "cancel_confirm": (Choice("确定"), Choice("继续")),
    "ask/over_warranty": (Choice("是"), Choice("不是"), Choice("不清楚")),
    "ask/order_no": (Choice("没有"),),
    "ask/expectation": tuple(Choice(word) for word in ("退货", "换货", "维修", "退款", "赔偿")),
}


@dataclass(frozen=True)
class OpenCase:
    """Open a case with these fields (typed values, every public key present)."""

    fields: dict[str, Any]
    priority_reasons: list[str]
    corrections: list[dict[str, Any]]


@dataclass(frozen=True)
class CaseReply:
    """The customer answered staff's question, a proposed solution or the satisfaction follow-up.

    The turn carries no acknowledgement for it: what the customer is told depends on what the case
    made of the answer (a proposal replaced meanwhile turns "同意" into a relayed answer), which only
    the service applying the effect knows.
    """

    number: str
    kind: str
    text: str
    score: int | None = None  # satisfaction 1-5
    agrees: bool | None = None  # to a proposed solution


@dataclass(frozen=True)
class LookUpCases:
    """Tell the customer where their cases stand; `number` when they typed one."""

    text: str


Effect = OpenCase | LookUpCases | CaseReply


@dataclass(frozen=True)
class Turn:
    state: DialogState
    replies: list[Reply]
    effects: list[Effect]


@dataclass
class _Turn:
    """Mutable scratch space while one message is processed."""

    state: DialogState
    now: datetime
    catalog: Catalog
    replies: list[Reply] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    progressed: bool = False  # the message added or changed a field

    def say(self, template: str, **context: Any) -> None:
        self.replies.append(Reply(template, context, _CHOICES.get(template, ())))

    def done(self) -> Turn:
        return Turn(self.state, self.replies, self.effects)


def new_state(now: datetime, *, greeted: bool = False) -> DialogState:
    return DialogState(last_seen=now, greeted=greeted)


def step(state: DialogState, message: str, *, now: datetime, catalog: Catalog, attachments: int = 0,
         evidence_case: str | None = None) -> Turn:
    """Process one customer message; `attachments` counts the photos/files that came with it.

    `evidence_case`: the open case they join when no intake is under way (the service looks it up):
    a photo sent after the case was opened is for that case, not the start of a new complaint.
    """
    turn = _Turn(state.model_copy(deep=True), now, catalog)
    s = turn.state
    returning = s.last_seen is not None and now - s.last_seen > RESUME_AFTER and bool(s.fields)
    s.last_seen = now
    text = clean_message(message)
    if not s.greeted:
        s.greeted = True
        turn.say("greeting", has_content=bool(text) and classify(text) not in (Intent.GREETING, Intent.GIBBERISH))
    elif returning:
        turn.say("welcome_back")
    if len(text) > MAX_EXTRACT_CHARS:
        turn.say("long_message", limit=MAX_EXTRACT_CHARS)
    if attachments and evidence_case is not None and not s.fields:
        turn.say("evidence_added", count=attachments, number=evidence_case)
        # The caption describes the files ("柜门这里也开裂了"; it is kept with them), not a new
        # complaint; unless it answers staff's question or asks something of its own.
        if not text or (s.awaiting_case is None
                        and classify(text) not in (Intent.STATUS, Intent.RESTART, Intent.CANCEL)):
            return turn.done()
    elif attachments:
        turn.say("evidence_received", count=attachments)
        if not text:
            return _prompt(turn)

    intent = classify(text) if text else Intent.GIBBERISH
    if s.phase == "cancelling":
        if YES.match(text):
            turn.state = new_state(now, greeted=True)
            turn.say("cancelled")
            return turn.done()
        s.phase = s.resume_phase or "collecting"
        s.resume_phase = None
        turn.say("cancel_aborted")
        if NO.match(text):
            return _prompt(turn)
    if s.awaiting_case is not None and not s.fields and intent not in (Intent.STATUS, Intent.RESTART, Intent.CANCEL):
        return _answer_case(turn, s.awaiting_case, text)
    if intent is Intent.RESTART:
        turn.state = new_state(now, greeted=True)
        turn.say("restarted")
        return _prompt(turn)
    if intent is Intent.CANCEL:
        if not s.fields:
            turn.state = new_state(now, greeted=True)
            turn.say("cancelled")
            return turn.done()
        s.resume_phase, s.phase = s.phase, "cancelling"
        turn.say("cancel_confirm")
        return turn.done()
    if intent is Intent.STATUS:
        turn.effects.append(LookUpCases(text))
        turn.say("case_status")
        return _prompt(turn) if s.fields else turn.done()
    if intent in _ANSWER_THEN_CARRY_ON:
        template = _ANSWER_THEN_CARRY_ON[intent]
        if template:
            turn.say(template)
        if intent is Intent.THANKS and not s.fields:
            return turn.done()  # "谢谢" after a case was opened needs no new question
        return _prompt(turn)
    if intent is Intent.INSULT:
        turn.say("calm_down")

    found = extract(text, now=now, catalog=catalog, asking=s.asking, known_city=s.fields.get("city"))
    if s.phase == "confirming" and not found.values and not found.choices:
        if YES.match(text):
            return _open_case(turn)
        if NO.match(text) or CORRECTION.search(text):
            turn.say("what_to_change")
            return turn.done()
    _resolve_choice(turn, text, found)
    _answer_to_question(turn, text, found)
    _merge(turn, text, found)
    return _prompt(turn)


def fill(state: DialogState, message: str, *, now: datetime, catalog: Catalog) -> Turn:
    """Merge one message's facts into `state` the way `step` does, without choosing what to ask next.

    For dialog managers that ask on their own (a Rasa form): `state.asking` is the field they asked
    for. The replies are only about this message (invalid or ambiguous values, "不知道" to the
    question, what was noted), plus the open choice, if any, as its question.
    """
    turn = _Turn(state.model_copy(deep=True), now, catalog)
    turn.state.last_seen = now
    text = clean_message(message)
    found = extract(text, now=now, catalog=catalog, asking=turn.state.asking,
                    known_city=turn.state.fields.get("city"))
    _resolve_choice(turn, text, found)
    _answer_to_question(turn, text, found)
    _merge(turn, text, found)
    if turn.state.choice is not None:
        turn.replies.append(_choice_reply(catalog, turn.state.choice))
    return turn.done()


_SATISFIED_WORDS = re.compile(r"非常满意|很满意|满意|挺好|可以|解决了|好的")
_DISSATISFIED_WORDS = re.compile(r"不满意|没解决|没有解决|不行|很差|太差|不好|失望")
_AGREE = re.compile(r"^(?:我)?(?:同意|接受|可以|行|好的?|没问题|就这样|ok|OK)(?:吧|的|了)?[。！!]*$")
_DISAGREE = re.compile(r"不同意|不接受|不行|不可以|不满意|不要|太少|不够")


def _satisfaction_score(text: str) -> int | None:
    """1-5 from "5", "五分", "满意", "没解决"; None when the message is no answer to the question."""
    digit = re.fullmatch(r"\s*([1-5一二三四五])\s*分?\s*", text)
    if digit:
        token = digit.group(1)
        return int(token) if token.isdigit() else "一二三四五".index(token) + 1
    if _DISSATISFIED_WORDS.search(text):
        return 1
    if _SATISFIED_WORDS.search(text):
        return 5 if "非常" in text or "很" in text else 4
    return None


def _answer_case(turn: _Turn, awaited: AwaitingCase, text: str) -> Turn:
    """Route the customer's reply to the case that asked for it; staff see it on the timeline."""
    s = turn.state
    if not text:
        turn.say("not_understood")
        return turn.done()
    if awaited.kind == "satisfaction":
        score = _satisfaction_score(text)
        if score is None:
            turn.say("satisfaction_ask_again", number=awaited.number)
            return turn.done()
        turn.effects.append(CaseReply(awaited.number, awaited.kind, text, score=score))
    elif awaited.kind == "solution":
        agrees = True if _AGREE.match(text) else False if _DISAGREE.search(text) else None
        turn.effects.append(CaseReply(awaited.number, awaited.kind, text, agrees=agrees))
    else:
        turn.effects.append(CaseReply(awaited.number, awaited.kind, text))
    s.awaiting_case = None
    return turn.done()


def _resolve_choice(turn: _Turn, text: str, found: Extraction) -> None:
    """A reply to "which of these did you mean": a number, a name, or a city."""
    choice = turn.state.choice
    if choice is None:
        return
    if choice.field in found.values:
        turn.state.choice = None
        return
    picked: str | None = None
    number = re.search(r"\d+|[一二两三四五](?=个|家|号)?", text.strip())
    if number and len(text.strip()) <= 6:
        value = int(number.group()) if number.group().isdigit() else _ORDINALS.get(number.group(), 0)
        if 1 <= value <= len(choice.options):
            picked = choice.options[value - 1]
    if picked is None:
        for option in choice.options:
            mall = turn.catalog.mall(option)
            labels = (mall.name, mall.city, *mall.aliases) if mall else (option,)
            if any(label and label in text for label in labels):
                picked = option
                break
    if picked is not None:
        found.values[choice.field] = picked
        found.choices.pop(choice.field, None)
        turn.state.choice = None


def _answer_to_question(turn: _Turn, text: str, found: Extraction) -> None:
    """Interpret the reply to the field just asked when extraction alone did not fill it."""
    s = turn.state
    key = s.asking
    if key is None or key in found.values or key in found.choices:
        return
    if key == "over_warranty" and (YES.match(text) or NO.match(text)):
        found.values[key] = bool(YES.match(text))
        found.warranty_stated = True
        return
    if key == "brand" and not (found.unknown or found.refused) and not found.values:
        candidate = _BRAND_FILLER.sub("", text.strip(" 。.!！"))
        if _FREE_BRAND.match(candidate):
            found.values[key] = candidate  # a brand the catalog does not list: recorded as said
            return
    if key == "description" and not found.unknown and not found.values and has_cjk(text) and len(text) >= 4:
        found.values[key] = text[:MAX_EXTRACT_CHARS]
        return
    if key == "expectation" and not found.unknown and has_cjk(text) and len(text) >= 2:
        found.values[key] = ["other"]
        return
    if key == "name" and not found.unknown:
        name = name_from_answer(text)
        if name:
            found.values[key] = name
            return
    spec = SPECS[key]
    if found.refused:
        turn.say("why_needed", field=key, required=spec.required)
        if not spec.required:
            _mark_unknown(s, key)
    elif found.unknown:
        if spec.required and not (key in UNKNOWABLE_REQUIRED and s.attempts.get(key, 0) >= 2):
            turn.say("required_unknown", field=key)
        else:
            _mark_unknown(s, key)
            turn.say("unknown_ok", field=key)
    elif key not in found.problems and not found.values:
        turn.say("not_understood_field", field=key)


def _mark_unknown(state: DialogState, key: str) -> None:
    if key not in state.unknown:
        state.unknown.append(key)
    state.fields.pop(key, None)


def _merge(turn: _Turn, text: str, found: Extraction) -> None:
    """Take the message's values; a different value for a recorded field is a correction."""
    s = turn.state
    added: list[str] = []
    changed: list[dict[str, Any]] = []
    correcting = CORRECTION.search(text) is not None
    for key in FIELD_KEYS:
        if key not in found.values or key == "priority":
            continue
        value = to_state_value(key, found.values[key])
        old = s.fields.get(key)
        if key == "city" and "mall" in s.fields and "mall" not in found.values:
            continue  # the mall decides the city
        if key == "over_warranty":
            if not found.warranty_stated:
                continue  # derived from the purchase date below, unless the customer says otherwise
            if key not in s.stated:
                s.stated.append(key)
        if key == "description" and old:
            answering_other = s.asking not in (None, "description") and len(value) <= 8
            if value not in old and not answering_other:
                s.fields[key] = f"{old}；{value}"
            continue
        if key == "expectation" and old and not correcting:
            value = list(dict.fromkeys([*old, *value]))
        if old is None:
            added.append(key)
        elif old != value:
            changed.append({"field": key, "old": old, "new": value})
            s.corrections.append({"field": key, "old": old, "new": value, "at": turn.now.isoformat()})
        s.fields[key] = value
        if key in s.unknown:
            s.unknown.remove(key)
    for key, options in found.choices.items():
        if key not in found.values:
            s.choice = PendingChoice(field=key, options=list(options))
    for key, problem in found.problems.items():
        if key not in found.values and key not in s.unknown and (key == s.asking or key == "phone"):
            s.attempts[key] = s.attempts.get(key, 0) + (0 if key == s.asking else 1)
            turn.say("invalid", field=key, reason=problem)
    _derive(s, found, turn.catalog)
    turn.progressed = bool(added or changed)
    if changed:
        turn.say("corrected", changes=[_display_change(turn.catalog, c) for c in changed])
    shown = [k for k in added if k != s.asking and k not in ("city", "over_warranty")]
    if shown:
        turn.say("noted", items=[_display(turn.catalog, k, s.fields[k]) for k in shown])
    if "description" in added and not s.empathized:
        s.empathized = True
        turn.say("empathy", priority=s.priority)


def _derive(s: DialogState, found: Extraction, catalog: Catalog) -> None:
    mall = catalog.mall(s.fields["mall"]) if "mall" in s.fields else None
    if mall is not None:
        s.fields["city"] = mall.city
    if "over_warranty" not in s.stated:
        purchase = from_state_value("purchase_date", s.fields.get("purchase_date"))
        if found.purchase_span is not None:
            s.purchase_span = found.purchase_span
        s.recent_purchase = s.recent_purchase or found.recent_purchase
        today = s.last_seen.astimezone(SHANGHAI).date() if s.last_seen else None
        derived = over_warranty_from(purchase, s.purchase_span, today) if today else None
        if derived is None and s.recent_purchase:
            derived = False
        if derived is not None:
            s.fields["over_warranty"] = derived
    level = max(s.priority, found.priority, key=PRIORITY_ORDER.index)
    amount = from_state_value("amount", s.fields.get("amount"))
    if amount is not None and amount >= LARGE_AMOUNT:
        level = max(level, "important", key=PRIORITY_ORDER.index)
        found.priority_reasons.append("large_amount")
    s.priority = level
    s.priority_reasons = list(dict.fromkeys([*s.priority_reasons, *found.priority_reasons]))


def _next_field(s: DialogState) -> str | None:
    for spec in ASK_ORDER:
        key = spec.key
        if key in s.fields or key in s.unknown:
            continue
        if key == "over_warranty" and "purchase_date" in s.fields:
            continue
        if not spec.required and s.attempts.get(key, 0) >= OPTIONAL_ATTEMPTS:
            _mark_unknown(s, key)
            continue
        return key
    return None


def _prompt(turn: _Turn) -> Turn:
    """End the turn with the one thing we need next: a choice, a field, or confirmation."""
    s = turn.state
    if s.phase == "cancelling":
        return turn.done()
    if s.choice is not None:
        turn.replies.append(_choice_reply(turn.catalog, s.choice))
        s.asking = s.choice.field
        return turn.done()
    key = _next_field(s)
    if key is None:
        s.phase, s.asking = "confirming", None
        turn.say("summary", items=_summary(turn.catalog, s))
        return turn.done()
    s.phase = "collecting"
    again = s.asking == key and not turn.progressed  # asked again because the answer did not help
    s.attempts[key] = s.attempts.get(key, 0) + 1
    s.asking = key
    turn.say(f"ask/{key}", again=again, attempt=s.attempts[key])
    return turn.done()


def _choice_reply(catalog: Catalog, choice: PendingChoice) -> Reply:
    options = [_display(catalog, choice.field, o)["value"] for o in choice.options]
    return Reply("choose", {"field": choice.field, "options": options},
                 tuple(Choice(str(i), label) for i, label in enumerate(options, 1)))


def _open_case(turn: _Turn) -> Turn:
    s = turn.state
    fields = {key: from_state_value(key, s.fields.get(key)) for key in FIELD_KEYS}
    fields["priority"] = s.priority
    turn.effects.append(OpenCase(fields=fields, priority_reasons=list(s.priority_reasons),
                                 corrections=list(s.corrections)))
    turn.say("case_opened", priority=s.priority, name=s.fields.get("name"))
    turn.state = new_state(turn.now, greeted=True)
    return turn.done()


def _display(catalog: Catalog, key: str, value: Any) -> dict[str, Any]:
    """A field as the customer reads it back; templates decide the wording around it."""
    if key == "mall":
        mall = catalog.mall(value)
        shown: Any = mall.name if mall else value
    else:
        shown = value
    return {"field": key, "value": shown}


def _display_change(catalog: Catalog, change: dict[str, Any]) -> dict[str, Any]:
    return {"field": change["field"], "old": _display(catalog, change["field"], change["old"])["value"],
            "new": _display(catalog, change["field"], change["new"])["value"]}


def _summary(catalog: Catalog, s: DialogState) -> list[dict[str, Any]]:
    items = []
    for key in FIELD_KEYS:
        value = s.priority if key == "priority" else s.fields.get(key)
        items.append({**_display(catalog, key, value), "unknown": key in s.unknown})
    return items


def public_fields(state: DialogState) -> dict[str, Any]:
    """The fields collected so far, public keys and JSON values (for `kesu chat --jsonl`)."""
    return to_public({**state.fields, "priority": state.priority})
