"""Duplicate detection by event_id over a bounded, insertion-ordered window.

Remembers the ``capacity`` most recent ids (oldest forgotten first), so memory
is bounded; a resend older than that window is not recognised.

>>> d = Dedupe(capacity=2)
>>> d.seen_or_add("a"), d.seen_or_add("a"), d.seen_or_add("b"), d.seen_or_add("c"), d.seen_or_add("a")
(False, True, False, False, False)
"""

from __future__ import annotations


class Dedupe:
    """The last ``capacity`` event ids."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def seen_or_add(self, event_id: str) -> bool:
        """True if ``event_id`` is remembered; otherwise remember it and return False."""
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]
        return False
