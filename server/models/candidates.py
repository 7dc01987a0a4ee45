"""Candidate generation for recommendations, learnt online with bounded memory.

``CoVisits`` — item-to-item co-visitation (collaborative filtering from sessions): when a user touches
item B, every item it touched earlier in the same session counts as co-visited with B, both ways,
weighted by what the user did to B (a view counts 1, a cart or favorite 2, a purchase 4). Each item
keeps its ``neighbours`` strongest co-visited items; at most ``capacity`` items are held (the least
recently touched dropped first).

``TopItems`` — per category (and over all items, key ``""``) the ``per_key`` most touched items,
weighted the same way, by the Space-Saving algorithm (a new item replaces the weakest one and inherits
its weight, so a heavy hitter is never missed).

Weights decay with a half-life of event time, by *forward decay*: an event at ``t`` adds
``w * 2 ** ((t - base) / half_life)``, so that weights of different times compare directly and nothing
is rescaled per event; the base moves on (every weight rescaled once) when the exponent grows large.

>>> cv = CoVisits(neighbours=2, capacity=10, half_life_s=3600.0)
>>> cv.add("b", "shoes", [("a", "shoes")], 0.0, 1.0)
>>> cv.add("c", "bags", [("a", "shoes"), ("b", "shoes")], 0.0, 4.0)    # c bought after a and b
>>> cv.neighbours("a"), cv.category("c")
([('c', 'bags'), ('b', 'shoes')], 'bags')
>>> top = TopItems(per_key=2, capacity=10, half_life_s=3600.0)
>>> for item, w in [("x", 1.0), ("y", 3.0), ("z", 2.5)]:    # z replaces x (the weakest), inherits its weight
...     top.add("shoes", item, 0.0, w)
>>> top.top("shoes", 5)
['z', 'y']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from server.domain.units import DAY

_REBASE_EXPONENT = 60.0  # rescale once weights grow by 2**60 (far from float overflow, exact in ratio)


class _ForwardDecay:
    """The common clock of forward-decayed weights."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self._base = math.nan

    def _weight(self, t: float, w: float) -> float:
        """``w`` at ``t`` in the current base; moves the base (``_rescale``) when needed."""
        if math.isnan(self._base):
            self._base = t
        x = (t - self._base) / self.half_life_s
        if x > _REBASE_EXPONENT:
            self._rescale(2.0 ** -x)
            self._base, x = t, 0.0
        return w * 2.0 ** x

    def _rescale(self, f: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class CoVisits(_ForwardDecay):
    """Item-to-item co-visitation from sessions; see the module docstring."""

    def __init__(self, neighbours: int = 20, capacity: int = 100_000, half_life_s: float = 7 * DAY) -> None:
        super().__init__(half_life_s)
        self.neighbours_per_item = neighbours
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[str, dict[str, float]]] = OrderedDict()  # item -> (category, nbrs)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: str, category: str, before: Sequence[tuple[str, str]], t: float, w: float) -> None:
        """``item`` (of ``category``) touched at ``t`` with weight ``w`` after the ``before`` (item, category)
        pairs in the same session."""
        if not before:
            self._entry(item, category)
            return
        v = self._weight(t, w)
        for other, other_category in before:
            if other != item:
                self._bump(self._entry(item, category), other, v)
                self._bump(self._entry(other, other_category), item, v)

    def _entry(self, item: str, category: str) -> dict[str, float]:
        held = self._items.get(item)
        if held is None:
            held = self._items[item] = (category, {})
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(item)
            if category and held[0] != category:
                held = self._items[item] = (category, held[1])
        return held[1]

    def _bump(self, nbrs: dict[str, float], other: str, v: float) -> None:
        if other in nbrs:
            nbrs[other] += v
        elif len(nbrs) < self.neighbours_per_item:
            nbrs[other] = v
        else:
            weakest = min(nbrs, key=nbrs.__getitem__)
            if nbrs[weakest] < v:
                del nbrs[weakest]
                nbrs[other] = v

    def neighbours(self, item: str, n: int | None = None) -> list[tuple[str, str]]:
        """The items most co-visited with ``item``, strongest first, as (item, category)."""
        held = self._items.get(item)
        if held is None:
            return []
        nbrs = held[1]
        ranked = sorted(nbrs, key=nbrs.__getitem__, reverse=True)[:n]
        return [(o, self.category(o)) for o in ranked]

    def category(self, item: str) -> str:
        """The item's category as last seen ("" if the item is not held)."""
        held = self._items.get(item)
        return held[0] if held is not None else ""

    def _rescale(self, f: float) -> None:
        for _, nbrs in self._items.values():
            for o in nbrs:
                nbrs[o] *= f


class TopItems(_ForwardDecay):
    """The most touched items per key (a category, or ``""`` for all), Space-Saving; see the module docstring."""

    def __init__(self, per_key: int = 50, capacity: int = 10_000, half_life_s: float = 3 * DAY) -> None:
        super().__init__(half_life_s)
        self.per_key = per_key
        self.capacity = capacity
        self._keys: OrderedDict[str, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, item: str, t: float, w: float) -> None:
        """Count a touch of ``item`` under ``key`` at ``t`` with weight ``w``."""
        v = self._weight(t, w)
        items = self._keys.get(key)
        if items is None:
            items = self._keys[key] = {}
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if item in items:
            items[item] += v
        elif len(items) < self.per_key:
            items[item] = v
        else:
            weakest = min(items, key=items.__getitem__)
            items[item] = items.pop(weakest) + v

    def top(self, key: str, n: int) -> list[str]:
        """The ``n`` strongest items under ``key``, strongest first."""
        items = self._keys.get(key)
        if not items:
            return []
        return sorted(items, key=items.__getitem__, reverse=True)[:n]

    def _rescale(self, f: float) -> None:
        for items in self._keys.values():
            for i in items:
                items[i] *= f
