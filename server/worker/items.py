"""Item decisions of a partition worker: per user, the recent items and the pending item decisions.

Per event that carries an item, ``ItemDecisions.observe`` resolves the user's pending decisions on that
item (a purchase), records a *decision* at views, clicks, add-to-carts and favorites (the model's
prediction now, with its frozen inputs; learnt when the item is bought or the watermark passes
``t + horizon_s``), updates the user's ``ItemHistory`` and returns the statistics delta the trainer folds
into item and category popularity. ``score`` ranks candidates as if the user viewed each of them now,
for unknown users too (cold start: an empty history, so item popularity and price decide).

The item model and the popularity statistics are the trainer's (``server.models.trainer``): read here,
never written.

>>> from server.domain.events import Event, EventType
>>> from server.domain.profile import UserProfile
>>> from server.models.trainer import Trainer, TrainerConfig
>>> trainer, items = Trainer(TrainerConfig()), ItemDecisions(horizon_s=3600.0)
>>> prof = UserProfile()
>>> for i, (kind, item) in enumerate([(EventType.VIEW, "a"), (EventType.ADD_TO_CART, "a"), (EventType.VIEW, "b")]):
...     e = Event(f"e{i}", "u1", kind, 60.0 * i, item_id=item, category="shoes", price=20.0)
...     prof.update(e)
...     resolved, delta = items.observe(e, prof.features(), prof, 60.0 * i, trainer)
...     trainer.feed(delta)
>>> resolved, _ = items.observe(Event("e9", "u1", EventType.PURCHASE, 600.0, item_id="a"), prof.features(), prof,
...                             600.0, trainer)
>>> len(items.labels), [d.item for d, y in resolved]
(1, ['a', 'a'])
>>> scores = items.score("u1", prof.features(), prof.top_categories(), [("a", "shoes", 20.0), ("z", "", 5.0)],
...                      600.0, trainer)
>>> len(scores), all(0.0 < s < 1.0 for s in scores)
(2, True)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from server.domain.events import Event, EventType
from server.domain.names import shared
from server.domain.profile import UserProfile
from server.models.itemlabels import ItemDecision, ItemLabels
from server.models.itemstats import SLOT, ItemHistory
from server.models.ranking import DECISION_TYPES
from server.models.trainer import ItemStats

if TYPE_CHECKING:
    from server.models.trainer import Trainer

_DECIDE = frozenset(DECISION_TYPES)


class ItemDecisions:
    """One worker's per-user item state: recent items (``history``) and pending decisions (``labels``)."""

    def __init__(self, horizon_s: float = 86_400.0, decision_interval_s: float = 3600.0,
                 allowed_lateness_s: float = 60.0, max_pending: int = 500_000, max_items_per_user: int = 20,
                 sample: float = 1.0) -> None:
        self.sample = sample
        self.labels = ItemLabels(horizon_s, decision_interval_s, allowed_lateness_s, max_pending)
        self.history = ItemHistory(max_items_per_user)

    def vector(self, models: Trainer, user: str, f: dict[str, float], top: Sequence[str], item: str, cat: str,
               price: float, kind: int, t: float) -> list[float]:
        """The item model's input: the user's history with ``item`` (here) and the item's and its category's
        popularity (the trainer's published statistics)."""
        entry = self.history.get(user, item)
        if not cat and entry is not None:
            cat = entry[7]
        touches = self.history.category_touches(user, cat)
        categories, items = models.categories, models.items
        category = categories.get(cat, t) if cat else (0.0, 0.0, 0.0, 0.0)
        return models.item_model.vector(f, top, entry, touches, items.get(item, t), items.average(t), category,
                                        categories.average(t), cat, price, kind, t)

    def observe(self, e: Event, f: dict[str, float], profile: UserProfile, t: float,
                models: Trainer) -> tuple[list[tuple[ItemDecision, bool]], ItemStats | None]:
        """Fold one accepted event in: resolve labels (a purchase), decide, update the user's history.

        Returns the decisions it resolved and the statistics delta for the trainer (None for an event
        that says nothing about items, e.g. a search).
        """
        etype = EventType(e.type)
        slot = SLOT.get(etype)
        if slot is None or not e.item_id:
            return [], None
        # one string object per user (the history's) and per item id / category name: held many times over
        user, item, cat = self.history.user_key(e.user_id), shared(e.item_id), shared(e.category)
        resolved: list[tuple[ItemDecision, bool]] = []
        if etype == EventType.PURCHASE:
            resolved = self.labels.on_purchase(user, item, t)
        elif etype in _DECIDE and self.sampled(user, item) and self.labels.wants(user, item, int(etype), t):
            x = self.vector(models, user, f, profile.top_categories(), item, cat, e.price, int(etype), t)
            self.labels.decide(user, item, int(etype), t, x, models.item_model.predict(x))
        self.history.add(user, item, cat, t, slot)
        return resolved, ItemStats(item, cat, t, slot, e.price)

    def sampled(self, user: str, item: str) -> bool:
        """Are (user, item) decisions recorded? A deterministic ``sample`` share of pairs (crc32 of the pair,
        the same in every process and replay), so that pending labels stay under the cap at high traffic."""
        return self.sample >= 1.0 or zlib.crc32(f"{user}\x1f{item}".encode()) < self.sample * 4_294_967_296

    def drop_user(self, user: str) -> bool:
        """Forget the user's item history and pending decisions (erasure); True if any were held.
        Item and category statistics are aggregates over all users (the trainer's) and stay."""
        held = self.history.drop_user(user)
        return self.labels.drop_user(user) or held

    def advance(self, t: float, limit: int | None = None) -> list[tuple[ItemDecision, bool]]:
        """Move the watermark; return the decisions that became negative (about ``limit`` at most)."""
        return self.labels.advance(t, limit)

    def score(self, user: str, f: dict[str, float], top: Sequence[str],
              candidates: Sequence[tuple[str, str, float]], t: float, models: Trainer) -> list[float]:
        """P(purchase within the horizon) per (item_id, category, price), as if the user viewed it at ``t``."""
        kind, predict = int(EventType.VIEW), models.item_model.predict
        return [predict(self.vector(models, user, f, top, item, cat, price, kind, t))
                for item, cat, price in candidates]
