"""Delayed labels for user x item decisions: "will this user buy this item within the horizon?"

The same rules as ``server.domain.labels`` (which it mirrors for (user, item) pairs): a decision made
at ``t`` is positive when the user buys the item in ``(t, t + horizon_s]``, negative once the
event-time watermark (max event time seen - ``allowed_lateness_s``) passes ``t + horizon_s``.
Inputs are frozen at the decision (stored compactly: as 32-bit floats, the zeros left out behind a bitmap of
the non-zero inputs, packed with the decision into one ``bytes`` per pair; resolved decisions come out as
``ItemDecision`` with ``x`` an ``array('f')``, exactly the 32-bit values given).

Bounds: per (user, item) at most one pending decision of each *class* every ``min_interval_s`` -
browsing (view or click), add-to-cart, favorite - so at most
``3 * ceil((horizon_s + allowed_lateness_s) / min_interval_s)`` per pair, and ``max_pending`` in total
(further decisions are skipped and counted in ``skipped``); one decision takes ~4 bytes per non-zero input
+ 1 bit per input + ~120 bytes, + ~100 bytes per pair (~300 bytes with the item model's 72 inputs, about
half of them zero: 500k pending ~ 150 MB).

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
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

# Decision class per event type: view and click are both browsing; cart and favorite stand alone.
_CLASS = {1: 0, 2: 0, 3: 1, 5: 2}

# A pending decision as bytes: this header (t, p, kind, number of inputs, number of non-zero inputs), a bitmap
# of the non-zero inputs (bit i of byte i // 8, LSB first), then the non-zero inputs as little-endian float32.
# About half of the item model's inputs are zero (one-hot and counts): 192 bytes per decision against 312 with
# every input stored (bench stream, 5,000 users x 2 days, 15,866 pending decisions). A pair's decisions are one
# bytes object, the records concatenated in order of t.
_HEAD = struct.Struct("<ddiHH")
_SWAP = sys.byteorder != "little"


class ItemDecision(NamedTuple):
    """A (user, item) prediction waiting for its label; ``kind`` is the event type it was made at."""

    t: float
    x: Sequence[float]
    p: float
    user: str
    item: str
    kind: int


def _pack(t: float, x: Sequence[float], p: float, kind: int) -> bytes:
    """One record. Zero means all 32 bits zero: ``-0.0`` is stored as a value, so decoding is bit-exact.

    >>> from array import array
    >>> x = [0.0, 1.5, 0.0, -0.0, 2.0 ** -149, 3.0]
    >>> rec = _pack(5.0, x, 0.25, 1)
    >>> len(rec) == _HEAD.size + 1 + 4 * 4
    True
    >>> d = _decision(rec, 0, len(rec), "u", "i")
    >>> d.x.tobytes() == array("f", x).tobytes(), (d.t, d.p, d.kind)
    (True, (5.0, 0.25, 1))
    """
    words = np.asarray(x, dtype="<f4").view("<u4")  # the same bits as unsigned ints: 0 only for +0.0
    nonzero = words != 0
    values = words[nonzero].tobytes()
    mask = np.packbits(nonzero, bitorder="little").tobytes()
    return _HEAD.pack(t, p, kind, len(words), len(values) // 4) + mask + values


def _size(n: int, nonzero: int) -> int:
    return _HEAD.size + (n + 7) // 8 + 4 * nonzero


def _records(buf: bytes) -> Iterator[tuple[float, float, int, int, int]]:
    """(t, p, kind, start, end) of each record in ``buf``."""
    at = 0
    while at < len(buf):
        t, p, kind, n, nonzero = _HEAD.unpack_from(buf, at)
        end = at + _size(n, nonzero)
        yield t, p, kind, at, end
        at = end


def _decision(buf: bytes, at: int, end: int, user: str, item: str) -> ItemDecision:
    t, p, kind, n, nonzero_n = _HEAD.unpack_from(buf, at)
    start = at + _HEAD.size
    stop = start + (n + 7) // 8
    words = np.zeros(n, dtype="<u4")
    nonzero = np.unpackbits(np.frombuffer(buf, np.uint8, stop - start, start), count=n, bitorder="little")
    words[nonzero.view(bool)] = np.frombuffer(buf, "<u4", nonzero_n, stop)
    x = array("f", words.view("<f4").astype("=f4").tobytes())
    return ItemDecision(t, x, p, user, item, kind)


def _repack_v1(buf: bytes) -> bytes:
    """A pair's records in the format before the bitmap (header ``<ddiI``, every input as float32), as today's."""
    head, out, at = struct.Struct("<ddiI"), [], 0
    while at < len(buf):
        t, p, kind, n = head.unpack_from(buf, at)
        x = array("f", buf[at + head.size:at + head.size + 4 * n])
        if _SWAP:
            x.byteswap()
        out.append(_pack(t, x, p, kind))
        at += head.size + 4 * n
    return b"".join(out)


class ItemLabels:
    """Pending (user, item) decisions, resolved by purchases of the item and by the watermark."""

    def __init__(self, horizon_s: float = 86_400.0, min_interval_s: float = 3600.0,
                 allowed_lateness_s: float = 60.0, max_pending: int = 500_000) -> None:
        self.horizon_s = horizon_s
        self.min_interval_s = min_interval_s
        self.allowed_lateness_s = allowed_lateness_s
        self.max_pending = max_pending
        self.skipped = 0
        self._pending: dict[str, dict[str, bytes]] = {}  # user -> item -> packed records, sorted by t
        self._deadlines: list[tuple[float, str, str]] = []
        self._count = 0
        self._max_time = float("-inf")
        self._format = 2  # the records' layout (checkpoints)

    def __len__(self) -> int:
        return self._count

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a checkpoint from before the bitmap format (no "_format") holds every input: repacked on load
        if state.get("_format") != 2:
            state["_pending"] = {u: {i: _repack_v1(b) for i, b in items.items()}
                                 for u, items in state["_pending"].items()}
            state["_format"] = 2
        self.__dict__.update(state)

    def decisions(self) -> Iterator[ItemDecision]:
        """Every pending decision (in no particular order across pairs; by time within one)."""
        for user, items in self._pending.items():
            for item, buf in items.items():
                for _, _, _, at, end in _records(buf):
                    yield _decision(buf, at, end, user, item)

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
        items = self._pending.get(user)
        buf = items.get(item) if items else None
        if not buf:
            return True
        c = _CLASS.get(kind, kind)
        return all(_CLASS.get(k, k) != c or abs(t - dt) >= self.min_interval_s for dt, _, k, _, _ in _records(buf))

    def decide(self, user: str, item: str, kind: int, t: float, x: Sequence[float], p: float) -> bool:
        """Record a decision unless one of the same class is pending within ``min_interval_s`` or the queue is full."""
        if not self.wants(user, item, kind, t):
            return False
        if self._count >= self.max_pending:
            self.skipped += 1
            return False
        record = _pack(t, x, p, kind)
        items = self._pending.get(user)
        if items is None:
            items = self._pending[user] = {}
        buf = items.get(item)
        if not buf:
            items[item] = record
        else:
            records = [(dt, buf[at:end]) for dt, _, _, at, end in _records(buf)]
            if t < records[-1][0]:  # a late decision: insert it after those not later (a stable sort by t)
                records.append((t, record))
                records.sort(key=lambda r: r[0])
                items[item] = b"".join(r for _, r in records)
            else:
                items[item] = buf + record
        heapq.heappush(self._deadlines, (t + self.horizon_s, user, item))
        self._count += 1
        return True

    def _take(self, user: str, item: str, items: dict[str, bytes], n: int, end: int) -> list[ItemDecision]:
        """Remove the first ``n`` records of the pair (they end at ``end``) and return them as decisions."""
        buf = items[item]
        out = []
        for _, _, _, at, stop in _records(buf):
            if at >= end:
                break
            out.append(_decision(buf, at, stop, user, item))
        if end < len(buf):
            items[item] = buf[end:]
        else:
            del items[item]
            if not items:
                del self._pending[user]
        self._count -= n
        return out

    def on_purchase(self, user: str, item: str, t: float) -> list[tuple[ItemDecision, bool]]:
        """A purchase of ``item`` at ``t`` labels the earlier pending decisions on it (positive within the horizon)."""
        items = self._pending.get(user)
        buf = items.get(item) if items else None
        if not items or not buf:
            return []
        n = end = 0
        for dt, _, _, _, stop in _records(buf):
            if not dt < t:
                break
            n, end = n + 1, stop
        if not n:
            return []
        return [(d, t <= d.t + self.horizon_s) for d in self._take(user, item, items, n, end)]

    def drop_user(self, user: str) -> bool:
        """Forget every pending decision of ``user``, deadlines included (erasure); True if any were held."""
        items = self._pending.pop(user, None)
        for buf in (items or {}).values():
            self._count -= sum(1 for _ in _records(buf))
        before = len(self._deadlines)
        self._deadlines = [d for d in self._deadlines if d[1] != user]
        if len(self._deadlines) != before:
            heapq.heapify(self._deadlines)
        return bool(items) or len(self._deadlines) != before

    def advance(self, event_time: float, limit: int | None = None) -> list[tuple[ItemDecision, bool]]:
        """Move the watermark with a new event time; return the decisions that became negative (about
        ``limit`` at most; the rest on later calls, as ``DelayedLabels.advance``)."""
        if event_time > self._max_time:
            self._max_time = event_time
        wm = self.watermark
        out: list[tuple[ItemDecision, bool]] = []
        while self._deadlines and self._deadlines[0][0] <= wm and (limit is None or len(out) < limit):
            _, user, item = heapq.heappop(self._deadlines)
            items = self._pending.get(user)
            buf = items.get(item) if items else None
            if not items or not buf:
                continue
            n = end = 0
            for dt, _, _, _, stop in _records(buf):
                if not dt + self.horizon_s <= wm:
                    break
                n, end = n + 1, stop
            if n:
                out.extend((d, False) for d in self._take(user, item, items, n, end))
        return out
