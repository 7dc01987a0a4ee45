"""The Event domain type and its validation rules.

Validation names the offending field, so the transport can report it
(``INVALID_ARGUMENT`` for unary calls, an ``EventError`` entry in batches).

>>> e = Event("e1", "u1", EventType.VIEW, 1_700_000_000.0, item_id="sku-1", price=9.5)
>>> validate(e, now=1_700_000_000.0) is None
True
>>> validate(Event("e2", "u1", EventType.VIEW, 1_700_000_000.0), now=1_700_000_000.0)
FieldError(field='item_id', message='item_id is required for VIEW events')
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

MAX_ID_LEN = 128
"""Longest id (user, event, item, session) and category or region name, in characters."""
MAX_GENDER_LEN = 32
"""Longest ``attributes.gender``, in characters."""
MAX_QUERY_LEN = 1024
MAX_CONTEXT_ENTRIES = 16
MAX_CONTEXT_LEN = 256
MAX_FUTURE_S = 300.0
MAX_BATCH = 10_000
MAX_PRICE = 1e12
"""Largest unit price accepted (any currency): beyond it INVALID_ARGUMENT, so no sum of prices can overflow."""
MAX_AMOUNT = 1e15
"""Largest ``price × units`` of one event (an order line's value)."""
MAX_REJECTED_LISTED = 1_000
"""A batch's or stream's summary lists the first this many rejected events; ``rejected_count`` has the total."""


class EventType(enum.IntEnum):
    """Event kinds; values equal the proto enum numbers."""

    VIEW = 1
    CLICK = 2
    ADD_TO_CART = 3
    REMOVE_FROM_CART = 4
    FAVORITE = 5
    PURCHASE = 6
    SEARCH = 7

    @property
    def plural(self) -> str:
        """The feature-name stem counting this type, e.g. ``views``."""
        return _PLURALS[self]


_PLURALS = {
    EventType.VIEW: "views",
    EventType.CLICK: "clicks",
    EventType.ADD_TO_CART: "carts",
    EventType.REMOVE_FROM_CART: "remove_from_carts",
    EventType.FAVORITE: "favorites",
    EventType.PURCHASE: "purchases",
    EventType.SEARCH: "searches",
}


@dataclass(slots=True)
class Event:
    """One behaviour event, in domain terms (times are unix seconds, UTC)."""

    event_id: str
    user_id: str
    type: EventType | int
    event_time: float | None
    item_id: str = ""
    category: str = ""
    price: float = 0.0
    quantity: int = 0
    session_id: str = ""
    query: str = ""
    context: dict[str, str] = field(default_factory=dict)

    @property
    def units(self) -> int:
        """Units bought: a purchase with quantity 0 counts as 1."""
        if self.type == EventType.PURCHASE:
            return max(1, self.quantity)
        return self.quantity


@dataclass(frozen=True, slots=True)
class FieldError:
    """Why an event (or request) is invalid: the field and a readable reason."""

    field: str
    message: str


def _check_id(name: str, value: str, required: bool = True) -> FieldError | None:
    if required and not value:
        return FieldError(name, f"{name} must not be empty")
    if len(value) > MAX_ID_LEN:
        return FieldError(name, f"{name} is longer than {MAX_ID_LEN} characters")
    return None


def validate(e: Event, now: float) -> FieldError | None:
    """Return the first rule ``e`` breaks, or None if it is valid."""
    for name, value in (("event_id", e.event_id), ("user_id", e.user_id)):
        err = _check_id(name, value)
        if err:
            return err
    if e.type not in EventType._value2member_map_:
        return FieldError("type", f"type must be a known EventType other than UNSPECIFIED, got {int(e.type)}")
    etype = EventType(e.type)
    if e.event_time is None:
        return FieldError("event_time", "event_time is required")
    if not math.isfinite(e.event_time) or e.event_time < 0:
        return FieldError("event_time", "event_time must be a valid time after 1970-01-01")
    if e.event_time > now + MAX_FUTURE_S:
        return FieldError("event_time", f"event_time is more than {int(MAX_FUTURE_S)} s in the future")
    if etype != EventType.SEARCH and not e.item_id:
        return FieldError("item_id", f"item_id is required for {etype.name} events")
    err = _check_id("item_id", e.item_id, required=False)
    if err:
        return err
    if etype == EventType.SEARCH and not e.query:
        return FieldError("query", "query is required for SEARCH events")
    if len(e.query) > MAX_QUERY_LEN:
        return FieldError("query", f"query is longer than {MAX_QUERY_LEN} characters")
    for name, value in (("category", e.category), ("session_id", e.session_id)):
        err = _check_id(name, value, required=False)
        if err:
            return err
    if not math.isfinite(e.price):
        return FieldError("price", "price must be a finite number")
    if e.price < 0:
        return FieldError("price", "price must be >= 0")
    if e.price > MAX_PRICE:
        return FieldError("price", f"price must be <= {MAX_PRICE:g}")
    if e.quantity < 0:
        return FieldError("quantity", "quantity must be >= 0")
    if e.price * e.units > MAX_AMOUNT:
        return FieldError("quantity", f"price × quantity must be <= {MAX_AMOUNT:g}")
    if len(e.context) > MAX_CONTEXT_ENTRIES:
        return FieldError("context", f"context has more than {MAX_CONTEXT_ENTRIES} entries")
    for k, v in e.context.items():
        if len(k) > MAX_CONTEXT_LEN or len(v) > MAX_CONTEXT_LEN:
            return FieldError("context", f"context keys and values must be <= {MAX_CONTEXT_LEN} characters")
    return None


@dataclass
class BatchResult:
    """Summary of a batch or stream: accepted, duplicates, and (index, event_id, error) for the first
    ``MAX_REJECTED_LISTED`` rejected events (``rejected_count``: all of them, so memory per stream stays
    bounded and the summary always fits in one message); ``suppressed``: events of erased users (dropped).

    >>> r = BatchResult()
    >>> for i in range(MAX_REJECTED_LISTED + 5):
    ...     r.reject(i, f"e{i}", FieldError("price", "price must be >= 0"))
    >>> len(r.rejected), r.rejected_count
    (1000, 1005)
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str, FieldError]] = field(default_factory=list)
    suppressed: int = 0
    rejected_count: int = 0

    def reject(self, index: int, event_id: str, err: FieldError) -> None:
        """Count a rejected event; list it while fewer than ``MAX_REJECTED_LISTED`` are listed."""
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTED_LISTED:
            self.rejected.append((index, event_id, err))
