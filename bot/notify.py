"""Who on the staff side hears about a new case, and what they read.

Routing comes from the catalog: a mall's own staff groups, plus its escalation groups for 重大
cases. A mall without groups still gets its cases seen: they go to the deployment's fallback
group, flagged as unrouted. Customers' phones are masked in every group message.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Settings
from bot.outbound import Button, OutboundMessage
from bot.templating import Renderer
from dialogs.catalog import Catalog, Mall, StaffGroups
from storage.repository import CaseRecord

CLAIM = "claim"
VIEW = "view"


@dataclass(frozen=True)
class Delivery:
    channel: str  # "telegram" | "wecom"
    target: str
    message: OutboundMessage


def staff_action(payload: str) -> tuple[str, str] | None:
    """("claim", "KS…") from a staff button's payload; None for anything else."""
    action, _, number = payload.partition(":")
    return (action, number) if action in (CLAIM, VIEW) and number else None


class StaffNotifier:
    def __init__(self, catalog: Catalog, renderer: Renderer, settings: Settings) -> None:
        self.catalog = catalog
        self.renderer = renderer
        self.fallback = StaffGroups(
            telegram=(settings.fallback_telegram_chat,) if settings.fallback_telegram_chat else (),
            wecom=(settings.fallback_wecom_key,) if settings.fallback_wecom_key else ())
        self.escalation = StaffGroups(
            telegram=(settings.escalation_telegram_chat,) if settings.escalation_telegram_chat else (),
            wecom=(settings.escalation_wecom_key,) if settings.escalation_wecom_key else ())

    def is_routed(self, mall_id: str | None) -> bool:
        mall = self.catalog.mall(mall_id or "")
        return bool(mall and mall.staff)

    def new_case(self, case: CaseRecord) -> list[Delivery]:
        mall = self.catalog.mall(case.fields.get("mall") or "")
        groups = [mall.staff if mall and mall.staff else self.fallback]
        major = case.fields.get("priority") == "major"
        if major:
            groups += [mall.escalation if mall else StaffGroups(), self.escalation]
        context = self._context(case, mall)
        text = self.renderer.render("staff/new_case", context)
        markdown = self.renderer.render("staff/new_case_wecom", context)
        buttons = ((Button(self.renderer.button_label(CLAIM), f"{CLAIM}:{case.number}"),
                    Button(self.renderer.button_label(VIEW), f"{VIEW}:{case.number}")),)
        telegram = dict.fromkeys(chat for g in groups for chat in g.telegram)
        wecom = dict.fromkeys(key for g in groups for key in g.wecom)
        return ([Delivery("telegram", str(chat), OutboundMessage(text, buttons)) for chat in telegram]
                + [Delivery("wecom", key, OutboundMessage(markdown, markdown=True)) for key in wecom])

    def _context(self, case: CaseRecord, mall: Mall | None) -> dict[str, object]:
        return {"case": case, "fields": case.fields, "mall_name": mall.name if mall else case.fields.get("mall"),
                "unrouted": case.unrouted}
