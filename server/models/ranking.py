"""The item model: P(this user buys this item within the horizon), learnt online.

``ItemModel`` is a River ``StandardScaler | Clip | LogisticRegression`` (plain SGD, step 0.001) over
``ITEM_INPUTS``: the user's profile, the user's history with the item and its category (``ItemHistory``, a
partition worker's: the recent items in full and counts of many more, ``ItemCounts``), the item's and
category's recent popularity and conversion (``Popularity``, the trainer's; rates smoothed towards the rate
of all traffic), the price relative to the user's usual price and to the item's recent price, the action
(view, click, cart, favorite), and the user's buy rate crossed with the item-side signals. The trainer owns
and learns it; partition workers decide and score with the version it publishes (``server.worker.items``).

>>> from server.domain.profile import UserProfile
>>> m = ItemModel()
>>> none = (0.0, 0.0, 0.0, 0.0)
>>> x = m.vector(UserProfile().features(), [], None, (0.0, 0.0), none, none[:3], none, none[:3], "shoes", 20.0,
...              int(EventType.VIEW), 600.0)
>>> len(x) == len(ITEM_INPUTS), 0.0 < m.predict(x) < 1.0
(True, True)
>>> m.learn(x, True)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from river import base, compose, linear_model, optim, preprocessing

from server.domain.events import EventType
from server.domain.profile import SEQUENCE_FEATURES
from server.domain.units import DAY, HOUR
from server.models.itemstats import CARTS, CLICKS, FAVORITES, PURCHASES, REMOVES, VIEWS

#: Event types at which an item decision is made (and that ``score`` assumes: VIEW).
DECISION_TYPES = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.FAVORITE)
_USER_LOG = (
    "views_1h", "views_24h", "carts_24h", "carts_7d", "favorites_24h", "favorites_7d", "purchases_30d",
    "lifetime_purchases", "sessions_7d", "avg_order_value",
)
_COUNT_INPUTS = (
    "log_all_item_views", "log_all_item_carts", "log_all_item_favorites", "log_all_item_purchases",
    "log_hours_since_any_touch", "never_touched",
    "touched_within_1h", "touched_1h_to_6h", "touched_6h_to_24h", "touched_1d_to_3d", "touched_over_3d",
    "carted_or_favorited", "viewing_carted_or_favorited", "carted_or_favorited_within_24h",
    "log_item_views_decayed_1h", "log_item_views_decayed_1d", "log_distinct_items", "log_user_buy_rate",
)
_CROSSED = (
    "carted_or_favorited", "log_all_item_views", "log_item_views_decayed_1h", "log_item_views_decayed_1d",
    "log_hours_since_any_touch", "category_buy_rate", "pop_buy_rate",
)
_NEVER_HOURS = math.log1p(30 * 24)  # "hours since the user touched it" for an item it never touched
_TOUCH_BUCKETS = (1.0, 6.0, 24.0, 72.0)  # hours: the edges of the touched_* indicators
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
    # the user's behaviour sequence (P(next type | this type)): +0.0056 [+0.0008, +0.0108] paired item AUC over
    # users on taobao-dev (docs/learning.md); not in the propensity model, where it did not lift (+0.0014, CI
    # across zero)
    *SEQUENCE_FEATURES,
    # the user x this item beyond the recent items (``ItemCounts``: 128 items per user) and the user's breadth:
    # docs/learning.md, "Score beyond 0.78" (taobao-dev)
    *_COUNT_INPUTS,
    # how much the evidence about the item weighs depends on how often this user buys at all: crosses a linear
    # model cannot form itself (the user's buy rate x each item-side signal)
    *(f"user_buy_rate_x_{n}" for n in _CROSSED),
)
_CROSS_AT = tuple(ITEM_INPUTS.index(n) for n in _CROSSED)
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

    def __init__(self, learning_rate: float = 0.001, l2: float = 0.0, adaptive: bool = False,
                 negative_sampling: int = 4, clip: float = 5.0, prior_cart_rate: float = 0.01,
                 prior_buy_rate: float = 0.005, prior_strength: float = 20.0, traffic_prior: bool = True) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.adaptive = adaptive
        self.negative_sampling = negative_sampling
        self.clip = clip
        self.prior_cart_rate = prior_cart_rate
        self.prior_buy_rate = prior_buy_rate
        self.prior_strength = prior_strength
        self.traffic_prior = traffic_prior
        opt = optim.AdaGrad(learning_rate) if adaptive else optim.SGD(learning_rate)
        self._model = compose.Pipeline(
            preprocessing.StandardScaler(), Clip(clip), linear_model.LogisticRegression(optimizer=opt, l2=l2),
        )
        self._negatives = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A model checkpointed before ``traffic_prior`` keeps the fixed priors it learnt with."""
        self.__dict__.update(state)
        self.__dict__.setdefault("traffic_prior", False)

    def _priors(self, average: Sequence[float]) -> tuple[float, float]:
        """(cart, purchase) rate the smoothed rates shrink towards: with ``traffic_prior``, the rates of all
        traffic (``Popularity.average``: carts / views, purchases / views), else ``prior_*_rate``."""
        if self.traffic_prior and average[0] > 0:
            return (average[1] / average[0] if average[1] > 0 else self.prior_cart_rate,
                    average[2] / average[0] if average[2] > 0 else self.prior_buy_rate)
        return self.prior_cart_rate, self.prior_buy_rate

    def vector(self, f: dict[str, float], top: Sequence[str], entry: Sequence[Any] | None,
               category_touches: tuple[float, float], item: Sequence[float], item_average: Sequence[float],
               category: Sequence[float], category_average: Sequence[float], cat: str, price: float, kind: int,
               t: float, counts: Sequence[float] | None = None, distinct_items: int = 0) -> list[float]:
        """The model input (order: ``ITEM_INPUTS``): ``entry`` is the user's history with the item before now,
        ``category_touches`` the user's (events, carts + favorites) on recent items of its category, ``item`` and
        ``category`` their ``Popularity.get``, compared with ``Popularity.average`` (``*_average``); ``counts``
        the user's counts of the item (``ItemCounts.get`` as of ``t``; None: not held) and ``distinct_items`` the
        items the user has counts of."""
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
        a = self.prior_strength
        pc, pb = self._priors(item_average)
        xs.extend((_vs(views, item_average[0]), _vs(carts, item_average[1]), _vs(buys, item_average[2]),
                   _log_rate(carts, views, pc, a), _log_rate(buys, views, pb, a)))
        xs.extend((_vs(category[0], category_average[0]),
                   _log_rate(category[2], category[0], self._priors(category_average)[1], a)))
        usual = f["avg_viewed_price_30d"]
        xs.append(math.log1p(price))
        xs.append(math.log((price + 1.0) / (usual + 1.0)) if usual > 0 and price > 0 else 0.0)
        xs.append(math.log((price + 1.0) / (item_price + 1.0)) if item_price > 0 and price > 0 else 0.0)
        one_hot = [0.0] * len(DECISION_TYPES)
        one_hot[_KIND[kind]] = 1.0
        xs.extend(one_hot)
        xs.extend(f[n] for n in SEQUENCE_FEATURES)
        acting = kind in (EventType.ADD_TO_CART, EventType.FAVORITE)
        if counts is None:
            xs.extend((0.0, 0.0, 0.0, 0.0, _NEVER_HOURS, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0 if acting else 0.0,
                       0.0, 0.0, 0.0, 0.0))
        else:
            c_views, c_carts, c_favorites, c_buys, recent_views, day_views, last = counts
            hours = max(0.0, t - last) / HOUR
            strong = c_carts + c_favorites > 0
            xs.extend(math.log1p(c) for c in (c_views, c_carts, c_favorites, c_buys))
            xs.extend((math.log1p(hours), 0.0))
            low = 0.0
            for high in (*_TOUCH_BUCKETS, math.inf):
                xs.append(1.0 if low <= hours < high else 0.0)
                low = high
            xs.extend((1.0 if strong or acting else 0.0, 1.0 if strong and kind == EventType.VIEW else 0.0,
                       1.0 if strong and hours < 24.0 else 0.0, math.log1p(recent_views), math.log1p(day_views)))
        xs.append(math.log1p(distinct_items))
        rate = math.log((max(0.0, f["lifetime_purchases"]) + 0.1) / (max(0.0, f["lifetime_events"]) + 5.0))
        xs.append(rate)
        xs.extend(rate * xs[i] for i in _CROSS_AT)
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
