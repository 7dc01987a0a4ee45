"""Tiled sliding-window sums in event time, with bounded memory.

A window of ``n_tiles`` tiles of ``tile_s`` seconds keeps one vector of sums
per non-empty tile. The window "as of" time ``t`` is the sum of the tiles
``(tile(t) - n_tiles, tile(t)]``: exact to a tile. Tiles that fall out of
the window of the newest time seen are dropped, so memory is at most
``n_tiles`` vectors per window. Late events land in the tile they belong to,
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


class TiledWindow:
    """Sliding sums of ``width`` metrics over ``n_tiles`` tiles of ``tile_s`` seconds."""

    __slots__ = ("_newest", "_tiles", "_total", "n_tiles", "tile_s", "width")

    def __init__(self, tile_s: int, n_tiles: int, width: int) -> None:
        self.tile_s = tile_s
        self.n_tiles = n_tiles
        self.width = width
        self._tiles: dict[int, list[float]] = {}
        self._newest: int | None = None
        self._total = [0.0] * width  # sums over every held tile = the window ending at the newest tile

    def _tile(self, t: float) -> int:
        return int(t // self.tile_s)

    def add(self, t: float, index: int, value: float = 1.0) -> bool:
        """Add ``value`` to metric ``index`` at time ``t``; False if ``t`` is too old to count."""
        tile = self._tile(t)
        if self._newest is not None and tile <= self._newest - self.n_tiles:
            return False
        vec = self._tiles.get(tile)
        if vec is None:
            vec = self._tiles[tile] = [0.0] * self.width
        vec[index] += value
        self._total[index] += value
        if self._newest is None or tile > self._newest:
            self._newest = tile
            self._evict()
        return True

    def _evict(self) -> None:
        assert self._newest is not None
        oldest = self._newest - self.n_tiles
        stale = [k for k in self._tiles if k <= oldest]
        if stale:
            for k in stale:
                del self._tiles[k]
            total = [0.0] * self.width  # recomputed, not subtracted: stays exact for float sums
            for vec in self._tiles.values():
                for i, v in enumerate(vec):
                    total[i] += v
            self._total = total

    def sums(self, asof: float, n_tiles: int | None = None) -> list[float]:
        """Per-metric sums over the last ``n_tiles`` tiles (default: the whole window) ending at ``asof``."""
        end = self._tile(asof)
        n = self.n_tiles if n_tiles is None else min(n_tiles, self.n_tiles)
        if end == self._newest and n == self.n_tiles:
            return list(self._total)  # the common case: as of the newest tile, O(width)
        out = [0.0] * self.width
        if n < len(self._tiles):  # a short sub-window: look its tiles up
            for tile in range(end - n + 1, end + 1):
                vec = self._tiles.get(tile)
                if vec is not None:
                    for i, v in enumerate(vec):
                        out[i] += v
            return out
        start = end - n
        for tile, vec in self._tiles.items():
            if start < tile <= end:
                for i, v in enumerate(vec):
                    out[i] += v
        return out

    def __len__(self) -> int:
        """Number of tiles held (the memory bound is ``n_tiles``)."""
        return len(self._tiles)

    def __getstate__(self) -> dict[str, object]:
        return {"tile_s": self.tile_s, "n_tiles": self.n_tiles, "width": self.width,
                "tiles": self._tiles, "newest": self._newest, "total": self._total}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.tile_s = state["tile_s"]  # type: ignore[assignment]
        self.n_tiles = state["n_tiles"]  # type: ignore[assignment]
        self.width = state["width"]  # type: ignore[assignment]
        self._tiles = state["tiles"]  # type: ignore[assignment]
        self._newest = state["newest"]  # type: ignore[assignment]
        self._total = state["total"]  # type: ignore[assignment]
