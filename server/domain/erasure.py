"""Erasure bookkeeping: which users are suppressed and which erasures await compaction.

Users are held by a keyed digest (BLAKE2b-128 of the stored id, keyed with a per-data-directory
secret, ``<data_dir>/erasure.key``: ``server.log.compaction.load_salt``), never by id: after compaction
no stored byte holds an erased user's id or pseudonym, yet a later event of theirs is still recognised
and dropped. Whoever holds the secret can test a candidate id against the list: it is personal data
too, kept to honour the erasure (suppression, as Segment and others do).

>>> er = Erasures(b"k" * 16)
>>> d = er.digest("alice")
>>> er.add(d, offset=7, at=1.0); er.is_suppressed("alice"), er.is_suppressed("bob")
(True, False)
>>> er.pending[d]
(7, 1.0, inf)
>>> er.unsuppress(d, at=2.0), er.is_suppressed("alice"), er.pending[d]
(True, False, (7, 1.0, 2.0))
"""

from __future__ import annotations

import hashlib
import math
import time


class Erasures:
    """Suppressed users and erasures not yet compacted, by keyed digest."""

    def __init__(self, salt: bytes = b"") -> None:
        self._salt = salt
        self.suppressed: set[str] = set()
        #: digest -> (event-log offset of the erasure record, unix time of the erasure, unix time the
        #: suppression was lifted or inf): what the next compaction removes from stored files — log records
        #: before the offset, offline rows written before the lift. Cleared by a compaction.
        self.pending: dict[str, tuple[int, float, float]] = {}

    def subset(self, pending: dict[str, tuple[int, float, float]]) -> Erasures:
        """A copy with the same key holding only ``pending`` (what one compaction works on)."""
        out = Erasures(self._salt)
        out.pending = dict(pending)
        return out

    def digest(self, user_id: str) -> str:
        """The keyed digest a user is held by."""
        return hashlib.blake2b(user_id.encode(), key=self._salt, digest_size=16).hexdigest()

    def is_suppressed(self, user_id: str) -> bool:
        """Are events of ``user_id`` dropped? (Free while nobody is suppressed.)"""
        return bool(self.suppressed) and self.digest(user_id) in self.suppressed

    def add(self, digest: str, offset: int = -1, at: float | None = None) -> None:
        """Suppress the user and note that stored data up to ``offset`` / time ``at`` must be compacted."""
        self.suppressed.add(digest)
        self.pending[digest] = (offset, time.time() if at is None else at, math.inf)

    def unsuppress(self, digest: str, at: float | None = None) -> bool:
        """Accept the user's events again (from ``at``, unix time); True if they were suppressed."""
        if digest not in self.suppressed:
            return False
        self.suppressed.discard(digest)
        if digest in self.pending:
            offset, erased_at, _ = self.pending[digest]
            self.pending[digest] = (offset, erased_at, time.time() if at is None else at)
        return True

    def doomed_record(self, user_id: str, offset: int) -> bool:
        """Must a log record of ``user_id`` at ``offset`` go? (Recorded before the user's erasure.)"""
        p = self.pending.get(self.digest(user_id))
        return p is not None and offset < p[0]

    def doomed_row(self, user_id: str, created: float) -> bool:
        """Must an offline row of ``user_id`` written at ``created`` (unix time) go?
        (Written before the suppression was lifted: rows built before the erasure may be written after it.)"""
        p = self.pending.get(self.digest(user_id))
        return p is not None and created < p[2]
