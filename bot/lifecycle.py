"""The case lifecycle in one place: states, which action may move a case where, and who approves money.

Seeds 000–003: the mall owns a case from first contact (首问负责), verifies before proposing (核),
gets money approved by the role the amount calls for, keeps its promises (信), resolves, and asks
the customer whether they are satisfied (回访) — dissatisfaction reopens the case.

    new ─claim→ claimed ─verify→ verifying ─propose→ proposed ─agree→ agreed ─resolve→ resolved
                   │                  │         └→ awaiting_approval ─approve→ proposed       │
                   └──── reject ──────┴→ rejected                         follow_up ←─────────┘
    follow_up ─satisfied→ closed;  follow_up/resolved/closed/rejected ─reopen→ reopened (≈ claimed)

States and actions are stable strings: they are stored on cases and in timelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    CLAIMED = "claimed"
    VERIFYING = "verifying"
    PROPOSED = "proposed"
    AWAITING_APPROVAL = "awaiting_approval"
    AGREED = "agreed"
    RESOLVED = "resolved"
    FOLLOW_UP = "follow_up"
    CLOSED = "closed"
    REJECTED = "rejected"
    REOPENED = "reopened"


class Action(StrEnum):
    CLAIM = "claim"
    VERIFY = "verify"
    NOTE = "note"
    ASK = "ask"
    PROGRESS = "progress"
    PROPOSE = "propose"
    APPROVE = "approve"
    AGREE = "agree"
    RESOLVE = "resolve"
    REJECT = "reject"
    REASSIGN = "reassign"
    CLASSIFY = "classify"  # nature and/or grade (一般/重要/重大); keeps the status
    FOLLOW_UP = "follow_up"
    CLOSE = "close"
    REOPEN = "reopen"


FINISHED = frozenset({Status.CLOSED, Status.REJECTED})
OPEN = frozenset(Status) - FINISHED
WORKING = frozenset({Status.CLAIMED, Status.VERIFYING, Status.REOPENED})

# action → (states it may start from, state it leads to; None keeps the state)
TRANSITIONS: dict[Action, tuple[frozenset[Status], Status | None]] = {
    Action.CLAIM: (frozenset({Status.NEW}), Status.CLAIMED),
    Action.VERIFY: (WORKING, Status.VERIFYING),
    Action.NOTE: (frozenset(Status), None),
    Action.ASK: (OPEN - {Status.NEW}, None),
    Action.PROGRESS: (OPEN - {Status.NEW}, None),
    Action.PROPOSE: (WORKING | {Status.PROPOSED}, Status.PROPOSED),  # or AWAITING_APPROVAL, see needs_approval
    Action.APPROVE: (frozenset({Status.AWAITING_APPROVAL}), Status.PROPOSED),
    Action.AGREE: (frozenset({Status.PROPOSED}), Status.AGREED),
    Action.RESOLVE: (WORKING | {Status.PROPOSED, Status.AGREED}, Status.RESOLVED),
    Action.REJECT: (frozenset({Status.NEW}) | WORKING, Status.REJECTED),
    Action.REASSIGN: (OPEN, None),
    Action.CLASSIFY: (OPEN, None),
    Action.FOLLOW_UP: (frozenset({Status.RESOLVED}), Status.FOLLOW_UP),
    Action.CLOSE: (frozenset({Status.RESOLVED, Status.FOLLOW_UP}), Status.CLOSED),
    Action.REOPEN: (frozenset({Status.RESOLVED, Status.FOLLOW_UP, Status.CLOSED, Status.REJECTED}), Status.REOPENED),
}


# While a case is in these states it still waits for the customer's answer of each kind (a staff
# question, a proposed solution, the satisfaction follow-up); outside them the customer's next
# message is an ordinary message (staff recorded the agreement by phone, the case was closed, ...).
AWAITS_ANSWER: dict[str, frozenset[Status]] = {
    "question": OPEN,
    "solution": frozenset({Status.PROPOSED, Status.AWAITING_APPROVAL}),
    "satisfaction": frozenset({Status.RESOLVED, Status.FOLLOW_UP}),
}


class NotAllowedNow(Exception):
    """The action does not apply to a case in this state; the message names both."""

    def __init__(self, action: Action, status: str) -> None:
        super().__init__(f"{action.value} is not possible while the case is {status}")
        self.action = action
        self.status = status


def next_status(action: Action, current: str) -> Status | None:
    """Where `action` takes a case in `current`; raises NotAllowedNow if it may not start there."""
    allowed_from, target = TRANSITIONS[action]
    if Status(current) not in allowed_from:
        raise NotAllowedNow(action, current)
    return target


# Roles in order of authority, and the seeds' approval limits in yuan (003): refunds and
# compensation up to 50 the front-desk manager, 200 the deputy store manager, 2000 the store
# manager, anything above the chain's operations VP. Deployments override the limits.
ROLES = ("specialist", "front_desk_manager", "deputy_store_manager", "store_manager", "operations_vp")
DEFAULT_LIMITS: dict[str, Decimal | None] = {
    "specialist": Decimal(0),
    "front_desk_manager": Decimal(50),
    "deputy_store_manager": Decimal(200),
    "store_manager": Decimal(2000),
    "operations_vp": None,  # no limit
}
MONEY_CODES = frozenset({"refund", "compensation"})
# A solution is described with the customer's expectation codes (PRODUCT.md).
SOLUTION_CODES = frozenset({"return", "exchange", "repair", "refund", "compensation", "apology", "inspection",
                            "deliver", "other"})


@dataclass(frozen=True)
class ApprovalRule:
    limits: dict[str, Decimal | None]

    def may_approve(self, role: str, amount: Decimal) -> bool:
        limit = self.limits.get(role, Decimal(0))
        return limit is None or amount <= limit

    def approver_for(self, amount: Decimal) -> str:
        """The lowest role whose limit covers the amount."""
        for role in ROLES:
            if self.may_approve(role, amount):
                return role
        return ROLES[-1]

    def needs_approval(self, codes: list[str], amount: Decimal | None, proposer_role: str) -> bool:
        """Money (refund or compensation) beyond what the proposer may grant waits for approval."""
        if amount is None or amount <= 0 or not MONEY_CODES & set(codes):
            return False
        return not self.may_approve(proposer_role, amount)
