"""Delayed labels: decisions wait until their outcome is known.

A *decision* is a prediction made at event time ``t`` for a user with the
features of that moment. Its label is positive when the user's next purchase
arrives within ``horizon_s`` after ``t``, negative once the event-time
*watermark* (max event time seen - ``allowed_lateness_s``) passes
``t + horizon_s``. Features are frozen at the decision, so a model never
learns from information computed after it.

Memory is bounded twice: at most one decision per user every
``min_interval_s`` (so at most ``ceil(horizon_s / min_interval_s)`` pending
per user), and at most ``max_pending`` in total (further decisions are
skipped and counted in ``skipped``).

>>> q = DelayedLabels(horizon_s=3600, min_interval_s=300, allowed_lateness_s=0)
>>> q.decide("u1", 0.0, [1.0], 0.2)
True
>>> q.decide("u1", 60.0, [2.0], 0.3)   # within min_interval_s of the last one
False
>>> [(d.x, y) for d, y in q.on_purchase("u1", 1800.0)]
[((1.0,), True)]
>>> q.decide("u2", 100.0, [3.0], 0.1)
True
>>> [(d.x, y) for d, y in q.advance(3700.0)]   # watermark passes 100 + 3600
[((3.0,), False)]
>>> len(q)
0
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple


class Decision(NamedTuple):
    """A prediction waiting for its label."""

    t: float
    x: Sequence[float]
    p: float


class DelayedLabels:
    """Pending decisions per user, resolved by purchases and the watermark."""

    def __init__(
        self,
        horizon_s: float,
        min_interval_s: float = 300.0,
        allowed_lateness_s: float = 60.0,
        max_pending: int = 1_000_000,
    ) -> None:
        self.horizon_s = horizon_s
        self.min_interval_s = min_interval_s
        self.allowed_lateness_s = allowed_lateness_s
        self.max_pending = max_pending
        self.skipped = 0
        self._pending: dict[str, deque[Decision]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._count = 0
        self._max_time = float("-inf")

    def __len__(self) -> int:
        return self._count

    @property
    def watermark(self) -> float:
        """Max event time seen minus the allowed lateness."""
        return self._max_time - self.allowed_lateness_s

    def wants(self, user: str, t: float) -> bool:
        """Would a decision by ``user`` at ``t`` be recorded? (Lets callers skip computing its features.)"""
        if t + self.horizon_s <= self.watermark:
            return False  # its label could no longer be observed in time
        q = self._pending.get(user)
        if not q:
            return True
        if t >= q[-1].t:  # the usual, in-order case
            return t - q[-1].t >= self.min_interval_s
        return all(abs(t - d.t) >= self.min_interval_s for d in q)  # late: keep the spacing on both sides

    def decide(self, user: str, t: float, x: Sequence[float], p: float) -> bool:
        """Record a decision unless the user has one within ``min_interval_s`` or the queue is full."""
        if not self.wants(user, t):
            return False
        if self._count >= self.max_pending:
            self.skipped += 1
            return False
        q = self._pending.get(user)
        if q is None:
            q = self._pending[user] = deque()
        d = Decision(t, tuple(x), p)  # frozen: later changes to the caller's features never leak in
        if q and t < q[-1].t:  # out of order: keep the deque sorted by time
            items = sorted([*q, d], key=lambda d: d.t)
            q.clear()
            q.extend(items)
        else:
            q.append(d)
        heapq.heappush(self._deadlines, (t + self.horizon_s, user))
        self._count += 1
        return True

    def on_purchase(self, user: str, t: float) -> list[tuple[Decision, bool]]:
        """A purchase at ``t`` labels the user's earlier pending decisions (positive within the horizon)."""
        q = self._pending.get(user)
        out: list[tuple[Decision, bool]] = []
        while q and q[0].t < t:
            d = q.popleft()
            out.append((d, t <= d.t + self.horizon_s))
        self._count -= len(out)
        if q is not None and not q:
            del self._pending[user]
        return out

    def advance(self, event_time: float, limit: int | None = None) -> list[tuple[Decision, bool]]:
        """Move the watermark with a new event time; return decisions that became negative (about
        ``limit`` at most: the rest stay overdue until the next call — a jump of the watermark is then
        spread over the following events instead of stalling one)."""
        if event_time > self._max_time:
            self._max_time = event_time
        wm = self.watermark
        out: list[tuple[Decision, bool]] = []
        while self._deadlines and self._deadlines[0][0] <= wm and (limit is None or len(out) < limit):
            _, user = heapq.heappop(self._deadlines)
            q = self._pending.get(user)
            while q and q[0].t + self.horizon_s <= wm:
                out.append((q.popleft(), False))
            if q is not None and not q:
                del self._pending[user]
        self._count -= len(out)
        return out

    def pending_for(self, user: str) -> int:
        """Decisions pending for ``user``."""
        q = self._pending.get(user)
        return len(q) if q else 0

    def drop_user(self, user: str) -> bool:
        """Forget a user's pending decisions, deadlines included (erasure); True if any were held."""
        q = self._pending.pop(user, None)
        if q:
            self._count -= len(q)
        before = len(self._deadlines)
        self._deadlines = [d for d in self._deadlines if d[1] != user]
        if len(self._deadlines) != before:
            heapq.heapify(self._deadlines)
        return bool(q) or len(self._deadlines) != before
