"""UserProfile: one user's state, updated per event in event time.

Window features are computed "as of the user's latest event time"
(``updated_at``), not wall-clock time: a user who stops sending events keeps
the counts of their last active moment until their next event (readers
compare ``updated_at`` with their own clock to judge staleness).

>>> from server.domain.events import Event, EventType
>>> p = UserProfile()
>>> p.update(Event("e1", "u1", EventType.VIEW, 3600.0, item_id="i1", category="shoes", price=40.0))
>>> p.update(Event("e2", "u1", EventType.PURCHASE, 3660.0, item_id="i1", category="shoes", price=40.0, quantity=2))
>>> f = p.features()
>>> f["views_1h"], f["purchases_24h"], f["lifetime_spend"], f["avg_order_value"]
(1.0, 1.0, 80.0, 80.0)
>>> p.top_categories()
['shoes']
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.domain import sparse
from server.domain.events import Event, EventType
from server.domain.names import shared
from server.domain.units import DAY, HOUR, MINUTE
from server.domain.windows import TiledWindow

SESSION_GAP_S = 30 * MINUTE
AFFINITY_HALF_LIFE_S = 7 * DAY
HOUR_HALF_LIFE_S = 14 * DAY
MAX_CATEGORIES = 32
RECENT_SESSIONS = 8  # session ids remembered, so a late event of a recent session does not count it again
REBASE_HALF_LIVES = 64.0  # decayed scores are kept relative to a reference time at most this many half-lives old
RECENT_EVENTS = 20  # events kept per user for the explorer (``recent_events``): the latest by event time
_WEEK_HOURS = 7 * 24
_COUNT_MAX = 2**16 - 1  # the activity histogram's counts saturate here (array "H", sparse while small)

TYPES = tuple(EventType)
N_TYPES = len(TYPES)
# Extra metrics after the per-type counts, per window.
_SPEND = N_TYPES  # hour + day windows
_SESSIONS = N_TYPES + 1  # hour window
_VIEW_PRICE_SUM, _VIEW_PRICE_N = N_TYPES + 1, N_TYPES + 2  # day window
_BUY_PRICE_SUM, _BUY_PRICE_N = N_TYPES + 3, N_TYPES + 4  # day window

WINDOWS = ("1h", "24h", "7d", "30d")

# Weight of one event of each type in category affinity.
AFFINITY_WEIGHTS = {
    EventType.VIEW: 1.0, EventType.CLICK: 1.0, EventType.ADD_TO_CART: 3.0, EventType.REMOVE_FROM_CART: -1.0,
    EventType.FAVORITE: 2.0, EventType.PURCHASE: 5.0, EventType.SEARCH: 0.5,
}

COUNT_FEATURES = tuple(f"{t.plural}_{w}" for t in TYPES for w in WINDOWS)
_TYPE_INDEX = {int(t): i for i, t in enumerate(TYPES)}
_AFFINITY_BY_INDEX = tuple(float(AFFINITY_WEIGHTS[t]) for t in TYPES)
_PURCHASE, _VIEW = TYPES.index(EventType.PURCHASE), TYPES.index(EventType.VIEW)
SCALAR_FEATURES = (
    "spend_7d", "spend_30d", "lifetime_events", "lifetime_purchases", "lifetime_spend", "avg_order_value",
    "first_seen_ts", "last_event_ts", "last_purchase_ts", "sessions_7d", "conversion_rate_30d",
    "preferred_hour", "avg_viewed_price_30d", "avg_purchased_price_30d",
)
#: The behaviour sequence: P(next event type | this one), per user, for these (from, to) pairs (seed 004's
#: Markov transitions view -> cart -> purchase); smoothed and decayed (``TRANSITION_HALF_LIFE_S``).
SEQUENCE_PAIRS = (
    (EventType.VIEW, EventType.ADD_TO_CART), (EventType.VIEW, EventType.FAVORITE),
    (EventType.VIEW, EventType.PURCHASE), (EventType.ADD_TO_CART, EventType.PURCHASE),
    (EventType.FAVORITE, EventType.ADD_TO_CART), (EventType.FAVORITE, EventType.PURCHASE),
    (EventType.VIEW, EventType.VIEW),
)
SEQUENCE_FEATURES = tuple(f"p_{a.name.lower().replace('add_to_', '')}_to_{b.name.lower().replace('add_to_', '')}"
                          for a, b in SEQUENCE_PAIRS)
#: The purchase cycle: intervals between purchase occasions (purchases more than ``SESSION_GAP_S`` apart).
CYCLE_FEATURES = ("purchase_interval_mean_days", "purchase_interval_last_days", "next_purchase_expected_ts",
                  "active_days_30d")
#: Every numeric feature of ``UserProfile.features()``, in a stable order.
FEATURE_NAMES = COUNT_FEATURES + SCALAR_FEATURES + CYCLE_FEATURES + SEQUENCE_FEATURES
TRANSITION_HALF_LIFE_S = 30 * DAY
TRANSITION_PRIOR = 1.0
"""Smoothing: P(a -> b) = (decayed count(a -> b) + prior / types) / (decayed count(a -> any) + prior)."""


@dataclass(frozen=True)
class TagRules:
    """Thresholds of the rule-based tags, evaluated as of the profile's as-of time (``as_of``: its latest event,
    or later once time alone changed it — the worker's timers move it)."""

    new_days: float = 7.0
    """``new``: first seen less than this many days before the latest event."""
    active_sessions_7d: int = 3
    """``active``: at least this many sessions in the last 7 days."""
    high_value_spend_30d: float = 500.0
    """``high_value``: spent at least this much in the last 30 days."""
    bargain_price_ratio: float = 0.7
    """``bargain_hunter``: average purchased price <= this x average viewed price (30 d) ..."""
    bargain_min_purchases_30d: int = 2
    """... with at least this many purchases in 30 days."""
    abandoner_carts_7d: int = 2
    """``cart_abandoner``: at least this many add-to-carts and no purchase in the last 7 days."""
    churn_active_days_30d: int = 3
    """``churn_risk``: the user was active — events on at least this many days of the 30 before the last event,
    or a purchase in them — ..."""
    churn_gap_multiple: float = 2.0
    """... and has been silent for this many times its usual gap between active days (in those 30 days; a week
    when fewer than two days were active) ..."""
    churn_min_silent_days: float = 2.0
    """... and at least this many days (and fewer than ``dormant_days``): a daily shopper is at risk after two
    silent days, a weekly one after two weeks."""
    dormant_days: float = 30.0
    """``dormant``: silent for at least this many days."""
    loyal_weeks: int = 3
    """``loyal``: purchased in at least this many of the last ``loyal_of_weeks`` weeks (7-day blocks back from
    the as-of day)."""
    loyal_of_weeks: int = 4


def _decay(half_life_s: float, dt: float) -> float:
    return math.pow(0.5, dt / half_life_s)




def _session_key(session_id: str) -> int:
    """A stable 64-bit digest of a session id (not ``hash()``: that changes between processes)."""
    return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=8).digest(), "little", signed=True)


class UserProfile:
    """Per-user state; ``update`` folds in one accepted event.

    Kept compact (there are millions): ``__slots__``, window sums in ``array('d')`` (``TiledWindow``),
    decayed scores (hour of day, category affinity) as ``array('d')`` relative to a reference time —
    an event adds ``weight * 2 ** ((t - reference) / half_life)`` instead of decaying every score on
    every event; ranks and signs, all that is read, do not depend on the common scale — category names
    shared between profiles, and recent sessions as 64-bit digests.
    """

    __slots__ = (
        "_affinity",
        "_affinity_t",
        "_affinity_w",
        "_day",
        "_hour",
        "_hours",
        "_hours_t",
        "_minute",
        "_recent",
        "_recent_nums",
        "_recent_sessions",
        "_session_id",
        "_session_last",
        "_transitions",
        "_transitions_t",
        "_week_hours",
        "age",
        "as_of",
        "first_seen",
        "gender",
        "last_event",
        "last_purchase",
        "last_type",
        "lifetime_events",
        "lifetime_purchases",
        "lifetime_spend",
        "propensity",
        "purchase_interval_last",
        "purchase_interval_n",
        "purchase_interval_sum",
        "region",
        "segment",
        "version",
    )

    def __init__(self) -> None:
        self.version = 0
        self.age = 0
        self.gender = ""
        self.region = ""
        self.first_seen: float | None = None
        self.last_event: float | None = None
        self.last_purchase: float | None = None
        self.lifetime_events = 0
        self.lifetime_purchases = 0
        self.lifetime_spend = 0.0
        self._minute = TiledWindow(MINUTE, 60, N_TYPES)
        self._hour = TiledWindow(HOUR, 7 * 24, N_TYPES + 2)
        self._day = TiledWindow(DAY, 30, N_TYPES + 5)
        self._session_id = False  # whether the latest session had an id
        self._session_last: float | None = None
        self._recent_sessions = array("q")  # digests of the last RECENT_SESSIONS session ids (_session_key)
        self._hours = array("d", bytes(8 * 24))  # decayed events per hour of day, relative to _hours_t
        self._hours_t = 0.0
        self._affinity: list[str] = []  # categories, in the order first seen (ties: the first one)
        self._affinity_w = array("d")  # their decayed affinities, relative to _affinity_t
        self._affinity_t = 0.0
        self.propensity = math.nan  # NaN: not scored since the last event (scored lazily)
        self.segment = -1
        self.last_type = 0
        self.as_of = 0.0  # the latest time the worker's timers brought the profile to (0: its latest event)
        self.purchase_interval_n = 0  # intervals between purchase occasions seen
        self.purchase_interval_sum = 0.0
        self.purchase_interval_last = 0.0
        self._transitions = array("d")  # decayed (from, to) counts, rel. _transitions_t; sparse while few are set
        self._transitions_t = 0.0
        self._week_hours = _week_hours()  # events per (day of week, hour of day), UTC, not decayed
        self._recent: list[str] = []  # the latest RECENT_EVENTS events, oldest first: item id, category
        self._recent_nums = array("d")  # ... and event time, type, price per event

    # -- updates -------------------------------------------------------------------------------
    def update(self, e: Event) -> None:
        """Fold one valid event into the profile (any arrival order)."""
        t = float(e.event_time)  # type: ignore[arg-type]
        etype = int(e.type)
        i = _TYPE_INDEX[etype]
        first = self.first_seen is None
        if first or t < self.first_seen:  # type: ignore[operator]
            self.first_seen = t
        if first or t >= self.last_event:  # type: ignore[operator]
            if not first:  # in event-time order: one step of the behaviour sequence (late events are not)
                self._add_transition(_TYPE_INDEX[self.last_type], i, t)
            self.last_event = t
            self.last_type = etype
        self.lifetime_events += 1
        self._minute.add(t, i)
        self._hour.add(t, i)
        self._day.add(t, i)
        if i == _PURCHASE:
            amount = e.price * e.units
            self.lifetime_purchases += 1
            self.lifetime_spend += amount
            if self.last_purchase is not None and t - self.last_purchase > SESSION_GAP_S:  # a new occasion
                self.purchase_interval_n += 1
                self.purchase_interval_sum += t - self.last_purchase
                self.purchase_interval_last = t - self.last_purchase
            self.last_purchase = t if self.last_purchase is None else max(self.last_purchase, t)
            self._hour.add(t, _SPEND, amount)
            self._day.add(t, _SPEND, amount)
            if e.price > 0:
                self._day.add(t, _BUY_PRICE_SUM, e.price)
                self._day.add(t, _BUY_PRICE_N)
        elif i == _VIEW and e.price > 0:
            self._day.add(t, _VIEW_PRICE_SUM, e.price)
            self._day.add(t, _VIEW_PRICE_N)
        self._update_session(e, t)
        if first:
            self._hours_t = t
        self._hours_t = _rebase(self._hours, self._hours_t, t, HOUR_HALF_LIFE_S)
        self._hours[int(t // HOUR) % 24] += _decay(HOUR_HALF_LIFE_S, self._hours_t - t)
        if e.category:
            self._add_affinity(e.category, _AFFINITY_BY_INDEX[i], t)
        self._add_activity(e, t)

    def _add_activity(self, e: Event, t: float) -> None:
        """The activity histogram and the recent events (what the explorer shows; no model reads them)."""
        sparse.add(self._week_hours, _week_hour(t), 1, _WEEK_HOURS, cap=_COUNT_MAX)
        nums, names = self._recent_nums, self._recent
        n = len(names) // 2
        at = n  # the recent events stay in event-time order (a late one goes where it belongs)
        while at > 0 and nums[3 * (at - 1)] > t:
            at -= 1
        if n >= RECENT_EVENTS:
            if at == 0:
                return  # older than every kept event
            del nums[0:3], names[0:2]
            at -= 1
        nums[3 * at:3 * at] = array("d", (t, float(e.type), float(e.price)))
        names[2 * at:2 * at] = [shared(e.item_id), shared(e.category)]

    def _update_session(self, e: Event, t: float) -> None:
        if e.session_id:
            key = _session_key(e.session_id)
            recent = self._recent_sessions
            new = key not in recent
            if new:
                recent.append(key)
                if len(recent) > RECENT_SESSIONS:
                    del recent[0]
        else:
            new = self._session_last is None or abs(t - self._session_last) > SESSION_GAP_S or bool(self._session_id)
        if new:
            self._hour.add(t, _SESSIONS)
            self._session_id = bool(e.session_id)
            self._session_last = t
        else:
            self._session_last = t if self._session_last is None else max(self._session_last, t)

    def _add_transition(self, a: int, b: int, t: float) -> None:
        scores = self._transitions
        dense = len(scores) == _CELLS
        if not any(scores if dense else scores[1::2]):
            self._transitions_t = t
        ref = self._transitions_t = _rebase(scores, self._transitions_t, t, TRANSITION_HALF_LIFE_S,
                                            first=0 if dense else 1, step=1 if dense else 2)
        sparse.add(scores, a * N_TYPES + b, _decay(TRANSITION_HALF_LIFE_S, ref - t), _CELLS)

    def _add_affinity(self, category: str, weight: float, t: float) -> None:
        cats, scores = self._affinity, self._affinity_w
        if not cats:
            self._affinity_t = t
        ref = self._affinity_t = _rebase(scores, self._affinity_t, t, AFFINITY_HALF_LIFE_S)
        added = weight * _decay(AFFINITY_HALF_LIFE_S, ref - t)
        try:
            i = cats.index(category)
        except ValueError:
            cats.append(shared(category))
            scores.append(max(0.0, 0.0 + added))
            i = len(cats) - 1
        else:
            scores[i] = max(0.0, scores[i] + added)
        if len(cats) > MAX_CATEGORIES:  # evict the weakest *other* category (the first one on a tie)
            j = min((j for j in range(len(cats)) if j != i), key=scores.__getitem__)
            del cats[j], scores[j]

    def set_attributes(self, age: int, gender: str, region: str) -> None:
        """Replace the basic attributes."""
        self.age, self.gender, self.region = age, gender, region

    # -- reads ---------------------------------------------------------------------------------
    @property
    def updated_at(self) -> float:
        """As-of time of the window features: the latest event time (0 before any event)."""
        return self.last_event or 0.0

    def counts(self) -> dict[str, float]:
        """``{type}_{window}`` counts as of ``updated_at``."""
        asof = self.updated_at
        w1h = self._minute.sums(asof)
        return self._counts(w1h, self._hour.sums(asof, 24), self._hour.sums(asof), self._day.sums(asof))

    @staticmethod
    def _counts(w1h: list[float], w24h: list[float], w7d: list[float], w30d: list[float]) -> dict[str, float]:
        # zip stops at the shortest (the 1 h window has only the per-type counts); order: COUNT_FEATURES
        return dict(zip(COUNT_FEATURES, [v for vs in zip(w1h, w24h, w7d, w30d) for v in vs]))

    @property
    def current(self) -> float:
        """The time the profile's values are true for: the latest event, or the later time the worker's timers
        brought it to (``as_of``)."""
        return max(self.updated_at, self.as_of)

    def features(self, asof: float | None = None) -> dict[str, float]:
        """Every numeric feature (see ``FEATURE_NAMES``) as of ``asof`` (default: the latest event, what the
        models learn from; rows use ``current``). Times before the latest event are not supported."""
        asof = self.updated_at if asof is None else max(asof, self.updated_at)
        h7 = self._hour.sums(asof)
        d30 = self._day.sums(asof)
        f = self._counts(self._minute.sums(asof), self._hour.sums(asof, 24), h7, d30)
        f["spend_7d"] = h7[_SPEND]
        f["spend_30d"] = d30[_SPEND]
        f["lifetime_events"] = float(self.lifetime_events)
        f["lifetime_purchases"] = float(self.lifetime_purchases)
        f["lifetime_spend"] = self.lifetime_spend
        f["avg_order_value"] = self.lifetime_spend / self.lifetime_purchases if self.lifetime_purchases else 0.0
        f["first_seen_ts"] = self.first_seen or 0.0
        f["last_event_ts"] = self.last_event or 0.0
        f["last_purchase_ts"] = self.last_purchase or 0.0
        f["sessions_7d"] = h7[_SESSIONS]
        views = f["views_30d"]
        f["conversion_rate_30d"] = f["purchases_30d"] / views if views else 0.0
        f["preferred_hour"] = float(max(range(24), key=self._hours.__getitem__)) if any(self._hours) else -1.0
        f["avg_viewed_price_30d"] = d30[_VIEW_PRICE_SUM] / d30[_VIEW_PRICE_N] if d30[_VIEW_PRICE_N] else 0.0
        f["avg_purchased_price_30d"] = d30[_BUY_PRICE_SUM] / d30[_BUY_PRICE_N] if d30[_BUY_PRICE_N] else 0.0
        n = self.purchase_interval_n
        mean = self.purchase_interval_sum / n if n else 0.0
        f["purchase_interval_mean_days"] = mean / DAY
        f["purchase_interval_last_days"] = self.purchase_interval_last / DAY
        f["next_purchase_expected_ts"] = (self.last_purchase or 0.0) + mean if n else 0.0
        f["active_days_30d"] = float(self._day.active_tiles(asof))
        f.update(self.sequence())
        return f

    def sequence(self) -> dict[str, float]:
        """P(next event type | this one) for ``SEQUENCE_PAIRS`` (``SEQUENCE_FEATURES``): decayed transition counts,
        smoothed towards 1 / types (scale-free: the common decay factor cancels)."""
        s, prior = self._transitions, TRANSITION_PRIOR
        rows = [0.0] * N_TYPES  # each row sums its non-zero cells in cell order: the same floats, dense or sparse
        held = {}
        for c, v in sparse.items(s, _CELLS):
            rows[c // N_TYPES] += v
            held[c] = v
        out = {}
        for name, (a, b) in zip(SEQUENCE_FEATURES, _SEQUENCE_INDEX):
            row = rows[a]
            out[name] = (held.get(a * N_TYPES + b, 0.0) + prior / N_TYPES) / (row + prior) if row else 1.0 / N_TYPES
        return out

    def top_categories(self, n: int = 3) -> list[str]:
        """The ``n`` categories with the highest decayed affinity (half-life 7 days)."""
        ranked = sorted(zip(self._affinity, self._affinity_w), key=lambda kv: (-kv[1], kv[0]))
        return [c for c, s in ranked[:n] if s > 0]

    def activity(self) -> list[list[int]]:
        """Events per day of week (rows, Monday first) and hour of day (columns), UTC, over the user's whole
        history (not decayed; ``update`` counts every accepted event once).

        >>> from server.domain.events import Event, EventType
        >>> p = UserProfile()
        >>> p.update(Event("e1", "u1", EventType.VIEW, 4 * DAY + 9 * HOUR, item_id="i1"))  # Mon 5 Jan 1970, 09:00
        >>> grid = p.activity()
        >>> len(grid), len(grid[0]), grid[0][9], sum(map(sum, grid))
        (7, 24, 1, 1)
        """
        h = sparse.dense(self._week_hours, _WEEK_HOURS)
        return [list(h[d * 24:(d + 1) * 24]) for d in range(7)]

    def recent_events(self) -> list[tuple[float, EventType, str, str, float]]:
        """The latest ``RECENT_EVENTS`` events, newest first: (event time, type, item id, category, price).

        >>> from server.domain.events import Event, EventType
        >>> p = UserProfile()
        >>> for i in range(RECENT_EVENTS + 5):
        ...     p.update(Event(f"e{i}", "u1", EventType.VIEW, 100.0 + i, item_id=f"i{i}", price=2.0))
        >>> p.update(Event("late", "u1", EventType.CLICK, 50.0, item_id="old"))  # older than every kept one
        >>> events = p.recent_events()
        >>> len(events), events[0][2], events[-1][2], events[0][1].name
        (20, 'i24', 'i5', 'VIEW')
        """
        nums, names = self._recent_nums, self._recent
        out = [(nums[3 * i], EventType(int(nums[3 * i + 1])), names[2 * i], names[2 * i + 1], nums[3 * i + 2])
               for i in range(len(names) // 2)]
        out.reverse()
        return out

    def category_count(self) -> int:
        """How many categories the user has touched (bounded by ``MAX_CATEGORIES``)."""
        return len(self._affinity)

    def tags(self, features: dict[str, float] | None = None, rules: TagRules = TagRules(),
             asof: float | None = None) -> list[str]:
        """Rule-based tags as of ``asof`` (default: the latest event; ``features`` as of the same time), sorted
        (see ``TagRules``)."""
        asof = self.updated_at if asof is None else max(asof, self.updated_at)
        f = features if features is not None else self.features(asof)
        out = []
        if self.first_seen is not None and asof - self.first_seen < rules.new_days * DAY:
            out.append("new")
        if self.last_event is not None:
            silent = asof - self.last_event
            if silent >= rules.dormant_days * DAY:
                out.append("dormant")
            elif silent >= rules.churn_min_silent_days * DAY and self._churn_after(rules) <= silent:
                out.append("churn_risk")
        if self._purchase_weeks(asof, rules.loyal_of_weeks) >= rules.loyal_weeks:
            out.append("loyal")
        if f["sessions_7d"] >= rules.active_sessions_7d:
            out.append("active")
        if f["spend_30d"] >= rules.high_value_spend_30d:
            out.append("high_value")
        if (
            f["purchases_30d"] >= rules.bargain_min_purchases_30d
            and f["avg_viewed_price_30d"] > 0
            and f["avg_purchased_price_30d"] <= rules.bargain_price_ratio * f["avg_viewed_price_30d"]
        ):
            out.append("bargain_hunter")
        if f["carts_7d"] >= rules.abandoner_carts_7d and f["purchases_7d"] == 0:
            out.append("cart_abandoner")
        return sorted(out)

    def _churn_after(self, rules: TagRules) -> float:
        """Seconds of silence after which the user is at risk of churning (``math.inf``: never, it was not
        active: events on ``churn_active_days_30d`` of the 30 days before the last event, or a purchase in
        them): ``churn_gap_multiple`` x the mean gap between those active days, at least
        ``churn_min_silent_days``."""
        last = self.updated_at
        days = self._day.active_tile_ids(last)
        if len(days) < rules.churn_active_days_30d and not (
                self.last_purchase is not None and last - self.last_purchase < 30 * DAY):
            return math.inf
        gap = (days[-1] - days[0]) / (len(days) - 1) * DAY if len(days) >= 2 else 7 * DAY
        return max(rules.churn_min_silent_days * DAY, rules.churn_gap_multiple * gap)

    def _purchase_weeks(self, asof: float, weeks: int) -> int:
        """In how many of the last ``weeks`` 7-day blocks (back from ``asof``'s day) the user purchased."""
        if self.last_purchase is None or asof - self.last_purchase >= weeks * 7 * DAY:
            return 0
        totals = [self._day.sums(asof, 7 * k)[_PURCHASE] for k in range(1, weeks + 1)]
        return sum(1 for k in range(weeks) if totals[k] - (totals[k - 1] if k else 0.0) > 0)

    def next_change(self, rules: TagRules = TagRules()) -> float | None:
        """The next time after ``current`` at which time alone changes a served value — a tile leaves the
        1h / 24h / 7d / 30d window, or a tag's condition starts or stops holding — or None if none will."""
        t = self.current
        if self.last_event is None:
            return None
        candidates = [self._minute.next_change(t), self._hour.next_change(t, 24), self._hour.next_change(t),
                      self._day.next_change(t)]
        last, first = self.last_event, self.first_seen or self.last_event
        candidates += [first + rules.new_days * DAY, last + rules.dormant_days * DAY, last + self._churn_after(rules)]
        if self.last_purchase is not None and t - self.last_purchase < rules.loyal_of_weeks * 7 * DAY:
            candidates.append((t // DAY + 1) * DAY)  # the weekly blocks of ``loyal`` move every day
        later = [c for c in candidates if c is not None and t < c < math.inf]
        return min(later) if later else None

    # -- checkpoints -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        for k, default in _ADDED.items():  # slots added since the worker state's format 1
            if k not in state:
                setattr(self, k, default())


#: Slots added after worker state format 1 and their defaults (a profile from such a checkpoint gets them).
_ADDED: dict[str, Callable[[], Any]] = {
    "as_of": float, "purchase_interval_n": int, "purchase_interval_sum": float,
    "purchase_interval_last": float, "_transitions": lambda: array("d"),
    "_transitions_t": float, "_week_hours": lambda: _week_hours(), "_recent": list, "_recent_nums": lambda: array("d"),
}


def _week_hours() -> array:  # type: ignore[type-arg]
    """An empty activity histogram: ``_WEEK_HOURS`` counts, sparse while few are set (``server.domain.sparse``)."""
    return array("H")


def _week_hour(t: float) -> int:
    """The (day of week, hour of day) cell of unix time ``t``, UTC, Monday first (1 Jan 1970 was a Thursday).

    >>> divmod(_week_hour(0.0), 24), divmod(_week_hour(4 * DAY + 23 * HOUR + 59), 24)
    ((3, 0), (0, 23))
    """
    day = int(t // DAY)
    return ((day + 3) % 7) * 24 + int(t % DAY // HOUR)
_SEQUENCE_INDEX = tuple((_TYPE_INDEX[int(a)], _TYPE_INDEX[int(b)]) for a, b in SEQUENCE_PAIRS)


def _rebase(scores: array, ref: float, t: float, half_life: float,  # type: ignore[type-arg]
            first: int = 0, step: int = 1) -> float:
    """The reference time for a decayed score at ``t``: ``ref``, or ``t`` (``scores`` rescaled to it) once
    ``t`` is more than ``REBASE_HALF_LIVES`` half-lives later (so that ``2 ** ((t - ref) / half_life)``
    stays far from overflowing). ``first``, ``step``: where the scores are in ``scores`` (every other item
    of a sparse (cell, score) array)."""
    if t - ref <= REBASE_HALF_LIVES * half_life:
        return ref
    f = _decay(half_life, t - ref)
    for i in range(first, len(scores), step):
        scores[i] = scores[i] * f
    return t


_CELLS = N_TYPES * N_TYPES  # (from, to) event types
