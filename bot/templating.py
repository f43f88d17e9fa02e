"""The one Jinja2 environment every sentence goes through.

StrictUndefined turns a missing variable into an error in tests instead of a blank in a
customer's chat. Customer text only ever enters as variable values, which Jinja never
re-parses, so "{{ 7*7 }}" typed by a customer is shown, not evaluated.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from bot.outbound import Button, OutboundMessage

SHANGHAI = ZoneInfo("Asia/Shanghai")

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def mask_phone(value: str | None) -> str:
    """138****5678: staff groups see enough to recognise a number, not to copy it."""
    if not value:
        return ""
    return f"{value[:3]}****{value[-4:]}" if len(value) >= 7 else "****"


def money(value: int | float | Decimal | None) -> str:
    if value is None:
        return ""
    number = Decimal(str(value))
    return f"{number:,.0f}" if number == number.to_integral_value() else f"{number:,.2f}"


def cn_date(value: date | datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = date.fromisoformat(value[:10])
    elif isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(SHANGHAI)  # the day the customer lived it, not the UTC day
    return f"{value.year}年{value.month}月{value.day}日"


def cn_time(value: datetime | str) -> str:
    """Staff read times in the mall's time zone."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    local = moment.astimezone(SHANGHAI)
    return f"{local:%Y-%m-%d %H:%M}"


def mask_target(value: str) -> str:
    """Robot keys are credentials and openids personal: staff see enough to tell them apart."""
    return value if len(value) <= 12 or value.lstrip("-").isdigit() else f"{value[:4]}…{value[-4:]}"


def pad(value: object, width: int) -> str:
    """Left-align in a terminal column: CJK characters take two cells."""
    text = str(value)
    cells = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(width - cells, 0)


def default_promises() -> dict[str, dict[str, Any]]:
    from bot.deadlines import DeadlinePolicy  # deadlines renders with a Renderer: imported late, not at load

    return DeadlinePolicy().promises_by_grade()


class Renderer:
    """Renders reply templates for one locale; deployer directories override file by file."""

    def __init__(self, override_dirs: Sequence[Path] = (), locale: str = "zh-CN",
                 promises: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``promises``: per grade, what each deadline promises (``DeadlinePolicy.promises``); the
        defaults when None. Templates say "24小时内" from it, so a deployment's 12 h reads as 12 h."""
        roots = [*override_dirs, BUILTIN_TEMPLATES]
        self.env = Environment(
            loader=ChoiceLoader([FileSystemLoader(str(root / locale)) for root in roots]),
            undefined=StrictUndefined,
            autoescape=False,  # plain-text chat messages, never HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.env.filters.update(mask_phone=mask_phone, money=money, cn_date=cn_date, cn_time=cn_time, pad=pad,
                                mask_target=mask_target)
        self.env.globals["promises"] = promises if promises is not None else default_promises()

    def render(self, template: str, context: dict[str, Any]) -> str:
        text = self.env.get_template(f"{template}.j2").render(**context)
        return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())

    def button_label(self, payload: str) -> str:
        """The label of a suggested-answer or staff-action button (templates/…/_buttons.j2)."""
        return str(self.env.get_template("_buttons.j2").module.label(payload)).strip()  # type: ignore[attr-defined]

    def message(self, template: str, context: dict[str, Any],
                choices: Sequence[tuple[str, str | None]] = ()) -> OutboundMessage:
        """A rendered reply with its buttons, one per row (phones show long labels in full)."""
        buttons = tuple((Button(label or self.button_label(payload), payload),) for payload, label in choices)
        return OutboundMessage(self.render(template, context), buttons)

    def template_names(self) -> list[str]:
        """Every renderable template (partials starting with "_" excluded)."""
        names = self.env.list_templates(extensions=["j2"])
        return sorted({name.removesuffix(".j2") for name in names if not name.rsplit("/", 1)[-1].startswith("_")})
