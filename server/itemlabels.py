"""Delayed labels for user x item decisions: "will this user buy this item within the horizon?"

The same rules as ``server.labels`` (which it mirrors for (user, item) pairs): a decision made
at ``t`` is positive when the user buys the item in ``(t, t + horizon_s]``, negative once the
event-time watermark (max event time seen - ``allowed_lateness_s``) passes ``t + horizon_s``.
Inputs are frozen at the decision (stored compactly, as 32-bit floats: ``array('f')``).

Bounds: per (user, item) at most one pending decision of each *class* every ``min_interval_s`` -
browsing (view or click), add-to-cart, favorite - so at most
``3 * ceil((horizon_s + allowed_lateness_s) / min_interval_s)`` per pair, and ``max_pending`` in total
(further decisions are skipped and counted in ``skipped``); one decision takes ~4 bytes per input
+ ~400 bytes (~550 bytes with the item model's 40 inputs: 500k pending ~ 280 MB).

>>> q = ItemLabels(horizon_s=86400, min_interval_s=3600, allowed_lateness_s=0)
>>> q.decide("u1", "i1", 1, 0.0, [1.0], 0.1), q.decide("u1", "i1", 2, 60.0, [2.0], 0.1)  # view, then click
(True, False)
>>> q.decide("u1", "i1", 3, 60.0, [3.0], 0.4)    # another class (add-to-cart) is a new decision
True
>>> q.decide("u1", "i2", 1, 90.0, [4.0], 0.2)
True
>>> [(d.item, list(d.x), y) for d, y in q.on_purchase("u1", "i1", 7200.0)]
[('i1', [1.0], True), ('i1', [3.0], True)]
>>> [(d.item, y) for d, y in q.advance(86400 + 90.0)]
[('i2', False)]
>>> len(q)
0
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Sequence
from typing import NamedTuple

# Decision class per event type: view and click are both browsing; cart and favorite stand alone.
_CLASS = {1: 0, 2: 0, 3: 1, 5: 2}


class ItemDecision(NamedTuple):
    """A (user, item) prediction waiting for its label; ``kind`` is the event type it was made at."""

    t: float
    x: Sequence[float]
    p: float
    user: str
    item: str
    kind: int


class ItemLabels:
    """Pending (user, item) decisions, resolved by purchases of the item and by the watermark."""

    def __init__(self, horizon_s: float = 86_400.0, min_interval_s: float = 3600.0,
                 allowed_lateness_s: float = 60.0, max_pending: int = 500_000) -> None:
        self.horizon_s = horizon_s
        self.min_interval_s = min_interval_s
        self.allowed_lateness_s = allowed_lateness_s
        self.max_pending = max_pending
        self.skipped = 0
        self._pending: dict[tuple[str, str], list[ItemDecision]] = {}  # sorted by t
        self._deadlines: list[tuple[float, str, str]] = []
        self._count = 0
        self._max_time = float("-inf")

    def __len__(self) -> int:
        return self._count

    @property
    def max_time(self) -> float:
        """The latest event time seen."""
        return self._max_time

    @property
    def watermark(self) -> float:
        """Max event time seen minus the allowed lateness."""
        return self._max_time - self.allowed_lateness_s

    def wants(self, user: str, item: str, kind: int, t: float) -> bool:
        """Would a decision of ``kind`` on (user, item) at ``t`` be recorded?"""
        if t + self.horizon_s <= self.watermark:
            return False
        q = self._pending.get((user, item))
        if not q:
            return True
        c = _CLASS.get(kind, kind)
        return all(_CLASS.get(d.kind, d.kind) != c or abs(t - d.t) >= self.min_interval_s for d in q)

    def decide(self, user: str, item: str, kind: int, t: float, x: Sequence[float], p: float) -> bool:
        """Record a decision unless one of the same class is pending within ``min_interval_s`` or the queue is full."""
        if not self.wants(user, item, kind, t):
            return False
        if self._count >= self.max_pending:
            self.skipped += 1
            return False
        key = (user, item)
        q = self._pending.get(key)
        if q is None:
            q = self._pending[key] = []
        q.append(ItemDecision(t, array("f", x), p, user, item, kind))
        if len(q) > 1 and t < q[-2].t:
            q.sort(key=lambda d: d.t)
        heapq.heappush(self._deadlines, (t + self.horizon_s, user, item))
        self._count += 1
        return True

    def on_purchase(self, user: str, item: str, t: float) -> list[tuple[ItemDecision, bool]]:
        """A purchase of ``item`` at ``t`` labels the earlier pending decisions on it (positive within the horizon)."""
        key = (user, item)
        q = self._pending.get(key)
        if not q:
            return []
        n = 0
        while n < len(q) and q[n].t < t:
            n += 1
        out = [(d, t <= d.t + self.horizon_s) for d in q[:n]]
        del q[:n]
        if not q:
            del self._pending[key]
        self._count -= n
        return out

    def drop_user(self, user: str) -> bool:
        """Forget every pending decision of ``user``, deadlines included (erasure); True if any were held."""
        keys = [k for k in self._pending if k[0] == user]
        for k in keys:
            self._count -= len(self._pending.pop(k))
        before = len(self._deadlines)
        self._deadlines = [d for d in self._deadlines if d[1] != user]
        if len(self._deadlines) != before:
            heapq.heapify(self._deadlines)
        return bool(keys) or len(self._deadlines) != before

    def advance(self, event_time: float) -> list[tuple[ItemDecision, bool]]:
        """Move the watermark with a new event time; return the decisions that became negative."""
        if event_time > self._max_time:
            self._max_time = event_time
        wm = self.watermark
        out: list[tuple[ItemDecision, bool]] = []
        while self._deadlines and self._deadlines[0][0] <= wm:
            _, user, item = heapq.heappop(self._deadlines)
            key = (user, item)
            q = self._pending.get(key)
            if not q:
                continue
            n = 0
            while n < len(q) and q[n].t + self.horizon_s <= wm:
                n += 1
            out.extend((d, False) for d in q[:n])
            del q[:n]
            if not q:
                del self._pending[key]
        self._count -= len(out)
        return out
