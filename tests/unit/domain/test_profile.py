"""Unit tests of server.domain.profile.UserProfile: window counts at tile boundaries, scalar features, sessions,
preferred hour, prices, decayed category affinity, rule tags (TagRules) and out-of-order arrival."""

from __future__ import annotations

import itertools
import pickle
import random
import sys
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.events import Event, EventType
from server.domain.profile import (
    COUNT_FEATURES,
    CYCLE_FEATURES,
    FEATURE_NAMES,
    MAX_CATEGORIES,
    N_TYPES,
    RECENT_EVENTS,
    SCALAR_FEATURES,
    SEQUENCE_FEATURES,
    TagRules,
    UserProfile,
)
from server.domain.units import DAY, HOUR, MINUTE

T0 = 19676 * DAY  # 2023-11-15T00:00:00Z: aligned to a day, an hour and a minute
_ids = itertools.count()


def ev(etype: EventType, t: float, **kw: object) -> Event:
    item = "" if etype == EventType.SEARCH else "i1"
    query = "q" if etype == EventType.SEARCH else ""
    return Event(f"e{next(_ids)}", "u1", etype, t, item_id=item, query=query, **kw)  # type: ignore[arg-type]


def profile(*events: Event) -> UserProfile:
    p = UserProfile()
    for e in events:
        p.update(e)
    return p


V, C, CART, RM, FAV, BUY, S = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.REMOVE_FROM_CART,
                                EventType.FAVORITE, EventType.PURCHASE, EventType.SEARCH)


def test_every_feature_name_is_present_and_unique() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == (len(COUNT_FEATURES) + len(SCALAR_FEATURES)
                                                             + len(CYCLE_FEATURES) + len(SEQUENCE_FEATURES))
    for p in (UserProfile(), profile(ev(V, T0, price=3.0), ev(BUY, T0 + 5, price=2.0))):
        f = p.features()
        assert set(f) == set(FEATURE_NAMES)
        assert all(isinstance(v, float) for v in f.values())
    assert len(COUNT_FEATURES) == 4 * len(EventType)
    assert {"views_1h", "searches_30d", "remove_from_carts_7d", "carts_24h", "favorites_1h"} <= set(COUNT_FEATURES)


def test_empty_profile_defaults() -> None:
    f = UserProfile().features()
    assert all(f[n] == 0.0 for n in COUNT_FEATURES)
    assert f["preferred_hour"] == -1.0
    assert (f["first_seen_ts"], f["last_event_ts"], f["last_purchase_ts"], f["avg_order_value"]) == (0, 0, 0, 0)
    assert UserProfile().tags() == []
    assert UserProfile().top_categories() == []


@pytest.mark.parametrize(("window", "width"), [("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY)])
def test_window_counts_at_the_boundary(window: str, width: int) -> None:
    inside = profile(ev(V, T0), ev(C, T0 + width - 1)).features()
    outside = profile(ev(V, T0), ev(C, T0 + width)).features()
    assert inside[f"views_{window}"] == 1.0
    assert outside[f"views_{window}"] == 0.0
    assert inside[f"clicks_{window}"] == outside[f"clicks_{window}"] == 1.0
    assert outside["lifetime_events"] == 2.0


def test_windows_are_exact_to_a_tile() -> None:
    # An event late in its minute leaves the 1 h window with its whole minute tile: 3541 s later.
    assert profile(ev(V, T0 + 59), ev(C, T0 + HOUR)).features()["views_1h"] == 0.0
    # ... and the 24 h window moves by hour tiles: out 23 h 00 min 01 s later, in 23 h 59 min 59 s later.
    assert profile(ev(V, T0 + HOUR - 1), ev(C, T0 + DAY)).features()["views_24h"] == 0.0
    assert profile(ev(V, T0 + HOUR), ev(C, T0 + DAY + HOUR - 1)).features()["views_24h"] == 1.0


def test_counts_by_type_and_window() -> None:
    p = profile(ev(V, T0), ev(V, T0 + 10 * DAY), ev(CART, T0 + 29 * DAY), ev(S, T0 + 30 * DAY - HOUR),
                ev(FAV, T0 + 30 * DAY - 1))
    f = p.features()
    assert (f["views_30d"], f["views_7d"], f["carts_7d"], f["carts_24h"], f["searches_24h"], f["favorites_1h"]) == (
        2.0, 0.0, 1.0, 1.0, 1.0, 1.0)
    assert p.counts() == {n: f[n] for n in COUNT_FEATURES}


def test_spend_lifetime_and_timestamps() -> None:
    p = profile(
        ev(BUY, T0, price=100.0, quantity=2),  # 200, leaves 30 d
        ev(V, T0 + 10 * DAY, price=50.0),
        ev(BUY, T0 + 31 * DAY, price=10.0, quantity=0),  # counts as 1 unit: 10; in 30 d, not in 7 d
        ev(BUY, T0 + 40 * DAY, price=30.0, quantity=3),  # 90
        ev(C, T0 + 40 * DAY + 60),
    )
    f = p.features()
    assert f["spend_7d"] == 90.0
    assert f["spend_30d"] == 100.0
    assert f["lifetime_spend"] == 300.0
    assert f["lifetime_purchases"] == 3.0
    assert f["lifetime_events"] == 5.0
    assert f["avg_order_value"] == 100.0
    assert (f["first_seen_ts"], f["last_event_ts"], f["last_purchase_ts"]) == (T0, T0 + 40 * DAY + 60, T0 + 40 * DAY)
    assert p.updated_at == T0 + 40 * DAY + 60


def test_sessions_by_session_id() -> None:
    sids = ["a", "a", "b", "b", "b", "c"]
    p = profile(*(ev(V, T0 + i * 10 * HOUR, session_id=s) for i, s in enumerate(sids)))  # gaps don't matter
    assert p.features()["sessions_7d"] == 3.0


def test_sessions_by_gap_without_session_id() -> None:
    gaps_min = [0, 10, 40, 71, 200]  # 30 min apart exactly: same session; 31 min: new; 129 min: new
    assert profile(*(ev(V, T0 + m * MINUTE) for m in gaps_min)).features()["sessions_7d"] == 3.0
    mixed = profile(ev(V, T0, session_id="a"), ev(V, T0 + 60), ev(V, T0 + 120, session_id="a"))
    # an id-less event between two events of session "a" starts a session; "a" is not counted twice
    assert mixed.features()["sessions_7d"] == 2.0


def test_sessions_older_than_7d_drop_out() -> None:
    p = profile(ev(V, T0, session_id="a"), ev(V, T0 + 7 * DAY, session_id="b"), ev(V, T0 + 7 * DAY + 1,
                                                                                  session_id="c"))
    assert p.features()["sessions_7d"] == 2.0


def test_sessions_by_id_do_not_depend_on_arrival_order() -> None:
    in_order = profile(ev(V, T0, session_id="a"), ev(V, T0 + 90, session_id="a"), ev(V, T0 + 120, session_id="b"))
    late = profile(ev(V, T0, session_id="a"), ev(V, T0 + 120, session_id="b"), ev(V, T0 + 90, session_id="a"))
    assert in_order.features()["sessions_7d"] == 2.0
    assert late.features()["sessions_7d"] == 2.0


def test_conversion_rate_30d() -> None:
    p = profile(*(ev(V, T0 + i) for i in range(4)), ev(BUY, T0 + 10, price=1.0), ev(V, T0 - 31 * DAY))
    assert p.features()["conversion_rate_30d"] == 0.25
    assert profile(ev(BUY, T0, price=1.0)).features()["conversion_rate_30d"] == 0.0  # no views: no division


def test_preferred_hour_is_decayed() -> None:
    old = [ev(V, T0 - 60 * DAY + 3 * HOUR + i) for i in range(10)]  # 03:00 UTC, two months ago
    recent = [ev(C, T0 + 20 * HOUR + i) for i in range(3)]  # 20:00 UTC now
    assert profile(*old).features()["preferred_hour"] == 3.0
    assert profile(*old, *recent).features()["preferred_hour"] == 20.0
    assert profile(*recent, *old).features()["preferred_hour"] == 20.0  # late old events are decayed too


def test_average_viewed_and_purchased_prices() -> None:
    p = profile(
        ev(V, T0, price=10.0), ev(V, T0 + 1, price=20.0), ev(V, T0 + 2, price=30.0), ev(V, T0 + 3, price=0.0),
        ev(BUY, T0 + 4, price=5.0, quantity=2), ev(BUY, T0 + 5, price=15.0), ev(BUY, T0 + 6, price=0.0),
        ev(V, T0 - 40 * DAY, price=1000.0),  # outside 30 d
    )
    f = p.features()
    assert f["avg_viewed_price_30d"] == 20.0  # zero prices are unknown, not free
    assert f["avg_purchased_price_30d"] == 10.0  # per unit price, per purchase
    assert profile(ev(C, T0)).features()["avg_viewed_price_30d"] == 0.0


def test_top_categories_recent_interest_overtakes_old_heavy_interest() -> None:
    old = [ev(BUY, T0 + i, category="tv", price=1.0) for i in range(10)]  # affinity 50
    later = T0 + 35 * DAY  # five half-lives: tv ~ 50/32 = 1.56
    recent = [ev(V, later, category="books"), ev(V, later + 1, category="books"), ev(CART, later + 2,
                                                                                   category="games")]
    assert profile(*old, ev(V, T0 + 20, category="books")).top_categories() == ["tv", "books"]
    assert profile(*old, *recent).top_categories() == ["games", "books", "tv"]
    assert profile(*recent, *old).top_categories() == ["games", "books", "tv"]  # old events arriving late
    assert profile(*old, *recent).top_categories(n=1) == ["games"]


def test_top_categories_ignore_non_positive_affinity() -> None:
    p = profile(ev(RM, T0, category="socks"), ev(V, T0 + 1, category="hats"))
    assert p.top_categories() == ["hats"]
    assert p.category_count() == 2


def test_categories_are_bounded_keeping_the_strongest() -> None:
    p = profile(*(ev(V, T0 + i * HOUR, category=f"c{i:02d}") for i in range(MAX_CATEGORIES + 8)))
    assert p.category_count() == MAX_CATEGORIES
    assert p.top_categories(3) == ["c39", "c38", "c37"]
    assert set(p.top_categories(100)) == {f"c{i:02d}" for i in range(8, MAX_CATEGORIES + 8)}


def test_bounded_categories_still_admit_a_new_strong_interest() -> None:
    held = [ev(BUY, T0 + i, category=f"c{i:02d}", price=1.0) for i in range(MAX_CATEGORIES)]  # 5 each
    new = [ev(V, T0 + 100 + i, category="new") for i in range(10)]  # 10 in total
    assert profile(*held, *new).top_categories(1) == ["new"]


# -- tags --------------------------------------------------------------------------------------------
def test_tag_new() -> None:
    assert "new" in profile(ev(V, T0), ev(V, T0 + 7 * DAY - 1)).tags()
    assert "new" not in profile(ev(V, T0), ev(V, T0 + 7 * DAY)).tags()
    assert "new" in profile(ev(V, T0), ev(V, T0 + 8 * DAY)).tags(rules=TagRules(new_days=9))


def test_tag_active() -> None:
    two = [ev(V, T0 + i, session_id=s) for i, s in enumerate("ab")]
    assert "active" not in profile(*two).tags()
    assert "active" in profile(*two, ev(V, T0 + 5, session_id="c")).tags()
    assert "active" in profile(*two).tags(rules=TagRules(active_sessions_7d=2))


def test_tag_high_value() -> None:
    assert "high_value" in profile(ev(BUY, T0, price=250.0, quantity=2)).tags()
    assert "high_value" not in profile(ev(BUY, T0, price=499.99)).tags()
    assert "high_value" not in profile(ev(BUY, T0, price=1000.0), ev(V, T0 + 31 * DAY)).tags()  # out of 30 d


def test_tag_bargain_hunter() -> None:
    views = [ev(V, T0 + i, price=10.0) for i in range(3)]
    cheap = [ev(BUY, T0 + 10 + i, price=7.0) for i in range(2)]
    assert "bargain_hunter" in profile(*views, *cheap).tags()
    assert "bargain_hunter" not in profile(*views, *cheap[:1]).tags()  # one purchase is not a pattern
    assert "bargain_hunter" not in profile(*views, *cheap, ev(BUY, T0 + 20, price=13.0)).tags()  # avg 9 > 7
    assert "bargain_hunter" not in profile(*cheap).tags()  # no viewed prices to compare with
    assert "bargain_hunter" not in profile(*views, *cheap).tags(rules=TagRules(bargain_price_ratio=0.5))


def test_tag_cart_abandoner() -> None:
    carts = [ev(CART, T0 + i) for i in range(2)]
    assert "cart_abandoner" in profile(*carts).tags()
    assert "cart_abandoner" not in profile(*carts[:1]).tags()
    assert "cart_abandoner" not in profile(*carts, ev(BUY, T0 + 60, price=1.0)).tags()
    assert "cart_abandoner" in profile(ev(BUY, T0 - 8 * DAY, price=1.0), *carts).tags()  # purchase out of 7 d


def test_tags_sorted_and_use_given_features() -> None:
    p = profile(*(ev(CART, T0 + i, session_id=str(i)) for i in range(3)))
    assert p.tags() == ["active", "cart_abandoner", "new"]
    f = dict(p.features(), sessions_7d=0.0)
    assert p.tags(f) == ["cart_abandoner", "new"]


# -- arrival order -----------------------------------------------------------------------------------
def test_out_of_order_events_give_the_same_window_features() -> None:
    rng = random.Random(7)
    types = [V, C, CART, RM, FAV, BUY, S]
    events = [ev(rng.choice(types), T0 + rng.randrange(0, 40 * DAY), price=float(rng.randrange(1, 50)),
                 quantity=rng.randrange(0, 3), category=rng.choice("abc")) for _ in range(300)]
    ordered = profile(*sorted(events, key=lambda e: e.event_time or 0.0)).features()
    rng.shuffle(events)
    shuffled = profile(*events).features()
    # sessions and the behaviour sequence follow arrival order; the purchase cycle counts in-order purchases
    order_dependent = {"sessions_7d", "preferred_hour", *SEQUENCE_FEATURES, *CYCLE_FEATURES[:3]}
    for name in FEATURE_NAMES:
        if name not in order_dependent:
            assert shuffled[name] == pytest.approx(ordered[name]), name


def test_late_purchase_keeps_latest_timestamps() -> None:
    p = profile(ev(BUY, T0 + 100, price=5.0), ev(V, T0 + 200), ev(BUY, T0 + 50, price=5.0), ev(V, T0 + 10))
    f = p.features()
    assert (f["first_seen_ts"], f["last_event_ts"], f["last_purchase_ts"]) == (T0 + 10, T0 + 200, T0 + 100)
    assert f["purchases_1h"] == 2.0


# -- checkpoints and memory --------------------------------------------------------------------------
def _mixed_events(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    types = [V, C, CART, RM, FAV, BUY, S]
    return [ev(rng.choice(types), T0 + i * 7 * MINUTE + rng.randrange(0, 300), price=float(rng.randrange(0, 50)),
               category=rng.choice(["a", "b", "c", ""]), session_id=f"s{i // 6}") for i in range(n)]


def test_pickle_round_trip_continues_identically() -> None:
    events = _mixed_events(120, seed=3)
    p = profile(*events[:60])
    q = pickle.loads(pickle.dumps(p))
    for e in events[60:]:
        p.update(e)
        q.update(e)
        assert q.features() == p.features()
        assert (q.top_categories(), q.category_count(), q.tags()) == (p.top_categories(), p.category_count(), p.tags())


def test_decayed_scores_rebase_instead_of_overflowing() -> None:
    # 3 years of one event a week: 2 ** (3 * 52 / 2) would overflow a float without rebasing
    p = profile(*(ev(V, T0 + w * 7 * DAY + (w % 2) * 5 * HOUR, category=f"c{w % 3}") for w in range(3 * 52)))
    assert max(p._hours) < 2.0**70 and max(p._affinity_w) < 2.0**70
    assert p.features()["preferred_hour"] == 5.0  # the odd weeks, the latest of them: at 05:00
    assert p.top_categories(1) == ["c2"]  # 155 % 3: the latest week's category


def test_category_names_are_shared_between_profiles() -> None:
    a = profile(ev(V, T0, category="".join(["sho", "es"])))
    b = profile(ev(V, T0, category="".join(["sh", "oes"])))
    assert a.top_categories()[0] is b.top_categories()[0]


def _deep_size(o: object, seen: set[int]) -> int:
    if id(o) in seen:
        return 0
    seen.add(id(o))
    n = sys.getsizeof(o)
    if isinstance(o, dict):
        n += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in o.items())
    elif isinstance(o, (list, tuple)):
        n += sum(_deep_size(v, seen) for v in o)
    elif not isinstance(o, (str, int, float, array, type(None))):
        n += sum(_deep_size(getattr(o, s), seen) for s in getattr(type(o), "__slots__", ()))
    return n


EXPLORER_SLOTS = ("_week_hours", "_recent", "_recent_nums")


def test_profile_state_is_compact() -> None:
    """A user with a few hours of activity (40 events in 40 minute tiles, 7 sessions, 3 categories) holds
    under 4 KB of objects (the dict-of-float-lists layout held 8.2 KB; category names are shared), plus
    under 1.5 KB for what only the explorer reads: the activity histogram (168 uint16) and the last 20
    events (times, types, prices in one array; item ids and categories are shared names)."""
    p = profile(*_mixed_events(40, seed=5))
    names = {id(s) for s in p._recent}  # shared between users: not this profile's cost
    explorer = sum(_deep_size(getattr(p, s), set(names)) for s in EXPLORER_SLOTS)
    assert explorer < 1500
    assert _deep_size(p, names) - explorer < 4000


def test_purchase_cycle_counts_occasions_not_order_lines() -> None:
    p = profile(ev(BUY, T0, price=5.0), ev(BUY, T0 + 60, price=5.0),  # one occasion, two order lines
                ev(BUY, T0 + 4 * DAY, price=5.0), ev(BUY, T0 + 10 * DAY, price=5.0))
    f = p.features()
    assert f["purchase_interval_mean_days"] == pytest.approx((4 * DAY - 60 + 6 * DAY) / 2 / DAY)
    assert f["purchase_interval_last_days"] == 6.0
    assert f["next_purchase_expected_ts"] == pytest.approx(T0 + 10 * DAY + (10 * DAY - 60) / 2)
    one = profile(ev(BUY, T0, price=5.0)).features()
    assert one["purchase_interval_mean_days"] == one["next_purchase_expected_ts"] == 0.0  # unknown yet


def test_behaviour_sequence_is_smoothed_and_follows_consecutive_events() -> None:
    fresh = UserProfile().sequence()
    assert set(fresh) == set(SEQUENCE_FEATURES) and all(v == pytest.approx(1 / 7) for v in fresh.values())
    p = profile(*(e for k in range(10) for e in (ev(V, T0 + 600 * k), ev(CART, T0 + 600 * k + 10),
                                                  ev(BUY, T0 + 600 * k + 20))))
    s = p.sequence()
    assert s["p_view_to_cart"] > 0.8 and s["p_cart_to_purchase"] > 0.8  # every view was followed by a cart
    assert s["p_view_to_purchase"] < 0.05 and s["p_view_to_view"] < 0.05
    late = profile(ev(V, T0), ev(BUY, T0 + 20), ev(CART, T0 + 10))  # a late cart: not a step of the sequence
    assert late.sequence()["p_view_to_cart"] < late.sequence()["p_view_to_purchase"]


def test_next_change_is_the_earliest_time_a_served_value_moves() -> None:
    p = profile(ev(V, T0 + 30))
    assert p.next_change() == T0 + HOUR  # the minute tile leaves the 1h window
    p.as_of = T0 + HOUR
    assert p.next_change() == T0 + DAY  # then the hour tile leaves the 24h window
    p.as_of = T0 + 7 * DAY  # the 7d window changed now
    assert p.next_change() == T0 + 30 + 7 * DAY  # `new` ends 7 days after the first event
    p.as_of = T0 + 30 + 7 * DAY
    assert p.next_change() == T0 + 30 * DAY  # the 30d window
    p.as_of = T0 + 30 * DAY
    assert p.next_change() == T0 + 30 + 30 * DAY  # dormant 30 days after the last event
    p.as_of = T0 + 31 * DAY
    assert p.next_change() is None and UserProfile().next_change() is None


def test_activity_counts_every_event_by_weekday_and_hour_utc() -> None:
    # T0 is Wednesday 2023-11-15 00:00 UTC
    p = profile(ev(V, T0 + 9 * HOUR), ev(C, T0 + 9 * HOUR + 5), ev(BUY, T0 + DAY + 23 * HOUR, price=3.0),
                ev(V, T0 - 28 * DAY + 9 * HOUR))  # late and four weeks old: still counted (not decayed)
    grid = p.activity()
    assert grid[2][9] == 3 and grid[3][23] == 1 and sum(map(sum, grid)) == 4


def test_recent_events_keep_the_latest_by_event_time_newest_first() -> None:
    p = profile(*(Event(f"r{i}", "u1", V, T0 + i, item_id=f"i{i}", category="shoes", price=float(i))
                  for i in range(0, 40, 2)))
    p.update(Event("late", "u1", BUY, T0 + 15, item_id="late", category="bags", price=9.5))  # inside the kept span
    p.update(ev(S, T0 - 100))  # older than every kept event: dropped
    events = p.recent_events()
    assert len(events) == RECENT_EVENTS
    assert [e[0] for e in events] == sorted((e[0] for e in events), reverse=True)
    assert (T0 + 15, BUY, "late", "bags", 9.5) in events
    assert events[-1][2] == "i2"  # i0 made room; the search was older than all


def test_profiles_from_checkpoints_without_the_explorer_state_load_empty() -> None:
    p = profile(ev(V, T0))
    state = p.__getstate__()
    for k in ("_week_hours", "_recent", "_recent_nums"):
        del state[k]
    q = UserProfile.__new__(UserProfile)
    q.__setstate__(state)
    assert q.recent_events() == [] and sum(map(sum, q.activity())) == 0
    q.update(ev(C, T0 + 60))
    assert len(q.recent_events()) == 1 and q.features() == pickle.loads(pickle.dumps(q)).features()


@given(st.lists(st.integers(0, 7 * 24 - 1), max_size=400))
def test_the_activity_histogram_counts_like_a_plain_grid_sparse_or_dense(cells: list[int]) -> None:
    from server.domain import sparse
    from server.domain.profile import _week_hours

    h, plain = _week_hours(), [0] * (7 * 24)
    for k in cells:
        sparse.add(h, k, 1, 7 * 24, cap=2**16 - 1)
        plain[k] += 1
    assert list(sparse.dense(h, 7 * 24)) == plain
    # sparse (4 bytes per cell seen) until that is no smaller than the dense grid (336 bytes)
    assert (len(h) == 7 * 24) == (len(set(cells)) >= 84)


def test_a_dense_activity_histogram_from_a_checkpoint_keeps_counting() -> None:
    p = profile(ev(V, T0 + 9 * HOUR))
    state = p.__getstate__()
    state["_week_hours"] = array("H", bytes(2 * 7 * 24))  # the layout before the sparse histogram
    state["_week_hours"][2 * 24 + 9] = 5
    q = UserProfile.__new__(UserProfile)
    q.__setstate__(pickle.loads(pickle.dumps(state)))
    q.update(ev(C, T0 + 9 * HOUR + 60))
    assert q.activity()[2][9] == 6 and sum(map(sum, q.activity())) == 6


@given(st.lists(st.tuples(st.integers(0, N_TYPES * N_TYPES - 1), st.floats(0.0, 1.0)), max_size=200))
def test_transition_counts_equal_a_dense_grid_sparse_or_dense(adds: list[tuple[int, float]]) -> None:
    from server.domain import sparse

    s, plain = array("d"), [0.0] * (N_TYPES * N_TYPES)
    for cell, inc in adds:
        sparse.add(s, cell, inc, N_TYPES * N_TYPES)
        plain[cell] += inc
    assert list(sparse.dense(s, N_TYPES * N_TYPES)) == plain  # the same floats, bit for bit
    # sparse while fewer than half of the cells were touched (a dense grid is 49 floats)
    assert (len(s) == N_TYPES * N_TYPES) == (len({c for c, _ in adds}) >= 25)


def test_a_dense_transition_grid_from_a_checkpoint_keeps_counting() -> None:
    events = [ev(V, T0), ev(C, T0 + 60), ev(V, T0 + 120), ev(BUY, T0 + 180, price=2.0)]
    sparse = profile(*events)
    state = profile(*events[:2]).__getstate__()
    dense = array("d", bytes(8 * N_TYPES * N_TYPES))  # the layout before the sparse grid
    for i in range(0, len(state["_transitions"]), 2):
        dense[int(state["_transitions"][i])] = state["_transitions"][i + 1]
    state["_transitions"] = dense
    q = UserProfile.__new__(UserProfile)
    q.__setstate__(pickle.loads(pickle.dumps(state)))
    for e in events[2:]:
        q.update(e)
    assert len(q._transitions) == N_TYPES * N_TYPES and q.sequence() == sparse.sequence()
