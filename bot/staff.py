"""Staff actions on cases, one service for every front end (Telegram groups today, a console later).

Authorization lives here, not in adapters: an action is allowed only from a staff group that
serves the case's mall (its own or escalation groups, or the deployment-wide fallback and
escalation groups for unrouted cases). Customers' private chats never qualify, whatever they send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import Settings
from dialogs.catalog import Catalog
from storage.repository import CaseRecord, Store


@dataclass(frozen=True)
class StaffMember:
    id: str  # "telegram:123456"
    name: str


@dataclass(frozen=True)
class ClaimResult:
    allowed: bool
    won: bool
    case: CaseRecord | None


class StaffService:
    def __init__(self, store: Store, catalog: Catalog, settings: Settings,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.catalog = catalog
        self.clock = clock
        self.deployment_chats = {chat for chat in (settings.fallback_telegram_chat, settings.escalation_telegram_chat)
                                 if chat is not None}

    def telegram_chat_serves(self, chat_id: int, case: CaseRecord) -> bool:
        """Only members of a staff group that receives this case's notifications may act on it."""
        if chat_id in self.deployment_chats:
            return True
        mall = self.catalog.mall(case.fields.get("mall") or "")
        return mall is not None and mall.serves_telegram_chat(chat_id)

    def is_staff_chat(self, chat_id: int) -> bool:
        return chat_id in self.deployment_chats or any(m.serves_telegram_chat(chat_id) for m in self.catalog.malls)

    def find(self, number: str) -> CaseRecord | None:
        return self.store.get_case(number)

    def claim(self, number: str, member: StaffMember, *, telegram_chat: int) -> ClaimResult:
        """First claimer owns the case (首问负责制); later claimers learn who does."""
        case = self.store.get_case(number)
        if case is None or not self.telegram_chat_serves(telegram_chat, case):
            return ClaimResult(allowed=False, won=False, case=case)
        with self.store.unit_of_work() as uow:
            won, current = uow.claim_case(case_id=case.id, owner=member.id, owner_name=member.name, at=self.clock())
        return ClaimResult(allowed=True, won=won, case=current)
