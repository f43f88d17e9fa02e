"""Telling a customer something about their case, from wherever the news comes (staff, the scanner).

The message is queued in the caller's transaction: the case change and the customer's copy commit
together or not at all. Push channels (Telegram, WeChat) get it through the outbox; every channel
records it in the conversation, so a web or console customer sees it in their history and staff see
what the customer was told.
"""

from __future__ import annotations

from datetime import datetime

from bot.outbound import OutboundMessage
from storage.repository import CaseRecord, UnitOfWork

# Channels where a customer can be reached later (a push); web and console customers see the
# case status when they next write.
PUSH_CHANNELS = frozenset({"telegram", "wechat"})


def push_to_customer(uow: UnitOfWork, case: CaseRecord, message: OutboundMessage, at: datetime) -> None:
    if case.channel in PUSH_CHANNELS:
        uow.enqueue(kind="customer_update", channel=case.channel, target=case.customer_id,
                    payload=message.as_payload(), case_id=case.id, at=at)
    uow.record_outbound(channel=case.channel, customer_id=case.customer_id, texts=[message.text],
                        in_reply_to=None, at=at)
