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
>>> from server.domain.profile import SESSION_GAP_S, UserProfile
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

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.domain.events import Event, EventType
from server.domain.names import shared
from server.domain.profile import SESSION_GAP_S, UserProfile
from server.models.itemlabels import ItemDecision, ItemLabels
from server.models.itemstats import SLOT, ItemHistory
from server.models.next_item import RECENT_LIMIT
from server.models.ranking import DECISION_TYPES
from server.models.trainer import ItemStats

if TYPE_CHECKING:
    from server.models.trainer import Trainer

_DECIDE = frozenset(DECISION_TYPES)
SESSION_ITEMS = 5  # items touched earlier in the session that count as co-visited with the one touched now


@dataclass(frozen=True)
class CandidatePool:
    """Where ``ItemDecisions.recommend`` draws candidates from (at most ~``size`` items, ranked by the item model)."""

    recent: int = 20
    """The user's most recently touched items (all the item history holds by default)."""
    covisited_of: int = 5
    """The user's most recent items whose co-visited neighbours are candidates ..."""
    covisited: int = 10
    """... this many neighbours each."""
    categories: int = 3
    """The user's top categories whose most touched items are candidates ..."""
    per_category: int = 10
    """... this many each."""
    popular: int = 20
    """The most touched items over all (what an unknown user gets)."""

    @property
    def size(self) -> int:
        return (self.recent + self.covisited_of * self.covisited + self.categories * self.per_category
                + self.popular)


class ItemDecisions:
    """One worker's per-user item state: recent items (``history``) and pending decisions (``labels``)."""

    def __init__(self, horizon_s: float = 86_400.0, decision_interval_s: float = 3600.0,
                 allowed_lateness_s: float = 60.0, max_pending: int = 500_000, max_items_per_user: int = 20,
                 sample: float = 1.0, counted_items: int = 128) -> None:
        self.sample = sample
        self.labels = ItemLabels(horizon_s, decision_interval_s, allowed_lateness_s, max_pending)
        self.history = ItemHistory(max_items_per_user, counted_items)

    def vector(self, models: Trainer, user: str, f: dict[str, float], top: Sequence[str], item: str, cat: str,
               price: float, kind: int, t: float) -> list[float]:
        """The item model's input: the user's history with ``item`` (here: the recent items in full, counts for
        many more) and the item's and its category's popularity (the trainer's published statistics)."""
        entry = self.history.get(user, item)
        if not cat and entry is not None:
            cat = entry[7]
        touches = self.history.category_touches(user, cat)
        categories, items, counts = models.categories, models.items, self.history.counts
        category = categories.get(cat, t) if cat else (0.0, 0.0, 0.0, 0.0)
        return models.item_model.vector(f, top, entry, touches, items.get(item, t), items.average(t), category,
                                        categories.average(t), cat, price, kind, t, counts.get(user, item, t),
                                        counts.size(user))

    def observe(self, e: Event, f: dict[str, float], profile: UserProfile, t: float,
                models: Trainer, offset: int = -1) -> tuple[list[tuple[ItemDecision, bool]], ItemStats | None]:
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
        before = tuple(p for p in self.history.recent(user, SESSION_ITEMS + 1, t - SESSION_GAP_S) if p[0] != item)
        self.history.add(user, item, cat, t, slot)
        return resolved, ItemStats(item, cat, t, slot, e.price, before[:SESSION_ITEMS], offset)

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

    def candidates(self, user: str, top: Sequence[str], models: Trainer,
                   pool: CandidatePool = CandidatePool()) -> dict[str, str]:
        """Recommendation candidates for ``user``, generated online: item -> category. The user's recent items,
        the items co-visited with the most recent of them (collaborative filtering from sessions), the most
        touched items of the user's top categories, the most touched items over all (cold start)."""
        out: dict[str, str] = {}
        recent = self.history.recent(user, max(pool.recent, pool.covisited_of))
        for item, cat in recent[:pool.recent]:
            out[item] = cat
        covisits, top_items = models.covisits, models.top_items
        for item, _ in recent[:pool.covisited_of]:
            for other, cat in covisits.neighbours(item, pool.covisited):
                out.setdefault(other, cat)
        for cat in top[:pool.categories]:
            for item in top_items.top(cat, pool.per_category):
                out.setdefault(item, cat)
        for item in top_items.top("", pool.popular):
            out.setdefault(item, covisits.category(item))
        return out

    def candidate_vectors(self, user: str, top: Sequence[str], t: float, models: Trainer,
                          pool: CandidatePool = CandidatePool()) -> list[tuple[str, list[float]]]:
        """The user's candidates (``candidates``) with their ``NextItemRanker`` inputs as of ``t``."""
        cands = self.candidates(user, top, models, pool)
        history = self.history
        rank = {item: i for i, (item, _) in enumerate(history.recent(user, RECENT_LIMIT))}
        covisited = {o for item, _ in history.recent(user, pool.covisited_of)
                     for o, _ in models.covisits.neighbours(item, pool.covisited)}
        items, vector = models.items, models.next_item.vector
        average = items.average(t)
        first = top[0] if top else None
        out = []
        for item, cat in cands.items():
            views, carts, buys, _ = items.get(item, t)
            popularity = (math.log((views + 1.0) / (average[0] + 1.0)), math.log((carts + 1.0) / (average[1] + 1.0)),
                          math.log((buys + 1.0) / (average[2] + 1.0)))
            out.append((item, vector(rank.get(item), history.get(user, item), t, item in covisited,
                                     bool(cat) and cat == first, bool(cat) and cat in top, popularity,
                                     history.category_touches(user, cat))))
        return out

    def recommend(self, user: str, top: Sequence[str], k: int, t: float, models: Trainer,
                  pool: CandidatePool = CandidatePool()) -> list[tuple[str, float]]:
        """The ``k`` best candidates by the recommendation ranker, best first: (item, P(the item bought next));
        ties keep the candidates' order (recent items first)."""
        predict = models.next_item.predict
        scored = [(item, predict(x)) for item, x in self.candidate_vectors(user, top, t, models, pool)]
        order = sorted(range(len(scored)), key=lambda i: -scored[i][1])[:k]
        return [scored[i] for i in order]

    def purchase_examples(self, e: Event, top: Sequence[str], t: float, models: Trainer,
                          negatives: int | None = None) -> list[tuple[list[float], bool]]:
        """What the recommendation ranker learns from a purchase, as of just before it (call before the event is
        applied): the bought item if it was a candidate (positive) and up to ``negatives`` other candidates
        (a sample seeded by the event id: the same in every replay)."""
        user = self.history.user_key(e.user_id)
        vectors = self.candidate_vectors(user, top, t, models)
        n = models.next_item.negatives if negatives is None else negatives
        others = [x for item, x in vectors if item != e.item_id]
        if len(others) > n:
            others = random.Random(zlib.crc32(e.event_id.encode())).sample(others, n)
        return [(x, True) for item, x in vectors if item == e.item_id] + [(x, False) for x in others]
