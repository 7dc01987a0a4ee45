"""The item model: P(this user buys this item within the horizon), learnt online.

``ItemModel`` is a River ``StandardScaler | Clip | LogisticRegression`` over ``ITEM_INPUTS``: the
user's profile, the user's history with the item and its category (``ItemHistory``, a partition
worker's), the item's and category's recent popularity and conversion (``Popularity``, the trainer's),
the price relative to the user's usual price and to the item's recent price, and the action (view,
click, cart, favorite). The trainer owns and learns it; partition workers decide and score with the
version it publishes (``server.worker.items``).

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
        xs.extend(f[n] for n in SEQUENCE_FEATURES)
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
