"""A synthetic shop with known structure: seeded, deterministic behaviour events.

The generative story
--------------------
**Catalog.** ``categories`` categories (``c00``, ``c01``, ...), each with
``items_per_category`` items (``i-c03-017``). A category has a median list price
drawn lognormally around ``price_median``; its items' prices scatter lognormally
around that median. Item popularity inside a category is Zipf-like.

**Users** (``u00042``) have

* a few *interest categories* (1 + Poisson, at most 5) with Dirichlet(1) weights;
  ``explore_share`` of their category picks are uniformly random;
* a *price sensitivity* ``price_beta``: the utility of an item falls by
  ``price_beta * log(price / category median)``; ``bargain_share`` of users are
  bargain hunters with a large ``price_beta`` (they cart and buy cheap items);
* an *activity rate* (sessions per day, lognormal, so heavy-tailed) and a
  *preferred hour* (morning, lunch or evening peak) around which sessions start;
* a base *purchase propensity* (a logit offset).

**Sessions** (``session_id`` = ``<user>-<n>``) have a latent intent (N(0, 1));
higher intent means deeper sessions, more clicks and more carting. A session is
a funnel: an optional SEARCH for its focus category, then views of items mostly
from that category (sometimes another interest, sometimes re-views of recently
seen items), each view possibly followed by a CLICK, then FAVORITE and/or
ADD_TO_CART (quantity 1-3) with probabilities rising with the item's *affinity*:
category interest + price fit + recent views of the item.
At checkout (the session's end) each carted item is bought with probability
``sigmoid(cart_buy_bias + propensity + affinity + intent/2 + promotion)``, each
favorited but not carted item likewise with ``favorite_buy_bias`` (rare before the drift). A
purchase happens within the session (``in_session_share``) or in a short
*returning session* 1-20 h later (a VIEW of the item, then the PURCHASE). Carted
items not bought are sometimes removed (REMOVE_FROM_CART), now or on return.
Users arrive with a browsing history (a few recently viewed items from their
interests, which they may re-visit), so behaviour is stationary from day 0.

**Promotion days** (every ``promo_every``-th day plus random ones, fixed by the
seed; see :attr:`Shop.promo_days`): prices drop by ``promo_discount``, users come
more often, purchase logits rise by ``promo_buy_boost``, and events carry
``context={"promo": "1"}`` (a session keeps the status of the day it started on;
a returning session takes that of its own day).

**Drift** (``drift_day``): from ``start + drift_day`` days on, ``drift_share`` of
the users (:attr:`ShopUser.drifted`) change at once:

* their interests move to categories they did not care about before;
* their price sensitivity flips sign (bargain hunters now buy expensive items);
* the cart becomes a wishlist: they cart less, regardless of intent
  (``drift_cart_shift``, ``drift_cart_intent``), and rarely buy what they cart
  (``drift_cart_buy_shift``);
* favorites become their cart: they favorite more (``drift_favorite_shift``) and
  buy what they favorited (``drift_favorite_buy_shift``);
* buying becomes promotion-driven (``drift_promo_buy_boost`` on promotion days,
  ``drift_off_promo`` otherwise).

Their purchase volume stays roughly the same; what changes is which behaviour
precedes a purchase. So a model frozen before the drift, which learnt "carts
predict purchases, favorites hardly" and "this user buys cheap items of c03",
degrades on those users, while an online model can re-learn. Non-drifted users
keep behaving the same way (so a model shared by all users sees a mixture; the
effect is clearest on the drifted users, or with ``drift_share`` near 1). Events
before the drift time are identical with or without ``drift_day``.

What is predictable, by design: whether a user buys within 1 h after an event
(recent carts/favorites, session depth, promotion, and the purchase history,
which reflects the user's propensity) and
whether a user buys a given item within 24 h after viewing/clicking/carting/
favoriting it (category interest, prior views and carts of the item, price vs
the user's price level).

Determinism: every random draw comes from ``random.Random`` instances seeded
from ``seed`` (the catalog, promotions, drift selection and each user have their
own stream, so user ``k`` behaves the same whatever the number of users).
Event ids are ``s<seed>-<n>`` in output order. Events are yielded in event-time
order (ties by user, then generation order) and every one passes
``server.domain.events.validate``. Events after ``start + days`` are cut off.

>>> events = list(simulate(users=20, days=2, seed=1))
>>> len(events) == len(list(simulate(users=20, days=2, seed=1)))
True
>>> events[0].event_id, all(a.event_time <= b.event_time for a, b in zip(events, events[1:]))
('s1-0', True)
>>> from server.domain.events import validate
>>> len(events), all(validate(e, now=4e9) is None for e in events)
(366, True)
"""

from __future__ import annotations

import heapq
import math
import os
import random
from bisect import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from server.domain.events import Event, EventType
from server.domain.units import DAY, HOUR
from server.tools.eventfile import write_events

START = 1_767_225_600.0
"""2026-01-01T00:00:00Z in unix seconds: the default simulation start."""

_CATEGORY_WORDS = (
    "shoes",
    "dresses",
    "phones",
    "laptops",
    "headphones",
    "kitchen",
    "furniture",
    "toys",
    "books",
    "beauty",
    "sports",
    "garden",
    "jewelry",
    "watches",
    "bags",
    "pet supplies",
    "groceries",
    "cameras",
    "gaming",
    "tools",
)
_QUERY_PREFIXES = ("", "", "best ", "new ", "cheap ", "sale ")
_PEAK_HOURS = ((9.0, 0.25), (13.0, 0.25), (20.5, 0.5))
_PROMO_CONTEXT = "promo"
_WARM_UP_VIEWS = 10


@dataclass(frozen=True, slots=True)
class ShopConfig:
    """Hyperparameters of the synthetic shop (probabilities, logits, counts)."""

    # catalog
    categories: int = 20
    items_per_category: int = 50
    price_median: float = 30.0
    """Catalog-wide median list price."""
    category_price_sigma: float = 0.8
    """Spread (log scale) of category median prices."""
    item_price_sigma: float = 0.5
    """Spread (log scale) of item prices around their category median."""
    popularity_exponent: float = 0.8
    """Zipf exponent of item popularity inside a category."""
    # users
    interests_mean: float = 2.0
    """Mean number of interest categories (1 + Poisson(mean - 1), at most 5)."""
    explore_share: float = 0.1
    """Share of category picks that ignore interests (uniform over categories)."""
    bargain_share: float = 0.3
    bargain_price_beta: float = 2.0
    price_beta: float = 0.3
    """Price sensitivity of non-bargain-hunters (bargain hunters: bargain_price_beta)."""
    sessions_per_day_median: float = 0.6
    sessions_per_day_sigma: float = 1.0
    max_sessions_per_day: float = 8.0
    propensity_mean: float = 0.0
    propensity_sd: float = 0.8
    hour_sd: float = 2.0
    """Spread (hours) of session starts around a user's preferred hour."""
    # sessions
    search_prob: float = 0.4
    views_mean: float = 4.0
    """Mean item views per session at intent 0 (geometric)."""
    intent_depth: float = 0.35
    """How strongly session intent lengthens the session (log scale)."""
    revisit_prob: float = 0.2
    """Chance that a view re-visits one of the user's recently viewed items."""
    focus_switch_prob: float = 0.1
    click_bias: float = -1.5
    favorite_bias: float = -6.0
    cart_bias: float = -5.6
    cart_intent: float = 0.6
    """How strongly session intent raises carting."""
    cart_buy_bias: float = -3.9
    """Logit of buying a carted item (before propensity, affinity, ...)."""
    favorite_buy_bias: float = -6.0
    """Logit of buying a favorited (not carted) item at checkout."""
    in_session_share: float = 0.6
    return_min_hours: float = 1.0
    return_max_hours: float = 20.0
    remove_prob: float = 0.3
    # promotions
    promo_every: int = 7
    """A promotion day every ``promo_every`` days (phase from the seed); 0 for none."""
    promo_day_prob: float = 0.05
    """Chance that any other day is a promotion day too."""
    promo_discount: float = 0.2
    promo_activity: float = 1.3
    promo_buy_boost: float = 0.5
    # drift (for drifted users, from the drift day on)
    drift_cart_shift: float = -1.0
    """Added to ``cart_bias``: the cart becomes a wishlist, used less..."""
    drift_cart_intent: float = 0.0
    """... whatever the session intent (replaces ``cart_intent``)..."""
    drift_cart_buy_shift: float = -4.0
    """... and added to ``cart_buy_bias``: carting stops implying buying."""
    drift_favorite_shift: float = 1.2
    """Added to ``favorite_bias``: favorites are used more..."""
    drift_favorite_buy_shift: float = 3.0
    """... and added to ``favorite_buy_bias``: favoriting now implies buying."""
    drift_promo_buy_boost: float = 2.5
    """Replaces ``promo_buy_boost`` on promotion days."""
    drift_off_promo: float = -1.0
    """Added to purchase logits on the other days."""


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item: id, category id, list price, popularity weight in its category."""

    item_id: str
    category: str
    price: float
    popularity: float


@dataclass(frozen=True, slots=True)
class ShopUser:
    """The hidden truth about one simulated user (what a profile tries to recover)."""

    user_id: str
    interests: dict[str, float]
    """Category id -> weight (sums to 1) before the drift (always, if not drifted)."""
    drift_interests: dict[str, float]
    """Interests after the drift, on other categories (used only if ``drifted``)."""
    bargain_hunter: bool
    price_beta: float
    """Utility falls by price_beta * log(price / category median); flips sign after drift."""
    activity: float
    """Expected sessions per (non-promotion) day."""
    propensity: float
    """Base purchase logit offset."""
    peak_hour: float
    drifted: bool


@dataclass(slots=True)
class _UserState:
    rng: random.Random
    seq: int = 0
    sessions: int = 0
    busy_until: float = 0.0
    recent: deque[Item] = field(default_factory=lambda: deque(maxlen=20))


@dataclass(slots=True)
class _Regime:
    """The parameters in force for one user on one day."""

    cats: list[str]
    cum: list[float]
    interests: dict[str, float]
    max_weight: float
    price_beta: float
    cart_shift: float
    cart_intent: float
    cart_buy_bias: float
    favorite_shift: float
    favorite_buy_bias: float
    promo_term: float
    promo: bool


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small rates used here."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _dirichlet(rng: random.Random, keys: list[str]) -> dict[str, float]:
    g = [rng.gammavariate(1.0, 1.0) + 1e-9 for _ in keys]
    total = sum(g)
    return {k: x / total for k, x in zip(keys, g)}


class Shop:
    """A seeded synthetic shop: its catalog, users, promotion days and event stream.

    Everything public is the ground truth; :meth:`events` regenerates the same
    stream on every call.

    >>> shop = Shop(users=4, days=3, drift_day=1, seed=7)
    >>> len(shop.catalog), len(shop.categories), sum(u.drifted for u in shop.users)
    (1000, 20, 2)
    >>> [e.event_id for e in shop.events()][:2]
    ['s7-0', 's7-1']
    """

    def __init__(
        self,
        users: int,
        days: int,
        drift_day: int | None = None,
        seed: int = 0,
        start: float = START,
        drift_share: float = 0.5,
        config: ShopConfig | None = None,
    ) -> None:
        if users < 0 or days < 0:
            raise ValueError("users and days must be >= 0")
        if drift_day is not None and drift_day < 0:
            raise ValueError("drift_day must be >= 0")
        if not 0.0 <= drift_share <= 1.0:
            raise ValueError("drift_share must be in [0, 1]")
        if not math.isfinite(start) or start < 0:
            raise ValueError("start must be a unix time >= 0")
        self.config = config or ShopConfig()
        self.seed = seed
        self.days = days
        self.start = float(start)
        self.end = self.start + days * DAY
        self.drift_day = drift_day
        self.drift_time = None if drift_day is None else self.start + drift_day * DAY
        cfg = self.config
        self.categories = [f"c{c:02d}" for c in range(cfg.categories)]
        self.catalog = self._make_catalog(random.Random(f"{seed}:catalog"))
        self._by_category: dict[str, tuple[list[Item], list[float]]] = {}
        self._category_median: dict[str, float] = {}
        for cat in self.categories:
            items = [it for it in self.catalog if it.category == cat]
            self._by_category[cat] = (items, list(accumulate(it.popularity for it in items)))
            prices = sorted(it.price for it in items)
            self._category_median[cat] = prices[len(prices) // 2]
        promo_rng = random.Random(f"{seed}:promo")
        phase = promo_rng.randrange(cfg.promo_every) if cfg.promo_every > 0 else -1
        self.promo_days = frozenset(
            d
            for d in range(days)
            if (promo_rng.random() < cfg.promo_day_prob) or (phase >= 0 and d % cfg.promo_every == phase)
        )
        drift_rng = random.Random(f"{seed}:drift")
        chosen = set(drift_rng.sample(range(users), round(drift_share * users)))
        cat_pop = random.Random(f"{seed}:category-popularity")
        self._category_weight = [cat_pop.gammavariate(2.0, 1.0) for _ in self.categories]
        width = max(5, len(str(max(users - 1, 0))))
        self.users = [
            self._make_user(i, f"u{i:0{width}d}", drift_day is not None and i in chosen) for i in range(users)
        ]

    # ------------------------------------------------------------------ setup

    def _make_catalog(self, rng: random.Random) -> list[Item]:
        cfg = self.config
        catalog = []
        for cat in self.categories:
            median = cfg.price_median * math.exp(rng.gauss(0.0, cfg.category_price_sigma))
            order = list(range(cfg.items_per_category))
            rng.shuffle(order)  # popularity rank independent of item number
            for n in range(cfg.items_per_category):
                price = round(max(0.5, median * math.exp(rng.gauss(0.0, cfg.item_price_sigma))), 2)
                popularity = 1.0 / (order[n] + 1) ** cfg.popularity_exponent
                catalog.append(Item(f"i-{cat}-{n:03d}", cat, price, popularity))
        return catalog

    def _pick_categories(self, rng: random.Random, k: int, exclude: set[str]) -> list[str]:
        pool = [(c, w) for c, w in zip(self.categories, self._category_weight) if c not in exclude]
        chosen: list[str] = []
        for _ in range(min(k, len(pool))):
            total = sum(w for _, w in pool)
            r, acc = rng.random() * total, 0.0
            for j, (c, w) in enumerate(pool):
                acc += w
                if r < acc or j == len(pool) - 1:
                    chosen.append(c)
                    pool.pop(j)
                    break
        return chosen

    def _make_user(self, index: int, user_id: str, drifted: bool) -> ShopUser:
        cfg = self.config
        rng = random.Random(f"{self.seed}:user:{index}")
        k = min(5, 1 + _poisson(rng, max(0.0, cfg.interests_mean - 1.0)))
        cats = self._pick_categories(rng, k, set())
        drift_cats = self._pick_categories(rng, k, set(cats)) or cats
        bargain = rng.random() < cfg.bargain_share
        activity = cfg.sessions_per_day_median * math.exp(rng.gauss(0.0, cfg.sessions_per_day_sigma))
        beta = (cfg.bargain_price_beta if bargain else cfg.price_beta) * math.exp(rng.gauss(0.0, 0.25))
        r, acc, peak = rng.random(), 0.0, _PEAK_HOURS[-1][0]
        for hour, share in _PEAK_HOURS:
            acc += share
            if r < acc:
                peak = hour
                break
        return ShopUser(
            user_id=user_id,
            interests=_dirichlet(rng, cats),
            drift_interests=_dirichlet(rng, drift_cats),
            bargain_hunter=bargain,
            price_beta=beta,
            activity=min(cfg.max_sessions_per_day, activity),
            propensity=rng.gauss(cfg.propensity_mean, cfg.propensity_sd),
            peak_hour=(peak + rng.gauss(0.0, 1.0)) % 24.0,
            drifted=drifted,
        )

    # ------------------------------------------------------------------ events

    def events(self) -> Iterator[Event]:
        """Yield the whole event stream in event-time order (deterministic)."""
        states = [_UserState(random.Random(f"{self.seed}:events:{i}")) for i in range(len(self.users))]
        for user, state in zip(self.users, states):
            reg = self._regime(user, 0)
            for _ in range(_WARM_UP_VIEWS):
                state.recent.append(self._pick_item(state.rng, self._pick_category(state.rng, reg)))
        heap: list[tuple[float, int, int, Event]] = []
        n = 0
        for day in range(self.days):
            day_start = self.start + day * DAY
            for index, (user, state) in enumerate(zip(self.users, states)):
                for e in self._user_day(user, state, day, day_start):
                    assert e.event_time is not None
                    heapq.heappush(heap, (e.event_time, index, state.seq, e))
                    state.seq += 1
            # every later event starts on a later day: everything before it is final
            horizon = min(day_start + DAY, self.end)
            while heap and heap[0][0] < horizon:
                e = heapq.heappop(heap)[3]
                e.event_id = f"s{self.seed}-{n}"
                n += 1
                yield e

    def _regime(self, user: ShopUser, day: int) -> _Regime:
        cfg = self.config
        promo = day in self.promo_days
        drifted = user.drifted and self.drift_day is not None and day >= self.drift_day
        interests = user.drift_interests if drifted else user.interests
        cats = list(interests)
        if drifted:
            promo_term = cfg.drift_promo_buy_boost if promo else cfg.drift_off_promo
        else:
            promo_term = cfg.promo_buy_boost if promo else 0.0
        return _Regime(
            cats=cats,
            cum=list(accumulate(interests[c] for c in cats)),
            interests=interests,
            max_weight=max(interests.values()),
            price_beta=-user.price_beta if drifted else user.price_beta,
            cart_shift=cfg.drift_cart_shift if drifted else 0.0,
            cart_intent=cfg.drift_cart_intent if drifted else cfg.cart_intent,
            cart_buy_bias=cfg.cart_buy_bias + (cfg.drift_cart_buy_shift if drifted else 0.0),
            favorite_shift=cfg.drift_favorite_shift if drifted else 0.0,
            favorite_buy_bias=cfg.favorite_buy_bias + (cfg.drift_favorite_buy_shift if drifted else 0.0),
            promo_term=promo_term,
            promo=promo,
        )

    def _user_day(self, user: ShopUser, st: _UserState, day: int, day_start: float) -> list[Event]:
        cfg = self.config
        rng = st.rng
        reg = self._regime(user, day)
        rate = user.activity * (cfg.promo_activity if reg.promo else 1.0)
        starts = []
        for _ in range(_poisson(rng, rate)):
            if rng.random() < 0.1:
                hour = rng.uniform(0.0, 24.0)
            else:
                hour = rng.gauss(user.peak_hour, cfg.hour_sd) % 24.0
            starts.append(day_start + hour * HOUR)
        out: list[Event] = []
        for t in sorted(starts):
            t = max(t, st.busy_until + 300.0)
            if t >= day_start + DAY:
                break  # busy all day: no session spills into the next day's regime
            st.busy_until = self._session(user, st, reg, t, out)
        return out

    def _pick_category(self, rng: random.Random, reg: _Regime) -> str:
        if rng.random() < self.config.explore_share:
            return self.categories[int(rng.random() * len(self.categories))]
        return reg.cats[min(bisect(reg.cum, rng.random() * reg.cum[-1]), len(reg.cats) - 1)]

    def _pick_item(self, rng: random.Random, cat: str) -> Item:
        items, cum = self._by_category[cat]
        return items[min(bisect(cum, rng.random() * cum[-1]), len(items) - 1)]

    def _affinity(self, st: _UserState, reg: _Regime, item: Item, price: float) -> float:
        w = reg.interests.get(item.category, 0.0)
        a = 1.5 * w / reg.max_weight - 0.5 if w > 0 else -1.5
        a -= reg.price_beta * math.log(price / self._category_median[item.category])
        a += 0.4 * min(st.recent.count(item), 2)
        return a

    def _session(self, user: ShopUser, st: _UserState, reg: _Regime, t: float, out: list[Event]) -> float:
        """Generate one session starting at ``t`` into ``out``; return its end time."""
        cfg = self.config
        rng = st.rng
        sid = f"{user.user_id}-{st.sessions}"
        st.sessions += 1
        factor = 1.0 - cfg.promo_discount if reg.promo else 1.0

        def emit(etype: EventType, when: float, item: Item | None = None, qty: int = 0, query: str = "",
                 session: str = sid, promo: bool = reg.promo) -> None:
            out.append(
                Event(
                    event_id="",
                    user_id=user.user_id,
                    type=etype,
                    event_time=round(when, 3),
                    item_id=item.item_id if item else "",
                    category=item.category if item else "",
                    price=round(item.price * (1.0 - cfg.promo_discount if promo else 1.0), 2) if item else 0.0,
                    quantity=qty,
                    session_id=session,
                    query=query,
                    context={_PROMO_CONTEXT: "1"} if promo else {},
                )
            )

        def search(cat: str) -> None:
            nonlocal t
            words = _CATEGORY_WORDS[int(cat[1:]) % len(_CATEGORY_WORDS)]
            prefix = "cheap " if user.bargain_hunter and rng.random() < 0.5 else rng.choice(_QUERY_PREFIXES)
            emit(EventType.SEARCH, t, query=prefix + words)
            t += rng.uniform(2.0, 15.0)

        intent = rng.gauss(0.0, 1.0)
        focus = self._pick_category(rng, reg)
        if rng.random() < cfg.search_prob:
            search(focus)
        mean_views = cfg.views_mean * math.exp(cfg.intent_depth * intent)
        n_views = min(50, 1 + int(rng.expovariate(1.0 / max(mean_views - 1.0, 0.1))))
        # item id -> (item, quantity, affinity, buy bias, in cart)
        candidates: dict[str, tuple[Item, int, float, float, bool]] = {}
        for _ in range(n_views):
            if rng.random() < cfg.focus_switch_prob:
                focus = self._pick_category(rng, reg)
                if rng.random() < cfg.search_prob:
                    search(focus)
            if st.recent and rng.random() < cfg.revisit_prob:
                item = st.recent[int(rng.random() * len(st.recent))]
            elif rng.random() < 0.8:
                item = self._pick_item(rng, focus)
            else:
                item = self._pick_item(rng, self._pick_category(rng, reg))
            price = item.price * factor
            aff = self._affinity(st, reg, item, price)
            emit(EventType.VIEW, t, item)
            st.recent.append(item)
            t += rng.uniform(1.0, 6.0)
            if rng.random() < _sigmoid(cfg.click_bias + aff + 0.3 * intent):
                emit(EventType.CLICK, t, item)
                t += rng.uniform(5.0, 60.0)
                if rng.random() < _sigmoid(cfg.favorite_bias + reg.favorite_shift + aff + 0.5 * reg.promo_term):
                    emit(EventType.FAVORITE, t, item)
                    t += rng.uniform(2.0, 20.0)
                    if item.item_id not in candidates:
                        candidates[item.item_id] = (item, self._quantity(rng), aff, reg.favorite_buy_bias, False)
                cart_logit = cfg.cart_bias + reg.cart_shift + aff + reg.cart_intent * intent
                cart_logit += 0.5 * (user.propensity + reg.promo_term)
                previous = candidates.get(item.item_id)
                if (previous is None or not previous[4]) and rng.random() < _sigmoid(cart_logit):
                    qty = self._quantity(rng)
                    emit(EventType.ADD_TO_CART, t, item, qty=qty)
                    bias = max(reg.cart_buy_bias, previous[3]) if previous else reg.cart_buy_bias
                    candidates[item.item_id] = (item, qty, aff, bias, True)
                    t += rng.uniform(3.0, 30.0)
            t += rng.expovariate(1.0 / 30.0)
        # the checkout decision for every carted or favorited item
        returning: list[tuple[Item, int, bool]] = []
        for item, qty, aff, bias, in_cart in candidates.values():
            logit = bias + user.propensity + aff + 0.5 * intent + reg.promo_term
            if rng.random() < _sigmoid(logit):
                if rng.random() < cfg.in_session_share:
                    t += rng.uniform(20.0, 180.0)
                    emit(EventType.PURCHASE, t, item, qty=qty)
                else:
                    returning.append((item, qty, True))
            elif in_cart and rng.random() < cfg.remove_prob:
                if rng.random() < 0.5:
                    t += rng.uniform(5.0, 60.0)
                    emit(EventType.REMOVE_FROM_CART, t, item, qty=qty)
                else:
                    returning.append((item, qty, False))
        end = t
        if returning:
            rsid = f"{user.user_id}-{st.sessions}"
            st.sessions += 1
            r = end + rng.uniform(cfg.return_min_hours, cfg.return_max_hours) * HOUR
            promo = int((r - self.start) // DAY) in self.promo_days  # today's prices, not the cart's
            for item, qty, buy in returning:
                emit(EventType.VIEW, r, item, session=rsid, promo=promo)
                r += rng.uniform(10.0, 90.0)
                etype = EventType.PURCHASE if buy else EventType.REMOVE_FROM_CART
                emit(etype, r, item, qty=qty, session=rsid, promo=promo)
                r += rng.uniform(5.0, 40.0)
        return end

    @staticmethod
    def _quantity(rng: random.Random) -> int:
        r = rng.random()
        return 1 if r < 0.75 else 2 if r < 0.93 else 3


def simulate(
    users: int,
    days: int,
    drift_day: int | None = None,
    seed: int = 0,
    start: float = START,
    drift_share: float = 0.5,
    config: ShopConfig | None = None,
) -> Iterator[Event]:
    """Yield the events of ``Shop(users, days, ...)`` in event-time order.

    >>> from collections import Counter
    >>> counts = Counter(e.type.name for e in simulate(users=100, days=3, seed=3))
    >>> counts.most_common()  # doctest: +NORMALIZE_WHITESPACE
    [('VIEW', 921), ('CLICK', 421), ('SEARCH', 138), ('ADD_TO_CART', 11), ('FAVORITE', 6),
     ('PURCHASE', 5), ('REMOVE_FROM_CART', 1)]
    """
    return Shop(users, days, drift_day, seed, start, drift_share, config).events()


def simulate_to_file(
    path: str | os.PathLike[str],
    users: int,
    days: int,
    drift_day: int | None = None,
    seed: int = 0,
    start: float = START,
    drift_share: float = 0.5,
    config: ShopConfig | None = None,
) -> int:
    """Write ``simulate(...)`` to an event file (.csv, .csv.gz, .parquet); return the event count."""
    return write_events(path, simulate(users, days, drift_day, seed, start, drift_share, config))
