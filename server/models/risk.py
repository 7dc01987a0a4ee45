"""Risk: how unusual an event is for its user, learnt online (River ``HalfSpaceTrees``).

Two halves, owned apart:

- ``RiskDetector`` (shared, the trainer's): scores an event's inputs (0 = ordinary, 1 = as anomalous as it
  gets; 0 while the first reference window of ``window_size`` events fills) and learns them.
- ``UserRisk`` (per user, a partition worker's): builds an event's inputs from what the user did before
  (``RISK_INPUTS``, each scaled into [0, 1]) and keeps the user's ``risk_score``: the highest event score
  of recent events, halving every ``half_life_s`` of event time (the profile gets the ``suspicious`` tag
  while it is at least ``threshold``).

Inputs: the gap since the user's previous event, the user's event velocity (events in the
last hour), the price against the user's usual viewed price, the units, whether the category
and the device (``context["device"]``) are new for the user, and whether it is a purchase.

Per user ``UserRisk`` keeps the latest risk, its time, the last 8 categories and the last 4 devices, in one
flat tuple ``(risk, risk time, number of categories, *categories, *devices)`` (category names shared
between users; ~150 bytes).

>>> from server.domain.events import Event, EventType
>>> detector, users = RiskDetector(window_size=50, seed=1), UserRisk()
>>> def observe(e, f, previous_t):
...     x = users.vector(e, f, previous_t)
...     score = detector.score(x)
...     detector.learn(x)
...     users.record(e, score)
...     return score
>>> usual = {"avg_viewed_price_30d": 20.0, "views_1h": 3.0}
>>> for i in range(300):
...     e = Event(f"e{i}", f"u{i % 20}", EventType.VIEW, 600.0 * i, item_id="i", category="c", price=20.0,
...               context={"device": "phone"})
...     _ = observe(e, usual, 600.0 * i - 600.0)
>>> normal = observe(Event("n", "u1", EventType.VIEW, 180_000.0, item_id="i", category="c", price=21.0,
...                        context={"device": "phone"}), usual, 179_400.0)
>>> odd = observe(Event("x", "u2", EventType.PURCHASE, 180_001.0, item_id="i", category="new", price=5000.0,
...                     quantity=40, context={"device": "bot"}), {**usual, "views_1h": 400.0}, 180_000.5)
>>> normal < users.threshold <= odd
True
>>> users.user_risk("u2", 180_001.0) == odd, users.user_risk("u2", 180_001.0 + users.half_life_s) == odd / 2
(True, True)
"""

from __future__ import annotations

import math
from typing import Any

from river import anomaly

from server.domain.events import Event, EventType
from server.domain.names import shared
from server.domain.units import DAY

RISK_INPUTS = ("gap", "velocity", "price_vs_usual", "units", "new_category", "new_device", "is_purchase")
_COUNT_1H = tuple(f"{t.plural}_1h" for t in EventType)
_LOG_MONTH = math.log1p(30 * DAY)
_LOG_MAX_VELOCITY = math.log1p(300.0)
_LOG_MAX_UNITS = math.log1p(100.0)
_CATEGORIES, _DEVICES = 8, 4


class RiskDetector:
    """River's ``HalfSpaceTrees`` over ``RISK_INPUTS`` (shared by every user: the trainer learns it)."""

    def __init__(self, n_trees: int = 12, height: int = 6, window_size: int = 500, seed: int = 42) -> None:
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self._model = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed)

    def score(self, x: dict[str, float]) -> float:
        """How anomalous ``x`` is, in [0, 1]."""
        return float(self._model.score_one(x))

    def learn(self, x: dict[str, float]) -> None:
        """Fold ``x`` into the detector's window (its mass profiles hold vectors, never ids)."""
        self._model.learn_one(x)


class UserRisk:
    """Per-user risk inputs and decayed risk (a partition worker's state)."""

    def __init__(self, threshold: float = 0.94, half_life_s: float = 3600.0) -> None:
        self.threshold = threshold
        self.half_life_s = half_life_s
        self._users: dict[str, tuple[Any, ...]] = {}  # (risk, risk_t, n categories, *categories, *devices)

    def __len__(self) -> int:
        return len(self._users)

    def user_state(self, user: str) -> tuple[float, float, tuple[str, ...], tuple[str, ...]] | None:
        """The user's (risk, risk time, recent categories, recent devices), None if unknown."""
        s = self._users.get(user)
        if s is None:
            return None
        n = s[2]
        return s[0], s[1], s[3:3 + n], s[3 + n:]

    def vector(self, e: Event, f: dict[str, float], previous_t: float | None) -> dict[str, float]:
        """The detector's input for event ``e`` of its user (``f``: the user's features after it,
        ``previous_t``: the user's latest event time before it)."""
        held = self.user_state(e.user_id)
        categories, devices = (held[2], held[3]) if held is not None else ((), ())
        return inputs(e, f, previous_t, categories, devices)

    def record(self, e: Event, score: float) -> None:
        """Fold event ``e`` and its detector score into its user's state."""
        t = float(e.event_time)  # type: ignore[arg-type]
        risk, risk_t, categories, devices = self.user_state(e.user_id) or (0.0, t, (), ())
        if e.category and e.category not in categories:
            categories = (*categories[-(_CATEGORIES - 1):], shared(e.category))
        device = e.context.get("device", "")
        if device and device not in devices:
            devices = (*devices[-(_DEVICES - 1):], device)
        decayed = self._decayed(risk, risk_t, t)
        if score >= decayed:
            risk, risk_t = score, t
        self._users[e.user_id] = (risk, risk_t, len(categories), *categories, *devices)

    def _decayed(self, risk: float, risk_t: float, t: float) -> float:
        return risk * math.pow(0.5, (t - risk_t) / self.half_life_s) if t > risk_t else risk

    def drop_user(self, user: str) -> bool:
        """Forget the user's risk, categories and devices (erasure); True if any were held."""
        return self._users.pop(user, None) is not None

    def user_risk(self, user: str, t: float) -> float:
        """The user's risk as of ``t``: the highest recent event score, halving every ``half_life_s``."""
        s = self._users.get(user)
        return self._decayed(s[0], s[1], t) if s else 0.0


def inputs(e: Event, f: dict[str, float], previous_t: float | None,
           categories: tuple[str, ...], devices: tuple[str, ...]) -> dict[str, float]:
    """The detector's input for event ``e`` (``f``: the user's features after it; ``categories`` and
    ``devices``: the user's recent ones before it)."""
    t = float(e.event_time)  # type: ignore[arg-type]
    gap = 1.0 if previous_t is None else min(1.0, math.log1p(max(0.0, t - previous_t)) / _LOG_MONTH)
    events_1h = sum(f.get(n, 0.0) for n in _COUNT_1H)
    usual = f.get("avg_viewed_price_30d", 0.0)
    ratio = abs(math.log((e.price + 1.0) / (usual + 1.0))) / 5.0 if e.price > 0 and usual > 0 else 0.0
    device = e.context.get("device", "")
    return {
        "gap": gap,
        "velocity": min(1.0, math.log1p(events_1h) / _LOG_MAX_VELOCITY),
        "price_vs_usual": min(1.0, ratio),
        "units": min(1.0, math.log1p(e.units) / _LOG_MAX_UNITS),
        "new_category": 1.0 if e.category and categories and e.category not in categories else 0.0,
        "new_device": 1.0 if device and devices and device not in devices else 0.0,
        "is_purchase": 1.0 if e.type == EventType.PURCHASE else 0.0,
    }
