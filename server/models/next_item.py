"""The recommendation ranker: which of a user's candidate items will the user buy next?

``NextItemRanker`` is a River ``StandardScaler | LogisticRegression`` learnt online from purchases: when
a user buys, the bought item (if it is among the user's candidates) is a positive example and up to
``negatives`` of the other candidates are negative ones, each with its inputs as of just before the
purchase (``NEXT_ITEM_INPUTS``: where the candidate stands in the user's recent items and what the user did
to it, whether it is co-visited with the user's latest items or in the user's top categories, its
popularity). Ranking the candidates by its probability is ``Recommend``.

It learns what the item model (P(bought within 24 h if viewed now), ``server.models.ranking``) does not: the
choice *among* a user's items. On taobao-dev the item model ranked a user's recent items below plain recency
(hit rate@10 0.380 vs 0.502); this ranker is above it (docs/learning.md has the numbers).

>>> m = NextItemRanker()
>>> bought = m.vector(0, (2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 3600.0), 7200.0, True, False, False, (1.0, 0.0, 0.0),
...                   (3.0, 1.0))
>>> other = m.vector(None, None, 7200.0, False, False, True, (9.0, 1.0, 2.0), (0.0, 0.0))
>>> for _ in range(50):
...     m.learn(bought, True); m.learn(other, False)
>>> m.predict(bought) > 0.5 > m.predict(other)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from river import compose, linear_model, optim, preprocessing

from server.domain.units import HOUR
from server.models.itemstats import CARTS, CLICKS, FAVORITES, PURCHASES, REMOVES, VIEWS

RECENT_LIMIT = 20  # ranks beyond this (or not recent at all) count as this
_NEVER_HOURS = math.log1p(30 * 24)  # "hours since the user touched it" for an item it never touched
NEXT_ITEM_INPUTS = (
    "recent", "log_recency_rank", "log_hours_since_touch",
    "log_views", "log_clicks", "log_carts", "log_favorites", "log_removes", "log_purchases",
    "covisited", "is_top_category", "in_top_categories",
    "pop_views_vs_average", "pop_carts_vs_average", "pop_purchases_vs_average",
    "log_category_touches", "log_category_carts_favorites",
)


class NextItemRanker:
    """Online logistic ranker of candidate items; see the module docstring."""

    def __init__(self, lr: float = 0.01, negatives: int = 10) -> None:
        self.lr = lr
        self.negatives = negatives
        self._model = compose.Pipeline(preprocessing.StandardScaler(),
                                       linear_model.LogisticRegression(optimizer=optim.SGD(lr)))

    @staticmethod
    def vector(rank: int | None, entry: Sequence[float] | None, t: float, covisited: bool, top_category: bool,
               in_top: bool, popularity: Sequence[float], category_touches: Sequence[float]) -> list[float]:
        """The input (order: ``NEXT_ITEM_INPUTS``): ``rank`` of the item among the user's recent items (0 = the
        latest; None: not recent), ``entry`` the user's history with it (6 counters and the last touch time),
        ``popularity`` its (views, carts, purchases) over the average item's as ``log((n + 1) / (avg + 1))``,
        ``category_touches`` the user's (events, carts + favorites) on recent items of its category."""
        xs = [0.0 if rank is None else 1.0, math.log1p(RECENT_LIMIT if rank is None else min(rank, RECENT_LIMIT))]
        if entry is None:
            xs.append(_NEVER_HOURS)
            xs.extend((0.0,) * 6)
        else:
            xs.append(math.log1p(max(0.0, t - entry[6]) / HOUR))
            xs.extend(math.log1p(entry[s]) for s in (VIEWS, CLICKS, CARTS, FAVORITES, REMOVES, PURCHASES))
        xs.extend((1.0 if covisited else 0.0, 1.0 if top_category else 0.0, 1.0 if in_top else 0.0))
        xs.extend(popularity)
        xs.extend(math.log1p(c) for c in category_touches)
        return xs

    def predict(self, x: Sequence[float]) -> float:
        """P(this candidate is the item bought next)."""
        return float(self._model.predict_proba_one(dict(zip(NEXT_ITEM_INPUTS, x))).get(True, 0.0))

    def learn(self, x: Sequence[float], bought: bool) -> None:
        """One example: ``x`` as of just before a purchase, ``bought`` whether it was the bought item."""
        self._model.learn_one(dict(zip(NEXT_ITEM_INPUTS, x)), bought)
