"""Personalized ranking: P(this user buys this item within ``horizon_s``), learnt online.

``ItemModel`` is a River ``StandardScaler | LogisticRegression`` over ``ITEM_INPUTS``: the
user's profile, the user's history with the item and its category (``ItemHistory``), the item's
and category's recent popularity and conversion (``Popularity``), the price relative to the
user's usual price and to the item's recent price, and the action (view, click, cart, favorite).

``Ranker`` owns the model, the statistics and the delayed labels (``ItemLabels``). Per event
that carries an item it makes a *decision* at views, clicks, add-to-carts and favorites
(predict now, learn when the item is bought or the watermark passes ``t + horizon_s``) and
updates the statistics; ``score`` ranks candidates as if the user viewed each of them now, for
unknown users too (cold start: an empty profile, so item popularity and price decide).

>>> from server.domain.events import Event, EventType
>>> from server.domain.profile import UserProfile
>>> r = Ranker(horizon_s=3600.0)
>>> prof = UserProfile()
>>> for i, (kind, item) in enumerate([(EventType.VIEW, "a"), (EventType.ADD_TO_CART, "a"), (EventType.VIEW, "b")]):
...     e = Event(f"e{i}", "u1", kind, 60.0 * i, item_id=item, category="shoes", price=20.0)
...     prof.update(e)
...     _ = r.observe(e, prof.features(), prof, 60.0 * i)
>>> len(r.labels), [d.item for d, y in r.observe(Event("e9", "u1", EventType.PURCHASE, 600.0, item_id="a"),
...                                               prof.features(), prof, 600.0)]
(3, ['a', 'a'])
>>> scores = r.score("u1", prof.features(), prof.top_categories(), [("a", "shoes", 20.0), ("z", "", 5.0)], 600.0)
>>> len(scores), all(0.0 < s < 1.0 for s in scores)
(2, True)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Hashable, Sequence
from typing import Any

from river import base, compose, linear_model, optim, preprocessing

from server.domain.events import Event, EventType
from server.domain.profile import HOUR, UserProfile
from server.models.itemlabels import ItemDecision, ItemLabels
from server.models.itemstats import (
    CARTS,
    CLICKS,
    DAY,
    FAVORITES,
    PURCHASES,
    REMOVES,
    SLOT,
    VIEWS,
    ItemHistory,
    Popularity,
    shared,
)
from server.models.quality import RollingQuality

#: Event types at which an item decision is made (and that ``score`` assumes: VIEW).
DECISION_TYPES = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.FAVORITE)
_USER_LOG = (
    "views_1h", "views_24h", "carts_24h", "carts_7d", "favorites_24h", "favorites_7d", "purchases_30d",
    "lifetime_purchases", "sessions_7d", "avg_order_value",
)
ITEM_INPUTS = (
    *(f"log_{n}" for n in _USER_LOG),
    "conversion_rate_30d", "log_hours_since_purchase", "never_purchased", "log_days_since_first_seen",
    "log_item_views", "log_item_clicks", "log_item_carts", "log_item_favorites", "log_item_removes",
    "log_item_purchases", "log_hours_since_item_touch", "first_touch",
    "log_category_touches", "log_category_carts_favorites", "is_top_category", "in_top3_categories",
    "pop_views_vs_average", "pop_carts_vs_average", "pop_purchases_vs_average", "pop_cart_rate", "pop_buy_rate",
    "category_views_vs_average", "category_buy_rate",
    "log_price", "price_vs_user", "price_vs_item",
    *(f"is_{t.name.lower()}" for t in DECISION_TYPES),
)
_KIND = {int(t): i for i, t in enumerate(DECISION_TYPES)}


def _vs(count: float, average: float) -> float:
    """log((count + 1) / (average + 1)): 0 for an average key, stable while overall traffic grows."""
    return math.log((count + 1.0) / (average + 1.0))


def _log_rate(hits: float, trials: float, prior: float, strength: float) -> float:
    """log of the smoothed rate (hits + strength * prior) / (trials + strength)."""
    return math.log((hits + strength * prior) / (trials + strength))


class Clip(base.Transformer):
    """Clip every value into ``[-limit, limit]`` (after scaling: a few standard deviations).

    A feature that barely varied while learning (say, every decision so far was a user's first event)
    would otherwise turn into a huge standardized value at the first unusual input and saturate the model.

    >>> Clip(3.0).transform_one({"a": -7.0, "b": 1.5})
    {'a': -3.0, 'b': 1.5}
    """

    def __init__(self, limit: float = 5.0) -> None:
        self.limit = limit

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        lim = self.limit
        return {k: -lim if v < -lim else lim if v > lim else v for k, v in x.items()}


class ItemModel:
    """``StandardScaler | Clip | LogisticRegression`` over ``ITEM_INPUTS``; ``vector`` builds the input."""

    def __init__(self, learning_rate: float = 0.01, l2: float = 0.0, adaptive: bool = True,
                 negative_sampling: int = 4, clip: float = 5.0, prior_cart_rate: float = 0.01,
                 prior_buy_rate: float = 0.005, prior_strength: float = 20.0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.adaptive = adaptive
        self.negative_sampling = negative_sampling
        self.clip = clip
        self.prior_cart_rate = prior_cart_rate
        self.prior_buy_rate = prior_buy_rate
        self.prior_strength = prior_strength
        opt = optim.AdaGrad(learning_rate) if adaptive else optim.SGD(learning_rate)
        self._model = compose.Pipeline(
            preprocessing.StandardScaler(), Clip(clip), linear_model.LogisticRegression(optimizer=opt, l2=l2),
        )
        self._negatives = 0

    def vector(self, f: dict[str, float], top: Sequence[str], entry: Sequence[Any] | None,
               category_touches: tuple[float, float], item: Sequence[float], item_average: Sequence[float],
               category: Sequence[float], category_average: Sequence[float], cat: str, price: float, kind: int,
               t: float) -> list[float]:
        """The model input (order: ``ITEM_INPUTS``): ``entry`` is the user's history with the item before now,
        ``category_touches`` the user's (events, carts + favorites) on recent items of its category, ``item`` and
        ``category`` their ``Popularity.get``, compared with ``Popularity.average`` (``*_average``)."""
        xs = [math.log1p(max(0.0, f[n])) for n in _USER_LOG]
        last_purchase, first_seen = f["last_purchase_ts"], f["first_seen_ts"]
        xs.append(min(1.0, f["conversion_rate_30d"]))
        xs.append(math.log1p(max(0.0, t - last_purchase) / HOUR) if last_purchase else 0.0)
        xs.append(0.0 if last_purchase else 1.0)
        xs.append(math.log1p(max(0.0, t - first_seen) / DAY) if first_seen else 0.0)
        if entry is None:
            xs.extend((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        else:
            xs.extend(math.log1p(entry[s]) for s in (VIEWS, CLICKS, CARTS, FAVORITES, REMOVES, PURCHASES))
            xs.append(math.log1p(max(0.0, t - entry[6]) / HOUR))
            xs.append(0.0)
        xs.append(math.log1p(category_touches[0]))
        xs.append(math.log1p(category_touches[1]))
        xs.append(1.0 if cat and top and top[0] == cat else 0.0)
        xs.append(1.0 if cat and cat in top else 0.0)
        views, carts, buys, item_price = item
        a, pc, pb = self.prior_strength, self.prior_cart_rate, self.prior_buy_rate
        xs.extend((_vs(views, item_average[0]), _vs(carts, item_average[1]), _vs(buys, item_average[2]),
                   _log_rate(carts, views, pc, a), _log_rate(buys, views, pb, a)))
        xs.extend((_vs(category[0], category_average[0]), _log_rate(category[2], category[0], pb, a)))
        usual = f["avg_viewed_price_30d"]
        xs.append(math.log1p(price))
        xs.append(math.log((price + 1.0) / (usual + 1.0)) if usual > 0 and price > 0 else 0.0)
        xs.append(math.log((price + 1.0) / (item_price + 1.0)) if item_price > 0 and price > 0 else 0.0)
        one_hot = [0.0] * len(DECISION_TYPES)
        one_hot[_KIND[kind]] = 1.0
        xs.extend(one_hot)
        return xs

    def predict(self, x: Sequence[float]) -> float:
        """P(purchase of the item within the horizon) for input ``x``."""
        return float(self._model.predict_proba_one(dict(zip(ITEM_INPUTS, x))).get(True, 0.0))

    def learn(self, x: Sequence[float], y: bool) -> None:
        """Learn one resolved label: every positive, and one in ``negative_sampling`` negatives with that
        weight (negatives are ~99% of the labels; this keeps the expected gradient and saves the time)."""
        w = 1.0
        if not y:
            self._negatives += 1
            if self._negatives % self.negative_sampling:
                return
            w = float(self.negative_sampling)
        self._model.learn_one(dict(zip(ITEM_INPUTS, x)), y, w=w)


class Ranker:
    """The user x item model with its statistics, history and delayed labels (one writer)."""

    def __init__(self, horizon_s: float = 86_400.0, decision_interval_s: float = 3600.0,
                 allowed_lateness_s: float = 60.0, max_pending: int = 500_000, max_items_per_user: int = 20,
                 max_items: int = 200_000, max_categories: int = 10_000, half_life_s: float = 3 * DAY,
                 quality_window: int = 10_000, sample: float = 1.0, model: ItemModel | None = None) -> None:
        self.sample = sample
        self.model = model if model is not None else ItemModel()
        self.labels = ItemLabels(horizon_s, decision_interval_s, allowed_lateness_s, max_pending)
        self.items = Popularity(half_life_s, max_items)
        self.categories = Popularity(half_life_s, max_categories)
        self.history = ItemHistory(max_items_per_user)
        self.quality = RollingQuality(quality_window)

    def _vector(self, user: str, f: dict[str, float], top: Sequence[str], item: str, cat: str, price: float,
                kind: int, t: float) -> list[float]:
        entry = self.history.get(user, item)
        if not cat and entry is not None:
            cat = entry[7]
        touches = self.history.category_touches(user, cat)
        category = self.categories.get(cat, t) if cat else (0.0, 0.0, 0.0, 0.0)
        return self.model.vector(f, top, entry, touches, self.items.get(item, t), self.items.average(t), category,
                                 self.categories.average(t), cat, price, kind, t)

    def observe(self, e: Event, f: dict[str, float], profile: UserProfile,
                t: float) -> list[tuple[ItemDecision, bool]]:
        """Fold one accepted event with an item in: resolve labels (purchase), decide, update statistics.

        Returns the decisions it resolved (the caller learns from them with ``learn``).
        """
        etype = EventType(e.type)
        slot = SLOT.get(etype)
        if slot is None or not e.item_id:  # a search (with or without an item) says nothing about items
            return []
        # one string object per user (the history's) and per item id / category name: held many times over
        user, item, cat = self.history.user_key(e.user_id), shared(e.item_id), shared(e.category)
        resolved: list[tuple[ItemDecision, bool]] = []
        if etype == EventType.PURCHASE:
            resolved = self.labels.on_purchase(user, item, t)
        elif etype in _DECIDE and self.sampled(user, item) and self.labels.wants(user, item, int(etype), t):
            x = self._vector(user, f, profile.top_categories(), item, cat, e.price, int(etype), t)
            self.labels.decide(user, item, int(etype), t, x, self.model.predict(x))
        self.history.add(user, item, cat, t, slot)
        self.items.add(item, t, slot, e.price)
        if cat:
            self.categories.add(cat, t, slot)
        return resolved

    def sampled(self, user: str, item: str) -> bool:
        """Are (user, item) decisions recorded? A deterministic ``sample`` share of pairs (crc32 of the pair,
        the same in every process and replay), so that pending labels stay under the cap at high traffic."""
        return self.sample >= 1.0 or zlib.crc32(f"{user}\x1f{item}".encode()) < self.sample * 4_294_967_296

    def drop_user(self, user: str) -> bool:
        """Forget the user's item history and pending decisions (erasure); True if any were held.
        Item and category statistics are aggregates over all users and stay."""
        held = self.history.drop_user(user)
        return self.labels.drop_user(user) or held

    def advance(self, t: float, limit: int | None = None) -> list[tuple[ItemDecision, bool]]:
        """Move the watermark; return the decisions that became negative (about ``limit`` at most)."""
        return self.labels.advance(t, limit)

    def learn(self, d: ItemDecision, y: bool) -> None:
        """Learn one resolved decision and record it in the rolling quality."""
        self.quality.add(d.p, y)
        self.model.learn(d.x, y)

    def score(self, user: str, f: dict[str, float], top: Sequence[str],
              candidates: Sequence[tuple[str, str, float]], t: float) -> list[float]:
        """P(purchase within the horizon) per (item_id, category, price), as if the user viewed it at ``t``."""
        kind = int(EventType.VIEW)
        return [self.model.predict(self._vector(user, f, top, item, cat, price, kind, t))
                for item, cat, price in candidates]


_DECIDE = frozenset(DECISION_TYPES)
