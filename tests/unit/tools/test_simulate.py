"""Tests for server.tools.simulate: determinism, order, validity, and the structure the data must have."""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from server.domain.events import Event, EventType, validate
from server.domain.units import DAY
from server.tools.eventfile import read_events
from server.tools.simulate import START, Shop, ShopConfig, simulate, simulate_to_file

FAR_FUTURE = 4_000_000_000.0
USERS, DAYS, DRIFT_DAY = 2000, 14, 7
ITEM_EVENTS = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.FAVORITE)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(USERS, DAYS, drift_day=DRIFT_DAY, seed=11)


@pytest.fixture(scope="module")
def events(shop: Shop) -> list[Event]:
    return list(shop.events())


def purchase_times(events: list[Event]) -> tuple[dict[str, list[float]], dict[tuple[str, str], list[float]]]:
    by_user: dict[str, list[float]] = defaultdict(list)
    by_item: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.type == EventType.PURCHASE:
            assert e.event_time is not None
            by_user[e.user_id].append(e.event_time)
            by_item[(e.user_id, e.item_id)].append(e.event_time)
    return by_user, by_item


def bought_within(times: list[float], t: float, horizon: float) -> bool:
    """Is there a purchase in (t, t + horizon]?"""
    i = bisect.bisect_right(times, t)
    return i < len(times) and times[i] <= t + horizon


def rate(flags: list[bool]) -> float:
    assert flags, "no events to measure"
    return sum(flags) / len(flags)


def time(e: Event) -> float:
    assert e.event_time is not None
    return e.event_time


# --------------------------------------------------------------------------- mechanics


def test_same_seed_same_events_other_seed_differs() -> None:
    a = list(simulate(users=60, days=3, drift_day=1, seed=5))
    b = list(simulate(users=60, days=3, drift_day=1, seed=5))
    c = list(simulate(users=60, days=3, drift_day=1, seed=6))
    assert len(a) > 500
    assert a == b
    assert [(e.user_id, e.item_id, e.event_time) for e in a] != [(e.user_id, e.item_id, e.event_time) for e in c]


def test_event_ids_unique_and_sequential(events: list[Event]) -> None:
    assert [e.event_id for e in events] == [f"s11-{n}" for n in range(len(events))]


def test_events_are_in_time_order_within_the_simulated_days(events: list[Event]) -> None:
    times = [time(e) for e in events]
    assert times == sorted(times)
    assert times[0] >= START and times[-1] < START + DAYS * DAY
    days = Counter(int((t - START) // DAY) for t in times)
    assert sorted(days) == list(range(DAYS))


def test_every_event_is_valid(events: list[Event]) -> None:
    errors = [(e, err) for e in events if (err := validate(e, now=FAR_FUTURE)) is not None]
    assert errors == []


def test_all_event_types_and_sane_fields(events: list[Event]) -> None:
    counts = Counter(EventType(e.type) for e in events)
    assert set(counts) == set(EventType)
    assert counts[EventType.VIEW] > counts[EventType.CLICK] > counts[EventType.ADD_TO_CART] > counts[
        EventType.PURCHASE
    ]
    for e in events:
        assert e.session_id.startswith(e.user_id + "-")
        if e.type in (EventType.ADD_TO_CART, EventType.PURCHASE, EventType.REMOVE_FROM_CART):
            assert 1 <= e.quantity <= 3
        if e.type == EventType.SEARCH:
            assert e.query and not e.item_id
        else:
            assert e.item_id.startswith(f"i-{e.category}-") and e.price > 0


def test_catalog_structure() -> None:
    shop = Shop(users=3, days=1, seed=2)
    assert len(shop.categories) == 20 and shop.categories[3] == "c03"
    assert len(shop.catalog) == 20 * 50
    assert len({it.item_id for it in shop.catalog}) == len(shop.catalog)
    medians = []
    for cat in shop.categories:
        prices = sorted(it.price for it in shop.catalog if it.category == cat)
        assert len(prices) == 50 and prices[0] > 0
        medians.append(prices[25])
    assert max(medians) / min(medians) > 3  # categories have different price levels


def test_user_truth_is_plausible(shop: Shop) -> None:
    users = shop.users
    assert sum(u.drifted for u in users) == USERS // 2
    assert 0.2 < sum(u.bargain_hunter for u in users) / len(users) < 0.4
    for u in users:
        assert 1 <= len(u.interests) <= 5 and math.isclose(sum(u.interests.values()), 1.0)
        assert not set(u.interests) & set(u.drift_interests)
    activity = sorted(u.activity for u in users)
    assert activity[-len(users) // 100] > 5 * activity[len(users) // 2]  # heavy-tailed


def test_users_behave_the_same_whatever_the_population() -> None:
    def key(e: Event) -> tuple[object, ...]:
        return (e.user_id, e.type, e.event_time, e.item_id, e.price, e.quantity, e.session_id, e.query)

    small = [key(e) for e in simulate(users=5, days=3, seed=9)]
    large = [key(e) for e in simulate(users=12, days=3, seed=9) if int(e.user_id[1:]) < 5]
    assert small and small == large


def test_events_before_the_drift_do_not_depend_on_it() -> None:
    drift_time = START + 2 * DAY
    plain = list(simulate(users=80, days=4, seed=4))
    drifted = list(simulate(users=80, days=4, drift_day=2, seed=4))
    before = [e for e in plain if time(e) < drift_time]
    assert len(before) > 100
    assert drifted[: len(before)] == before
    assert drifted[len(before) :] != plain[len(before) :]


def test_bad_arguments_are_rejected() -> None:
    for kwargs in ({"users": -1, "days": 1}, {"users": 1, "days": -1}, {"users": 1, "days": 1, "drift_day": -2},
                   {"users": 1, "days": 1, "drift_share": 1.5}):
        with pytest.raises(ValueError):
            Shop(**kwargs)  # type: ignore[arg-type]
    assert list(simulate(users=0, days=3)) == [] and list(simulate(users=5, days=0)) == []


def test_simulate_to_file_roundtrips(tmp_path: Path) -> None:
    path = tmp_path / "sim.parquet"
    n = simulate_to_file(path, users=30, days=2, drift_day=1, seed=3)
    back = list(read_events(path))
    assert n == len(back) > 0
    assert back == list(simulate(users=30, days=2, drift_day=1, seed=3))


def test_promotion_days_discount_prices_and_are_marked(events: list[Event], shop: Shop) -> None:
    """A session keeps the promotion status of the day it started on (also past midnight)."""
    assert shop.promo_days, "the default config has a weekly promotion"
    list_price = {it.item_id: it.price for it in shop.catalog}
    session_start: dict[str, float] = {}
    by_promo: Counter[bool] = Counter()
    for e in events:
        start = session_start.setdefault(e.session_id, time(e))
        promo = int((start - START) // DAY) in shop.promo_days
        assert e.context == ({"promo": "1"} if promo else {})
        if e.item_id:
            factor = 1.0 - shop.config.promo_discount if promo else 1.0
            assert e.price == round(list_price[e.item_id] * factor, 2)
        by_promo[promo] += 1
    assert by_promo[True] > 0 and by_promo[False] > 0


def test_a_mid_size_shop_yields_a_plausible_volume() -> None:
    n = sum(1 for _ in simulate(users=200, days=7, seed=1))
    assert 5_000 < n < 50_000


# --------------------------------------------------------------------------- structure of the data


def test_drift_moves_the_category_mix_of_drifted_users(events: list[Event], shop: Shop) -> None:
    assert shop.drift_time is not None
    truth = {u.user_id: u for u in shop.users}
    share: dict[tuple[bool, bool], list[bool]] = defaultdict(list)  # (drifted, after) -> view in old interests?
    for e in events:
        if e.type == EventType.VIEW:
            u = truth[e.user_id]
            share[(u.drifted, time(e) >= shop.drift_time)].append(e.category in u.interests)
    assert rate(share[(True, False)]) > 0.6 and rate(share[(False, False)]) > 0.6
    assert rate(share[(True, True)]) < 0.3  # drifted users left their old categories
    assert abs(rate(share[(False, True)]) - rate(share[(False, False)])) < 0.05  # the others did not

    # also visible without the ground truth: how far each user's own category mix moves
    mixes: dict[tuple[str, bool], Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.type == EventType.VIEW:
            mixes[(e.user_id, time(e) >= shop.drift_time)][e.category] += 1
    moved: dict[bool, list[float]] = defaultdict(list)
    for u in shop.users:
        before, after = mixes[(u.user_id, False)], mixes[(u.user_id, True)]
        nb, na = sum(before.values()), sum(after.values())
        if nb >= 20 and na >= 20:
            tv = 0.5 * sum(abs(before[c] / nb - after[c] / na) for c in shop.categories)
            moved[u.drifted].append(tv)
    mean_drifted = sum(moved[True]) / len(moved[True])
    mean_stable = sum(moved[False]) / len(moved[False])
    assert mean_drifted > 0.7 and mean_stable < 0.35


def test_positive_rates_are_realistic(events: list[Event]) -> None:
    by_user, by_item = purchase_times(events)
    user_level = [bought_within(by_user[e.user_id], time(e), 3600.0) for e in events if e.type != EventType.PURCHASE]
    item_level = [
        bought_within(by_item[(e.user_id, e.item_id)], time(e), DAY) for e in events if e.type in ITEM_EVENTS
    ]
    assert 0.01 <= rate(user_level) <= 0.06
    assert 0.005 <= rate(item_level) <= 0.05
    sessions = {e.session_id for e in events}
    converted = {e.session_id for e in events if e.type == EventType.PURCHASE}
    assert 0.005 <= len(converted) / len(sessions) <= 0.05


def _user_level(events: list[Event], feature_type: EventType, until: float) -> tuple[float, float]:
    """P(purchase within 1 h | the user did `feature_type` in the last hour) and P(... | not), before `until`."""
    by_user, _ = purchase_times(events)
    last: dict[str, float] = {}
    with_f: list[bool] = []
    without: list[bool] = []
    for e in events:
        t = time(e)
        if t >= until:
            break
        if e.type == feature_type:
            last[e.user_id] = t
        if e.type == EventType.PURCHASE:
            continue
        label = bought_within(by_user[e.user_id], t, 3600.0)
        (with_f if t - last.get(e.user_id, -math.inf) <= 3600.0 else without).append(label)
    return rate(with_f), rate(without)


def test_recent_carts_signal_a_purchase_within_the_hour(events: list[Event], shop: Shop) -> None:
    assert shop.drift_time is not None
    carted, not_carted = _user_level(events, EventType.ADD_TO_CART, until=shop.drift_time)
    assert carted > 4 * not_carted


def test_other_user_level_signals(events: list[Event], shop: Shop) -> None:
    assert shop.drift_time is not None
    by_user, _ = purchase_times(events)
    depth: Counter[str] = Counter()
    by_depth: dict[bool, list[bool]] = defaultdict(list)
    by_promo: dict[bool, list[bool]] = defaultdict(list)
    history: dict[bool, list[bool]] = defaultdict(list)
    bought_before: set[str] = set()
    for e in events:
        t = time(e)
        if t >= shop.drift_time:
            break
        depth[e.session_id] += 1
        if e.type == EventType.PURCHASE:
            bought_before.add(e.user_id)
            continue
        label = bought_within(by_user[e.user_id], t, 3600.0)
        by_depth[depth[e.session_id] >= 8].append(label)
        by_promo[bool(e.context)].append(label)
        history[e.user_id in bought_before].append(label)
    assert rate(by_depth[True]) > 2 * rate(by_depth[False])  # deep sessions buy more
    assert rate(by_promo[True]) > 1.5 * rate(by_promo[False])  # promotions sell
    assert rate(history[True]) > 1.5 * rate(history[False])  # buyers buy again


def test_item_level_signals(events: list[Event], shop: Shop) -> None:
    assert shop.drift_time is not None
    _, by_item = purchase_times(events)
    truth = {u.user_id: u for u in shop.users}
    by_type: dict[EventType, list[bool]] = defaultdict(list)
    by_interest: dict[bool, list[bool]] = defaultdict(list)
    seen: Counter[tuple[str, str]] = Counter()
    by_seen: dict[bool, list[bool]] = defaultdict(list)
    for e in events:
        t = time(e)
        if t >= shop.drift_time:
            break
        if e.type not in ITEM_EVENTS:
            continue
        key = (e.user_id, e.item_id)
        label = bought_within(by_item[key], t, DAY)
        by_type[EventType(e.type)].append(label)
        if e.type == EventType.VIEW:
            by_interest[e.category in truth[e.user_id].interests].append(label)
            by_seen[seen[key] > 0].append(label)
            seen[key] += 1
    assert rate(by_type[EventType.ADD_TO_CART]) > 10 * rate(by_type[EventType.VIEW])
    assert rate(by_type[EventType.CLICK]) > 1.3 * rate(by_type[EventType.VIEW])
    assert rate(by_interest[True]) > 3 * rate(by_interest[False])
    assert rate(by_seen[True]) > 2 * rate(by_seen[False])


def test_bargain_hunters_buy_cheaper_until_the_drift_flips_it(events: list[Event], shop: Shop) -> None:
    assert shop.drift_time is not None
    truth = {u.user_id: u for u in shop.users}
    median = {}
    for cat in shop.categories:
        prices = sorted(it.price for it in shop.catalog if it.category == cat)
        median[cat] = prices[len(prices) // 2]
    rel: dict[tuple[bool, bool], list[float]] = defaultdict(list)  # (bargain drifted user, after) -> log price/median
    for e in events:
        u = truth[e.user_id]
        if e.type == EventType.PURCHASE and u.bargain_hunter and (u.drifted or time(e) < shop.drift_time):
            rel[(u.drifted, time(e) >= shop.drift_time)].append(math.log(e.price / median[e.category]))
    before = rel[(False, False)] + rel[(True, False)]
    after = rel[(True, True)]
    assert sum(before) / len(before) < -0.2  # bargain hunters buy below the category median
    assert sum(after) / len(after) > 0.1  # drifted ones now buy above it


def test_drift_changes_what_precedes_a_purchase(events: list[Event], shop: Shop) -> None:
    """Drifted users stop buying what they cart and start buying what they favorite; the others do not change."""
    assert shop.drift_time is not None
    _, by_item = purchase_times(events)
    drifted = {u.user_id for u in shop.users if u.drifted}
    labels: dict[tuple[bool, bool, EventType], list[bool]] = defaultdict(list)
    purchases: Counter[tuple[bool, bool]] = Counter()
    for e in events:
        after = time(e) >= shop.drift_time
        group = e.user_id in drifted
        if e.type == EventType.PURCHASE:
            purchases[(group, after)] += 1
        if e.type in (EventType.ADD_TO_CART, EventType.FAVORITE):
            label = bought_within(by_item[(e.user_id, e.item_id)], time(e), DAY)
            labels[(group, after, EventType(e.type))].append(label)
    cart, fav = EventType.ADD_TO_CART, EventType.FAVORITE
    assert rate(labels[(True, True, cart)]) < 0.6 * rate(labels[(True, False, cart)])
    assert rate(labels[(True, True, fav)]) > 1.8 * rate(labels[(True, False, fav)])
    assert rate(labels[(True, True, fav)]) > rate(labels[(True, True, cart)])
    assert rate(labels[(True, False, cart)]) > rate(labels[(True, False, fav)])
    for t in (cart, fav):
        assert abs(rate(labels[(False, True, t)]) - rate(labels[(False, False, t)])) < 0.1
    # ... while the drifted users' purchase volume changes about as much as the others' (promotion days vary)
    drifted_change = purchases[(True, True)] / purchases[(True, False)]
    stable_change = purchases[(False, True)] / purchases[(False, False)]
    assert 0.6 < drifted_change / stable_change < 1.6


def test_drift_makes_promotions_drive_drifted_users(events: list[Event], shop: Shop) -> None:
    assert shop.drift_time is not None
    drifted = {u.user_id for u in shop.users if u.drifted}
    per_day: Counter[tuple[bool, int]] = Counter()
    for e in events:
        if e.type == EventType.PURCHASE:
            per_day[(e.user_id in drifted, int((time(e) - START) // DAY))] += 1

    def promo_lift(group: bool, days: range) -> float:
        promo = [per_day[(group, d)] for d in days if d in shop.promo_days]
        other = [per_day[(group, d)] for d in days if d not in shop.promo_days]
        assert promo and other
        return (sum(promo) / len(promo)) / (sum(other) / len(other))

    after = range(DRIFT_DAY, DAYS)
    assert promo_lift(True, after) > 1.5 * promo_lift(False, after)


def test_config_shapes_the_shop() -> None:
    shop = Shop(30, 2, seed=8, config=ShopConfig(categories=5, items_per_category=4, search_prob=0.0))
    assert len(shop.catalog) == 20
    events = list(shop.events())
    assert events and {e.category for e in events} <= {"c00", "c01", "c02", "c03", "c04"}
    assert EventType.SEARCH not in {e.type for e in events}
