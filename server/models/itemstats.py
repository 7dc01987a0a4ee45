"""Online item knowledge with bounded memory: popularity and conversion per item and per
category (``Popularity``), and each user's history with items (``ItemHistory``: the recent items in
full, and counts for many more items, hashed, in ``ItemCounts``).

Both are updated per event in event time and read by the ranking model (``server.models.ranking``).

>>> pop = Popularity(half_life_s=3600.0, capacity=2)
>>> pop.add("i1", 0.0, VIEWS, price=10.0)
>>> pop.add("i1", 3600.0, VIEWS, price=20.0)    # the first view has decayed to one half
>>> views, carts, purchases, price = pop.get("i1", 3600.0)
>>> views, purchases, round(price, 2)
(1.5, 0.0, 16.67)
>>> pop.add("i2", 3600.0, VIEWS); pop.add("i3", 3600.0, VIEWS)    # capacity 2: i1, the least recent, goes
>>> pop.get("i1", 3600.0), len(pop), pop.average(3600.0)    # i1's views stay in the total
((0.0, 0.0, 0.0, 0.0), 2, (1.75, 0.0, 0.0))
>>> h = ItemHistory(max_items=2)
>>> h.add("u1", "i1", "shoes", 10.0, VIEWS); h.add("u1", "i1", "shoes", 20.0, CARTS)
>>> h.get("u1", "i1")
[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 20.0, 'shoes']
>>> h.category_touches("u1", "shoes"), h.category_touches("u1", "bags")
((2.0, 1.0), (0.0, 0.0))
>>> h.counts.get("u1", "i1", 20.0)[:4], h.counts.size("u1")    # kept for 128 items per user (``ItemCounts``)
((1.0, 1.0, 0.0, 0.0), 1)
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections import OrderedDict
from typing import Any, NamedTuple

from server.domain.events import EventType
from server.domain.units import DAY, HOUR

# Counter slots of Popularity (and the first ones of an ItemHistory entry).
VIEWS, CLICKS, CARTS, FAVORITES, REMOVES, PURCHASES = range(6)
SLOT = {
    EventType.VIEW: VIEWS, EventType.CLICK: CLICKS, EventType.ADD_TO_CART: CARTS,
    EventType.FAVORITE: FAVORITES, EventType.REMOVE_FROM_CART: REMOVES, EventType.PURCHASE: PURCHASES,
}
_LAST_T = 6  # ItemHistory entry: 6 counters, last touch time, then the category
_EMPTY = (0.0, 0.0, 0.0, 0.0)

class Popularity:
    """Decayed counts of views, carts and purchases, and the decayed mean viewed price, per key.

    Keys are item ids (or categories). Counts halve every ``half_life_s`` of event time, so they
    describe *recent* popularity and conversion; ``average`` is the same over all keys, per key held
    (so that features can compare a key with the average: stable while traffic grows, e.g. after a
    cold start). At most ``capacity`` keys are held: adding a new one beyond it drops the least
    recently updated (~300 bytes per key: 1M keys ~ 300 MB).
    """

    def __init__(self, half_life_s: float = 3 * DAY, capacity: int = 200_000) -> None:
        self.half_life_s = half_life_s
        self.capacity = capacity
        self._stats: OrderedDict[str, list[float]] = OrderedDict()  # key -> [t, views, carts, buys, psum, pn]
        self._total = [float("-inf"), 0.0, 0.0, 0.0, 0.0, 0.0]

    def __len__(self) -> int:
        return len(self._stats)

    def add(self, key: str, t: float, slot: int, price: float = 0.0) -> None:
        """Count one event of ``slot`` (VIEWS, CARTS or PURCHASES; others are ignored) at ``t``."""
        s = self._stats.get(key)
        if s is None:
            s = self._stats[key] = [t, 0.0, 0.0, 0.0, 0.0, 0.0]
            if len(self._stats) > self.capacity:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(key)
        self._bump(s, t, slot, price)
        self._bump(self._total, t, slot, price)

    def _bump(self, s: list[float], t: float, slot: int, price: float) -> None:
        if t > s[0]:
            f = math.pow(0.5, (t - s[0]) / self.half_life_s) if s[0] > float("-inf") else 0.0
            for i in range(1, 6):
                s[i] *= f
            s[0] = t
            w = 1.0
        else:  # a late event counts with the weight it has now
            w = math.pow(0.5, (s[0] - t) / self.half_life_s)
        if slot == VIEWS:
            s[1] += w
            if price > 0:
                s[4] += w * price
                s[5] += w
        elif slot == CARTS:
            s[2] += w
        elif slot == PURCHASES:
            s[3] += w

    def get(self, key: str, t: float) -> tuple[float, float, float, float]:
        """(views, carts, purchases, mean viewed price) as of ``t`` (zeros for an unknown key)."""
        s = self._stats.get(key)
        if s is None:
            return _EMPTY
        f = math.pow(0.5, (t - s[0]) / self.half_life_s) if t > s[0] else 1.0
        return s[1] * f, s[2] * f, s[3] * f, s[4] / s[5] if s[5] else 0.0

    def average(self, t: float) -> tuple[float, float, float]:
        """(views, carts, purchases) of all keys together as of ``t``, divided by the keys held."""
        s, n = self._total, max(1, len(self._stats))
        f = math.pow(0.5, (t - s[0]) / self.half_life_s) / n if t > s[0] else 1.0 / n
        return s[1] * f, s[2] * f, s[3] * f


_COUNT_SLOT = {VIEWS: 0, CLICKS: 0, CARTS: 1, FAVORITES: 2, PURCHASES: 3}
# One item in ``ItemCounts``: key, last touch, views, carts, favorites, purchases, decayed views short / long.
_RECORD = struct.Struct("<Id6f")
_KEY = struct.Struct("<I")
_F32 = struct.Struct("<f")


def item_key(item: str) -> int:
    """The 32-bit key ``ItemCounts`` holds for an item id (CRC-32: the same in every process and replay)."""
    return zlib.crc32(item.encode())


def _f32(v: float) -> float:
    return _F32.unpack(_F32.pack(v))[0]


def _find(buf: bytes, key: int) -> int:
    """Where the record of ``key`` starts in ``buf`` (-1: none); a key's bytes found inside another field of a
    record are skipped."""
    pattern, size = _KEY.pack(key), _RECORD.size
    at = buf.find(pattern)
    while at >= 0 and at % size:
        at = buf.find(pattern, at + 1)
    return at


class ItemCounts:
    """Per user, what the user did to each of its ``max_items`` most recently touched distinct items: many more
    items than ``ItemHistory`` keeps in full, at a tenth of the bytes.

    An item is held as a 32-bit hash of its id (``item_key``; two of one user's 128 items collide with
    probability ~128² / 2³³ ≈ 2e-6), with its views (and clicks), carts, favorites and purchases, the views
    decayed with a ``short_half_life_s`` and a ``long_half_life_s`` half-life of event time (recent interest,
    as of the last touch), and the last touch time: one 36-byte record (4 + 8 + 6 × 4), the user's records in
    one ``bytes``, least recently touched first (rebuilt at each event: no spare capacity). So ≤ 4.6 KB per user
    at ``max_items`` = 128, plus ~60 bytes for the object and its slot in the dict. A new item beyond the cap
    drops the least recently touched one.

    >>> c = ItemCounts(max_items=2, short_half_life_s=3600.0, long_half_life_s=86400.0)
    >>> c.add("u", "a", 0.0, VIEWS); c.add("u", "a", 3600.0, VIEWS); c.add("u", "a", 3600.0, CARTS)
    >>> [round(v, 3) for v in c.get("u", "a", 7200.0)]    # 2 views, 1 cart; decayed views: (1/2 + 1) / 2 at 1 h
    [2.0, 1.0, 0.0, 0.0, 0.75, 1.915, 3600.0]
    >>> c.add("u", "b", 7200.0, VIEWS); c.add("u", "c", 7300.0, FAVORITES)    # a is the least recent: dropped
    >>> c.get("u", "a", 7300.0), c.size("u"), c.get("nobody", "a", 0.0)
    (None, 2, None)
    """

    def __init__(self, max_items: int = 128, short_half_life_s: float = HOUR, long_half_life_s: float = DAY) -> None:
        self.max_items = max_items
        self.short_half_life_s = short_half_life_s
        self.long_half_life_s = long_half_life_s
        self._users: dict[str, bytes] = {}  # user -> its records (``_RECORD``), least recently touched first

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Counts checkpointed as three arrays per user (keys, last touch, 6 numbers per item) become records."""
        self.__dict__.update(state)
        for user, held in self._users.items():
            if isinstance(held, tuple):
                keys, times, numbers = held
                self._users[user] = b"".join(
                    _RECORD.pack(k, times[i], *numbers[6 * i:6 * i + 6]) for i, k in enumerate(keys))

    def __len__(self) -> int:
        return len(self._users)

    def size(self, user: str) -> int:
        """How many distinct items of the user are held (at most ``max_items``)."""
        return len(self._users.get(user, b"")) // _RECORD.size

    def add(self, user: str, item: str, t: float, slot: int) -> None:
        """Record one event of ``slot`` (``VIEWS``, ``CARTS``, ...) by ``user`` on ``item`` at ``t``."""
        buf = self._users.get(user, b"")
        key, size = item_key(item), _RECORD.size
        at = _find(buf, key)
        if at < 0:
            if len(buf) >= self.max_items * size:
                buf = buf[size:]
            rec = [key, t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        else:  # moved last: record order = recency of touch
            rec = list(_RECORD.unpack_from(buf, at))
            buf = buf[:at] + buf[at + size:]
            last = rec[1]
            if t > last:  # the decayed views age to t
                rec[6] = _f32(rec[6] * 0.5 ** ((t - last) / self.short_half_life_s))
                rec[7] = _f32(rec[7] * 0.5 ** ((t - last) / self.long_half_life_s))
                rec[1] = t
        c = _COUNT_SLOT.get(slot)
        if c is not None:
            rec[2 + c] += 1.0
            if c == 0:
                age = max(0.0, rec[1] - t)  # a late view counts with the weight it has at the last touch
                rec[6] += 0.5 ** (age / self.short_half_life_s)
                rec[7] += 0.5 ** (age / self.long_half_life_s)
        self._users[user] = buf + _RECORD.pack(*rec)

    def get(self, user: str, item: str, t: float) -> tuple[float, float, float, float, float, float, float] | None:
        """(views, carts, favorites, purchases, views decayed short, long — as of ``t`` —, last touch time) of the
        user's item; None if it is not held."""
        buf = self._users.get(user)
        if buf is None:
            return None
        at = _find(buf, item_key(item))
        if at < 0:
            return None
        _, last, views, carts, favorites, buys, short, long = _RECORD.unpack_from(buf, at)
        age = max(0.0, t - last)
        return (views, carts, favorites, buys, short * 0.5 ** (age / self.short_half_life_s),
                long * 0.5 ** (age / self.long_half_life_s), last)

    def drop_user(self, user: str) -> bool:
        """Forget a user's counts; True if there were any."""
        return self._users.pop(user, None) is not None


class _Recent(NamedTuple):
    """One user's recent items as checkpoints before 2026-12-07 held them (``ItemHistory.__setstate__`` converts):
    ids, categories and, per item, 7 numbers (6 counters and the last touch time) in one array."""

    user: str
    items: list[str]
    categories: list[str]
    numbers: array


_WIDTH = 7  # numbers per item in ``_Recent.numbers``: 6 counters, last touch time
_ENTRY = struct.Struct("<6fd")  # an ItemHistory record: 6 counters (float32: whole counts, exact to 2**24), last touch
_TOUCH = struct.Struct("<d")  # ... its last touch time, at byte 24 of the record
_TOUCH_AT = 24


class ItemHistory:
    """Per user, the ``max_items`` most recently touched items with what the user did to each.

    An entry (``get``) is ``[views, clicks, carts, favorites, removes, purchases, last touch time, category]``.
    Stored compactly: per user one list ``[user, records, item ids..., categories...]`` (ids and categories are
    shared strings), ``records`` one ``bytes`` of a 32-byte record per item (``_ENTRY``), least recently touched
    first: ~48 bytes per item plus ~130 per user.

    ``counts`` (``ItemCounts``) keeps the counts of many more of the user's items (``counted_items``): what the
    item model needs to know about an item touched long ago, beyond the recent ones.
    """

    def __init__(self, max_items: int = 20, counted_items: int = 128) -> None:
        self.max_items = max_items
        self._users: dict[str, list[Any]] = {}
        self.counts = ItemCounts(counted_items)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Older checkpoints: recent items held as ``_Recent`` are packed; before ``counts`` existed, the counts
        start from the recent items' counters."""
        self.__dict__.update(state)
        for user, held in self._users.items():
            if isinstance(held, tuple):
                u, items, categories, numbers = held
                records = b"".join(_ENTRY.pack(*numbers[i * _WIDTH:(i + 1) * _WIDTH]) for i in range(len(items)))
                self._users[user] = [u, records, *items, *categories]
        if "counts" not in state:
            self.counts = ItemCounts()
            for held in self._users.values():
                n = (len(held) - 2) >> 1
                for i in range(n):
                    entry = _ENTRY.unpack_from(held[1], i * _ENTRY.size)
                    for slot in (VIEWS, CLICKS, CARTS, FAVORITES, PURCHASES):
                        for _ in range(int(entry[slot])):
                            self.counts.add(held[0], held[2 + i], entry[_LAST_T], slot)

    def __len__(self) -> int:
        return len(self._users)

    def user_key(self, user: str) -> str:
        """The string object the user's history is held under (``user`` if none): shared by callers that
        keep the id too, so that a user costs one copy of it."""
        held = self._users.get(user)
        return held[0] if held is not None else user  # type: ignore[no-any-return]

    def get(self, user: str, item: str) -> list[Any] | None:
        """The user's entry for ``item`` (None if not among the recent items); a copy."""
        held = self._users.get(user)
        if held is None:
            return None
        n = (len(held) - 2) >> 1
        try:
            i = held.index(item, 2, 2 + n) - 2
        except ValueError:
            return None
        return [*_ENTRY.unpack_from(held[1], i * _ENTRY.size), held[2 + n + i]]

    def add(self, user: str, item: str, category: str, t: float, slot: int) -> None:
        """Record one event of ``slot`` by ``user`` on ``item`` at ``t``."""
        held = self._users.get(user)
        if held is None:
            held = self._users[user] = [user, b""]
        n, size, records = (len(held) - 2) >> 1, _ENTRY.size, held[1]
        try:
            i = held.index(item, 2, 2 + n) - 2
        except ValueError:
            i = -1
        if i >= 0:  # moved last: record order = recency of touch
            entry = list(_ENTRY.unpack_from(records, i * size))
            records = records[:i * size] + records[(i + 1) * size:]
            del held[2 + i]
            held.insert(1 + n, item)
            held.append(held.pop(2 + n + i))
        else:
            if n >= self.max_items:  # the least recently touched item goes
                records = records[size:]
                del held[2]
                del held[1 + n]  # its category (the items moved up by one)
                n -= 1
            held.insert(2 + n, item)
            held.append(category)
            entry = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, t]
        entry[slot] += 1.0
        if t > entry[_LAST_T]:
            entry[_LAST_T] = t
        if category:
            held[-1] = category
        held[1] = records + _ENTRY.pack(*entry)
        self.counts.add(held[0], item, t, slot)

    def recent(self, user: str, n: int, since: float = -math.inf) -> list[tuple[str, str]]:
        """The user's ``n`` most recently touched items (last touch at or after ``since``), most recent first,
        as (item, category).

        >>> h = ItemHistory()
        >>> for i, t in (("a", 0.0), ("b", 10.0), ("a", 20.0), ("c", 30.0)):
        ...     h.add("u", i, "k", t, VIEWS)
        >>> h.recent("u", 2), h.recent("u", 5, since=15.0), h.recent("nobody", 3)
        ([('c', 'k'), ('a', 'k')], [('c', 'k'), ('a', 'k')], [])
        """
        held = self._users.get(user)
        if held is None:
            return []
        out: list[tuple[str, str]] = []
        count, records = (len(held) - 2) >> 1, held[1]
        for i in range(count - 1, -1, -1):
            if len(out) >= n or _TOUCH.unpack_from(records, i * _ENTRY.size + _TOUCH_AT)[0] < since:
                break
            out.append((held[2 + i], held[2 + count + i]))
        return out

    def category_touches(self, user: str, category: str) -> tuple[float, float]:
        """(events, carts + favorites) of the user on recent items of ``category``."""
        touches = strong = 0.0
        held = self._users.get(user)
        if category and held is not None:
            count, records = (len(held) - 2) >> 1, held[1]
            for i in range(count):
                if held[2 + count + i] == category:
                    views, clicks, carts, favorites, removes, buys, _ = _ENTRY.unpack_from(records, i * _ENTRY.size)
                    touches += views + clicks + carts + favorites + removes + buys
                    strong += carts + favorites
        return touches, strong

    def drop_user(self, user: str) -> bool:
        """Forget a user's history, counts included; True if there was one."""
        counted = self.counts.drop_user(user)
        return self._users.pop(user, None) is not None or counted
