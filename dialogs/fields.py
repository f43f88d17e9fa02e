"""The 400 script's fields as data: one table drives asking order, requirements and parsing.

Keys are PRODUCT.md's public field names and never change: stored conversations and cases
refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class FieldSpec:
    key: str
    required: bool  # required fields are asked until given; the rest are asked once
    asked: bool = True  # False: derived (city, priority) and never asked


FIELD_KEYS = (
    "name", "phone", "city", "mall", "amount", "purchase_date", "brand", "delivery_date", "delivery_address",
    "order_no", "over_warranty", "priority", "description", "expectation",
)

# Asking order: what happened first (an upset customer wants to be heard), then who and how to
# reach them, where and what they bought, the details, and finally what they expect.
ASK_ORDER: tuple[FieldSpec, ...] = (
    FieldSpec("description", required=True),
    FieldSpec("name", required=True),
    FieldSpec("phone", required=True),
    FieldSpec("mall", required=True),
    FieldSpec("brand", required=True),
    FieldSpec("purchase_date", required=False),
    FieldSpec("amount", required=False),
    FieldSpec("delivery_date", required=False),
    FieldSpec("delivery_address", required=False),
    FieldSpec("order_no", required=False),
    FieldSpec("over_warranty", required=False),  # asked only while the purchase date is unknown
    FieldSpec("expectation", required=True),
)
SPECS = {spec.key: spec for spec in ASK_ORDER}
DATE_FIELDS = ("purchase_date", "delivery_date")


def to_state_value(key: str, value: Any) -> Any:
    """Field values as stored in the JSON conversation state."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def from_state_value(key: str, value: Any) -> Any:
    """Typed values for the case record: dates and Decimal amounts."""
    if value is None:
        return None
    if key in DATE_FIELDS:
        return date.fromisoformat(value)
    if key == "amount":
        return Decimal(str(value))
    return value
