"""What Kesu sends, independent of the platform: text plus optional buttons.

Adapters turn this into Telegram inline keyboards, numbered WeChat text or web buttons; the
outbox stores it as JSON (`as_payload`) so a message survives until it is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Button:
    label: str
    payload: str  # customer buttons: the text to handle as if typed; staff buttons: "claim:KS…"


@dataclass(frozen=True)
class OutboundMessage:
    text: str
    buttons: tuple[tuple[Button, ...], ...] = ()  # rows of buttons
    markdown: bool = False  # WeCom robots render markdown; everyone else gets text
    extra: dict[str, Any] = field(default_factory=dict)  # adapter hints, e.g. {"edit_of": external id}

    def as_payload(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "buttons": [[{"label": b.label, "payload": b.payload} for b in row] for row in self.buttons],
            "markdown": self.markdown,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> OutboundMessage:
        rows = tuple(tuple(Button(b["label"], b["payload"]) for b in row) for row in payload.get("buttons", []))
        return cls(payload["text"], rows, bool(payload.get("markdown")), dict(payload.get("extra", {})))
