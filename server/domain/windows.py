"""Tiled sliding-window sums in event time, with bounded memory.

A window of ``n_tiles`` tiles of ``tile_s`` seconds keeps the non-zero sums of each
non-empty tile. The window "as of" time ``t`` is the sum of the tiles
``(tile(t) - n_tiles, tile(t)]``: exact to a tile. Tiles that fall out of
the window of the newest time seen are dropped, so memory is at most
``n_tiles * width`` sums per window. Late events land in the tile they belong to,
as long as that tile is still inside the window.

>>> w = TiledWindow(tile_s=60, n_tiles=60, width=2)  # 1 h of minute tiles
>>> w.add(0.0, 0, 1.0), w.add(30.0, 1, 5.0), w.add(3590.0, 0, 1.0)
(True, True, True)
>>> w.sums(3590.0)
[2.0, 5.0]
>>> w.sums(3600.0)   # the first minute tile has left the window
[1.0, 0.0]
"""

from __future__ import annotations

from array import array
from typing import Any

_NO_TILE = float("-inf")  # "newest tile" before the first add: every tile is newer


class TiledWindow:
    """Sliding sums of ``width`` metrics over ``n_tiles`` tiles of ``tile_s`` seconds.

    All state is one ``array('d')`` (8 bytes a number, no per-tile objects), which matters with
    three windows per user and millions of users::

        [newest tile, total_0 .. total_{width-1}, key, sum, key, sum, ...]

    ``total`` is the sum over every held tile (the window ending at the newest tile); each (key, sum)
    pair is one metric of one tile with ``key = tile * width + metric``, in increasing key order (tile
    ids are far below 2**53 / width, so keys are exact as floats). Only metrics that were added to
    are stored: a typical tile holds one or two of them.
    """

    __slots__ = ("_a", "n_tiles", "tile_s", "width")

    def __init__(self, tile_s: int, n_tiles: int, width: int) -> None:
        self.tile_s = tile_s
        self.n_tiles = n_tiles
        self.width = width
        self._a = array("d", (_NO_TILE, *(0.0,) * width))

    def add(self, t: float, index: int, value: float = 1.0) -> bool:
        """Add ``value`` to metric ``index`` at time ``t``; False if ``t`` is too old to count."""
        tile = int(t // self.tile_s)
        a = self._a
        newest = a[0]
        if tile <= newest - self.n_tiles:
            return False
        w = self.width
        key = tile * w + index
        first = w + 1
        j = len(a) - 2  # the last pair: most adds are to the newest tile, found at once from the end
        while j >= first and a[j] > key:
            j -= 2
        if j >= first and a[j] == key:
            a[j + 1] += value
        else:
            a.insert(j + 2, 0.0 + value)
            a.insert(j + 2, key)
        a[1 + index] += value
        if tile > newest:
            a[0] = tile
            self._evict(tile - self.n_tiles)
        return True

    def _evict(self, oldest: int) -> None:
        """Drop the tiles ``<= oldest``; recompute the totals if any was dropped."""
        a, w = self._a, self.width
        first = w + 1
        bound = (oldest + 1) * w
        j = first
        while j < len(a) and a[j] < bound:
            j += 2
        if j > first:
            del a[first:j]
            total = [0.0] * w  # recomputed, not subtracted: stays exact for float sums
            for k in range(first, len(a), 2):
                total[int(a[k]) % w] += a[k + 1]
            a[1:first] = array("d", total)

    def sums(self, asof: float, n_tiles: int | None = None) -> list[float]:
        """Per-metric sums over the last ``n_tiles`` tiles (default: the whole window) ending at ``asof``."""
        end = int(asof // self.tile_s)
        n = self.n_tiles if n_tiles is None else min(n_tiles, self.n_tiles)
        a, w = self._a, self.width
        if end == a[0] and n == self.n_tiles:
            return a[1:w + 1].tolist()  # the common case: as of the newest tile, O(width)
        out = [0.0] * w
        lo, hi = (end - n + 1) * w, (end + 1) * w
        j = len(a) - 2
        first = w + 1
        while j >= first and a[j] >= lo:  # from the newest tile back to the first one in range
            if a[j] < hi:
                out[int(a[j]) % w] += a[j + 1]
            j -= 2
        return out

    def next_change(self, asof: float, n_tiles: int | None = None) -> float | None:
        """The first time after ``asof`` at which ``sums(t, n_tiles)`` changes by time alone (the oldest non-empty
        tile in range leaves it), None if the range holds nothing.

        >>> w = TiledWindow(tile_s=60, n_tiles=60, width=1)
        >>> _ = w.add(30.0, 0); _ = w.add(130.0, 0)
        >>> w.next_change(130.0), w.next_change(3600.0), w.next_change(3720.0)
        (3600.0, 3720.0, None)
        """
        end = int(asof // self.tile_s)
        n = self.n_tiles if n_tiles is None else min(n_tiles, self.n_tiles)
        a, w = self._a, self.width
        lo = (end - n + 1) * w
        for j in range(w + 1, len(a), 2):  # oldest key first
            if lo <= a[j] and a[j + 1] != 0.0:
                tile = int(a[j]) // w
                return float((tile + n) * self.tile_s) if tile <= end else None
        return None

    def active_tiles(self, asof: float, n_tiles: int | None = None) -> int:
        """How many of the last ``n_tiles`` tiles ending at ``asof`` hold anything (e.g. active days)."""
        return len(self.active_tile_ids(asof, n_tiles))

    def active_tile_ids(self, asof: float, n_tiles: int | None = None) -> list[int]:
        """The ids (time // tile_s) of the last ``n_tiles`` tiles ending at ``asof`` that hold anything, oldest first.

        >>> w = TiledWindow(tile_s=10, n_tiles=5, width=2)
        >>> _ = w.add(1.0, 0); _ = w.add(2.0, 1); _ = w.add(35.0, 1)
        >>> w.active_tile_ids(35.0), w.active_tiles(45.0, 1)
        ([0, 3], 0)
        """
        end = int(asof // self.tile_s)
        n = self.n_tiles if n_tiles is None else min(n_tiles, self.n_tiles)
        a, w = self._a, self.width
        lo, hi = (end - n + 1) * w, (end + 1) * w
        out: list[int] = []
        for j in range(w + 1, len(a), 2):  # keys ascend: a tile's pairs are adjacent
            key = a[j]
            if key >= hi:
                break
            if key >= lo and a[j + 1] != 0.0:
                tile = int(key) // w
                if not out or out[-1] != tile:
                    out.append(tile)
        return out

    def __len__(self) -> int:
        """Number of tiles held (the memory bound is ``n_tiles``)."""
        a, w = self._a, self.width
        return len({int(a[k]) // w for k in range(w + 1, len(a), 2)})

    def __getstate__(self) -> dict[str, Any]:
        return {"tile_s": self.tile_s, "n_tiles": self.n_tiles, "width": self.width, "a": self._a}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tile_s = state["tile_s"]
        self.n_tiles = state["n_tiles"]
        self.width = state["width"]
        self._a = state["a"]
