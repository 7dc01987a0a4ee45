"""Comparing learnt models exactly, for the shared trainer's tests."""

from __future__ import annotations

from typing import Any


def canon(o: Any, depth: int = 0) -> Any:
    """A model's learnt state as plain values, to compare two models exactly (floats by repr, arrays by bytes,
    random generators by state). Not pickle bytes: those differ with object sharing (an unpickled model
    learning on pickles longer than one that never was; measured: 5,570 vs 5,626 bytes, equal weights)."""
    import random

    import numpy as np

    if depth > 60:
        raise AssertionError("too deep")
    if isinstance(o, float):
        return ("f", repr(o))
    if o is None or isinstance(o, (int, str, bytes, bool)):
        return o
    if isinstance(o, np.ndarray):
        return ("nd", o.dtype.str, o.shape, o.tobytes())
    if isinstance(o, np.generic):
        return ("np", repr(o.item()))
    if isinstance(o, random.Random):
        return ("rng", o.getstate())
    if hasattr(o, "bit_generator"):
        return ("gen", repr(o.bit_generator.state))
    if isinstance(o, dict):
        return ("d", sorted((repr(k), canon(v, depth + 1)) for k, v in o.items()))
    if isinstance(o, (list, tuple)) or type(o).__name__ == "deque":
        return ("l", [canon(v, depth + 1) for v in o])
    if isinstance(o, (set, frozenset)):
        return ("s", sorted(repr(v) for v in o))
    if type(o).__name__ == "VectorDict":  # River's weights (a compiled type)
        return ("vd", canon(o.to_dict(), depth + 1))
    if hasattr(o, "__dict__"):
        return (type(o).__qualname__, canon(vars(o), depth + 1))
    if hasattr(o, "__slots__"):
        return (type(o).__qualname__, [canon(getattr(o, n, None), depth + 1) for n in o.__slots__])
    raise AssertionError(f"cannot compare a {type(o).__qualname__}")
