"""Who on the staff side hears about a new case, and what they read.

Routing comes from the catalog: a mall's own staff groups, plus its escalation groups for 重大
cases. A mall without groups still gets its cases seen: they go to the deployment's fallback
group, flagged as unrouted. Customers' phones are masked in every group message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from bot.config import Settings
from bot.outbound import Button, OutboundMessage
from bot.templating import Renderer
from dialogs.catalog import Catalog, Mall, StaffGroups
from storage.repository import CaseRecord

log = logging.getLogger(__name__)

CLAIM = "claim"
VIEW = "view"

# A mainland mobile anywhere in a staff message (the customer's own words can carry one): optional
# +86/0086, separators between digits; not part of a longer number such as an order number.
# \d matches full-width digits as well; the leading "1[3-9]" is spelled out in both widths.
_MOBILE = re.compile(r"(?<![\d+＋])(?:(?:[+＋]|00)86[\s-]?)?([1１][3-9３-９]\d(?:[\s-]?\d){8})(?!\d)")
# WeCom markdown syntax a customer could use to forge links, colours or headings in a staff group.
_MARKDOWN_SPECIALS = str.maketrans({"<": "＜", ">": "＞", "[": "［", "]": "］", "(": "（", ")": "）", "`": "｀",
                                    "*": "＊", "#": "＃", "_": "＿", "\r": " ", "\n": " "})


@dataclass(frozen=True)
class Delivery:
    channel: str  # "telegram" | "wecom"
    target: str
    message: OutboundMessage


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

    def staff_groups(self, case: CaseRecord) -> StaffGroups:
        """Where a case's staff work: its mall's groups, or the deployment's fallback for a mall without."""
        mall = self.catalog.mall(case.fields.get("mall") or "")
        return mall.staff if mall and mall.staff else self.fallback

    def new_case(self, case: CaseRecord) -> list[Delivery]:
        mall = self.catalog.mall(case.fields.get("mall") or "")
        groups = [self.staff_groups(case)]
        if case.fields.get("priority") == "major":
            groups += self._escalation_groups(mall)
        return self._deliveries(case, groups, self._context(case, mall), claim=True)

    def raised_to_major(self, case: CaseRecord, by: str) -> list[Delivery]:
        """A case graded 重大 after intake reaches the escalation groups at once, as a new 重大 case does."""
        mall = self.catalog.mall(case.fields.get("mall") or "")
        context = {**self._context(case, mall), "raised_by": by}
        return self._deliveries(case, self._escalation_groups(mall), context, claim=case.owner is None)

    def _escalation_groups(self, mall: Mall | None) -> list[StaffGroups]:
        return [mall.escalation if mall else StaffGroups(), self.escalation]

    def _deliveries(self, case: CaseRecord, groups: list[StaffGroups], context: dict[str, Any], *,
                    claim: bool) -> list[Delivery]:
        text = mask_mobiles(self.renderer.render("staff/new_case", context))
        view = Button(self.renderer.button_label(VIEW), f"{VIEW}:{case.number}")
        buttons = ((Button(self.renderer.button_label(CLAIM), f"{CLAIM}:{case.number}"), view) if claim else (view,),)
        markdown = mask_mobiles(self.renderer.render("staff/new_case_wecom", self._markdown_context(context)))
        telegram = dict.fromkeys(chat for g in groups for chat in g.telegram)
        wecom = dict.fromkeys(key for g in groups for key in g.wecom)
        if not telegram and not wecom:
            log.warning("case %s: no staff group to notify (mall %r has none and no fallback group is set)",
                        case.number, case.fields.get("mall"))
        return ([Delivery("telegram", str(chat), OutboundMessage(text, buttons)) for chat in telegram]
                + [Delivery("wecom", key, OutboundMessage(markdown, markdown=True)) for key in wecom])

    def _context(self, case: CaseRecord, mall: Mall | None) -> dict[str, Any]:
        return {"case": case, "fields": case.fields, "mall_name": mall.name if mall else case.fields.get("mall"),
                "unrouted": case.unrouted, "raised_by": None}

    @staticmethod
    def _markdown_context(context: dict[str, Any]) -> dict[str, Any]:
        """The customer's words shown as words in WeCom markdown, never as links, colours or headings."""
        fields = context["fields"]
        assert isinstance(fields, dict)
        return {**context, "fields": {key: markdown_literal(value) for key, value in fields.items()}}


def mask_mobiles(text: str) -> str:
    """138****5678 for every mainland mobile in ``text``: staff groups never read a full number."""
    def masked(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(1))
        return f"{digits[:3]}****{digits[-4:]}"
    return _MOBILE.sub(masked, text)


def markdown_literal(value: Any) -> Any:
    """Strings (and lists of strings) with markdown syntax replaced by look-alike full-width characters."""
    if isinstance(value, str):
        return value.translate(_MARKDOWN_SPECIALS)
    if isinstance(value, list | tuple):
        return [markdown_literal(item) for item in value]
    return value
