"""Event-time timers: per user, the next time at which time alone changes one of its served values.

A partition worker keeps at most one pending timer per user — the earliest such change (a tile leaving
the 1h / 24h / 7d / 30d window, a tag starting or stopping to hold; ``UserProfile.next_change``) — and
fires the ones the watermark has passed. Timers are derived from the profiles, so a checkpoint and a
log replay recover them exactly (``rebuild``); they are never lost and a replay of the same events fires
the same ones.

>>> t = Timers()
>>> t.set("u1", 120.0); t.set("u2", 60.0); t.set("u1", 90.0)    # u1 moved: one timer per user
>>> len(t), t.due(100.0, limit=10), len(t)
(2, ['u2', 'u1'], 0)
"""

from __future__ import annotations

import heapq


class Timers:
    """At most one pending timer per user, in a heap (entries of moved timers are dropped lazily)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._at)

    def set(self, user: str, t: float | None) -> None:
        """The user's next timer is at ``t`` (None: no timer)."""
        if t is None:
            self._at.pop(user, None)
            return
        if self._at.get(user) == t:
            return
        self._at[user] = t
        heapq.heappush(self._heap, (t, user))
        if len(self._heap) > 2 * len(self._at) + 1024:  # too many moved entries: rebuild
            self._heap = [(at, u) for u, at in self._at.items()]
            heapq.heapify(self._heap)

    def cancel(self, user: str) -> None:
        """Drop the user's timer (erasure)."""
        self._at.pop(user, None)

    def due(self, watermark: float, limit: int) -> list[str]:
        """Remove and return up to ``limit`` users whose timer is at or before ``watermark``, earliest first."""
        out: list[str] = []
        heap, at = self._heap, self._at
        while heap and heap[0][0] <= watermark and len(out) < limit:
            t, user = heapq.heappop(heap)
            if at.get(user) == t:
                del at[user]
                out.append(user)
        return out

    def pending(self) -> dict[str, float]:
        """Every pending timer: user -> time (a copy)."""
        return dict(self._at)
