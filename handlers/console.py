"""The terminal channel: a person typing, or an evaluation tool speaking JSON lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from bot.service import InboundMessage, IntakeService, TurnOutcome
from dialogs.engine import public_fields

CHANNEL = "console"


def _turn_json(outcome: TurnOutcome) -> dict[str, Any]:
    state = outcome.state
    return {
        "replies": outcome.replies,
        "asking": state.asking,
        "state": "opened" if outcome.case else state.phase,
        "fields": {} if outcome.case else public_fields(state),
        "case": outcome.case.public_dict() if outcome.case else None,
    }


def _decode(line: str) -> str:
    """Each line should be a JSON string; a bare line is taken as the text itself."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return line.rstrip("\n")
    return value if isinstance(value, str) else line.rstrip("\n")


def run_jsonl(service: IntakeService, customer_id: str, lines: Iterable[str], out: TextIO) -> None:
    """Exactly one JSON object per input line, nothing before the first."""
    for line in lines:
        outcome = service.handle(InboundMessage(CHANNEL, customer_id, _decode(line)))
        out.write(json.dumps(_turn_json(outcome), ensure_ascii=False) + "\n")
        out.flush()


def run_interactive(service: IntakeService, customer_id: str, banner: str, prompt: str,
                    read: Callable[[str], str] = input, out: TextIO | None = None) -> None:
    """A chat in the terminal; the conversation is stored, so quitting and coming back resumes it."""
    stream = out or sys.stdout
    stream.write(banner + "\n")
    while True:
        try:
            text = read(prompt)
        except (EOFError, KeyboardInterrupt):
            stream.write("\n")
            return
        if not text.strip():
            continue
        for reply in service.handle(InboundMessage(CHANNEL, customer_id, text)).replies:
            stream.write(f"\n{reply}\n")
        stream.write("\n")
        stream.flush()
