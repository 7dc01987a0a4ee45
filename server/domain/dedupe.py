"""Duplicate detection by event_id over a bounded, insertion-ordered window.

Remembers the ``capacity`` most recent ids (oldest forgotten first), so memory
is bounded; a resend older than that window is not recognised. Each id remembers
its *owner* (the user's profile object: no extra memory per id), so an erasure can
forget a user's ids.

>>> d = Dedupe(capacity=2)
>>> d.seen_or_add("a"), d.seen_or_add("a"), d.seen_or_add("b"), d.seen_or_add("c"), d.seen_or_add("a")
(False, True, False, False, False)
>>> owner = object()
>>> d.add("x", owner); d.forget(owner), "x" in d
(1, False)
"""

from __future__ import annotations

from collections.abc import Iterable


class Dedupe:
    """The last ``capacity`` event ids, each with its owner."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._ids: dict[str, object] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str, owner: object = None) -> None:
        """Remember ``event_id`` (owned by ``owner``), forgetting the oldest id beyond the capacity."""
        self._ids[event_id] = owner
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]

    def seen_or_add(self, event_id: str, owner: object = None) -> bool:
        """True if ``event_id`` is remembered; otherwise remember it and return False."""
        if event_id in self._ids:
            return True
        self.add(event_id, owner)
        return False

    def owners(self) -> Iterable[tuple[str, object]]:
        """(event id, owner) of every remembered id, oldest first."""
        return self._ids.items()

    def forget(self, owner: object) -> int:
        """Forget every id of ``owner`` (compared by identity; O(ids), for erasures); returns how many."""
        gone = [k for k, v in self._ids.items() if v is owner]
        for k in gone:
            del self._ids[k]
        return len(gone)
