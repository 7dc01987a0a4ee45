"""Per-user cell counts that are sparse while few cells are set, dense after.

An ``array`` of ``cells`` counts is either dense (exactly ``cells`` long) or sparse: (cell, count) pairs
sorted by cell, always shorter than ``cells`` (so the length tells which). A user touches few cells of the
profile's grids (~6 of the 168 week hours, ~5 of the 49 event-type transitions on the bench stream), so
sparse saves most of the grid; once the pairs would be no smaller, the array turns dense. Counts are the
same numbers either way, and ``items`` yields the set cells in cell order, so sums come out bit-identical.

>>> s = array("d")
>>> for cell, inc in ((8, 1.0), (1, 0.5), (8, 0.25)):
...     add(s, cell, inc, 49)
>>> list(s), list(items(s, 49)), dense(s, 49)[8]
([1.0, 0.5, 8.0, 1.25], [(1, 0.5), (8, 1.25)], 1.25)
>>> for cell in range(49):
...     add(s, cell, 1.0, 49)
>>> len(s) == 49, s[0], s[1], s[8]
(True, 1.0, 1.5, 2.25)
>>> h = array("H")
>>> for _ in range(3):
...     add(h, 5, 1, 168, cap=2)
>>> list(h)
[5, 2]
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterator
from typing import Any


def add(s: array, cell: int, inc: float, cells: int, cap: float = math.inf) -> None:  # type: ignore[type-arg]
    """Add ``inc`` to ``cell`` of ``s`` (a count saturates at ``cap``), turning ``s`` dense when the pairs
    would no longer be shorter than ``cells``."""
    if len(s) == cells:
        s[cell] = min(s[cell] + inc, cap)
        return
    keys = s[0::2]
    at = bisect.bisect_left(keys, cell)
    if at < len(keys) and keys[at] == cell:
        s[2 * at + 1] = min(s[2 * at + 1] + inc, cap)
    elif len(s) + 2 < cells:
        s[2 * at:2 * at] = array(s.typecode, (cell, min(inc, cap)))
    else:
        full = dense(s, cells)
        full[cell] = min(full[cell] + inc, cap)
        s[:] = full


def dense(s: array, cells: int) -> array:  # type: ignore[type-arg]
    """``s`` as ``cells`` counts (``s`` itself when it is dense)."""
    if len(s) == cells:
        return s
    out = array(s.typecode, bytes(s.itemsize * cells))
    for cell, v in items(s, cells):
        out[cell] = v
    return out


def items(s: array, cells: int) -> Iterator[tuple[int, Any]]:  # type: ignore[type-arg]
    """(cell, count) of every non-zero cell of ``s``, in cell order."""
    if len(s) == cells:
        return ((c, v) for c, v in enumerate(s) if v)
    return ((int(s[i]), s[i + 1]) for i in range(0, len(s), 2) if s[i + 1])
