"""One shared string object per catalog name (item ids, categories): names repeat across users,
profiles and pending decisions, and every event brings a fresh copy."""

from __future__ import annotations

MAX_SHARED = 200_000
"""Item ids and category names shared between users (``shared``); beyond this many, each keeps its own copy."""
_shared: dict[str, str] = {}


def shared(name: str) -> str:
    """One string object per item id or category name: they repeat across users and pending decisions, and
    every event brings a fresh copy. Bounded (``MAX_SHARED``); only for catalog names, never for user data.

    >>> a, b = "".join(["item-", "7"]), "".join(["item-", "7"])
    >>> a is b, shared(a) is shared(b)
    (False, True)
    """
    s = _shared.get(name)
    if s is not None:
        return s
    if len(_shared) < MAX_SHARED:
        _shared[name] = name
    return name
