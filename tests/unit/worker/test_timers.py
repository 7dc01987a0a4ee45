"""Profiles that stay true as time passes: event-time timers in the partition worker (server/worker/timers.py,
PartitionWorker.fire/advance), the tags time alone changes (churn_risk, dormant, loyal, new), and that
timers survive a checkpoint and fire the same way on a replay."""

from __future__ import annotations

import itertools
from typing import Any

from prometheus_client import CollectorRegistry

from server.domain.events import Event, EventType
from server.domain.units import DAY, HOUR, MINUTE
from server.metrics import Metrics
from server.tools.simulate import simulate
from server.worker import snapshot
from server.worker.partition import PartitionWorker, WorkerConfig
from server.worker.timers import Timers

T = 1_700_006_400.0  # a UTC midnight
_ids = itertools.count()


def ev(user: str, t: float, etype: EventType = EventType.VIEW, **kw: Any) -> Event:
    kw.setdefault("item_id", "i1")
    kw.setdefault("category", "c1")
    return Event(f"t{next(_ids)}", user, etype, t, **kw)


class Recorder:
    def __init__(self, **config: Any) -> None:
        self.registry = CollectorRegistry()
        self.changed: list[str] = []
        self.w = PartitionWorker(WorkerConfig(**config), Metrics(self.registry), on_change=self.changed.append)


def _active_then_silent(w: PartitionWorker, user: str, start: float) -> None:
    """Six days of views, carts and a purchase, ending at ``start + 5 days + 2 h``."""
    for day in range(6):
        for k in range(3):
            w.apply(ev(user, start + day * DAY + k * HOUR, EventType.VIEW, price=10.0))
        w.apply(ev(user, start + day * DAY + 2 * HOUR, EventType.ADD_TO_CART, price=10.0))
    w.apply(ev(user, start + 5 * DAY + 2 * HOUR + 60, EventType.PURCHASE, price=10.0))


def test_a_user_silent_for_two_days_reads_zero_windows_and_churn_risk_later() -> None:
    r = Recorder()
    w = r.w
    _active_then_silent(w, "quiet", T)
    last = T + 5 * DAY + 2 * HOUR + 60
    assert w.row("quiet")["views_24h"] > 0  # as of its last event
    w.apply(ev("o0", last + DAY + 120))  # one day on: a daily shopper is not at risk yet
    for _ in range(20):
        w.apply(ev("o0", last + DAY + 121))
    assert "churn_risk" not in w.row("quiet")["tags"] and w.row("quiet")["views_24h"] == 0.0
    r.changed.clear()
    # other users move event time on: two days after its last event
    for k in range(50):
        w.apply(ev(f"o{k}", last + 2 * DAY + 120 + k))
    assert "quiet" in r.changed  # re-materialized without an event of its own
    row = w.row("quiet")
    assert row["views_1h"] == 0.0 and row["views_24h"] == 0.0 and row["carts_24h"] == 0.0
    assert row["views_7d"] > 0 and row["as_of_ts"] >= last + 2 * DAY and row["last_event_ts"] == last
    assert "churn_risk" in row["tags"] and "new" not in row["tags"]  # first seen over 7 days before
    w.apply(ev("o0", last + 15 * DAY))  # silent 15 days: still at risk, no longer new
    for _ in range(60):  # 2 timers per event: the 50 other users' are due too
        w.apply(ev("o1", last + 15 * DAY + 1))
    row = w.row("quiet")
    assert "churn_risk" in row["tags"] and "new" not in row["tags"] and "dormant" not in row["tags"]
    assert row["views_7d"] == 0.0 and row["views_30d"] > 0
    for k in range(40):
        w.apply(ev("o2", last + 31 * DAY + k))
    row = w.row("quiet")
    assert "dormant" in row["tags"] and "churn_risk" not in row["tags"]
    assert r.registry.get_sample_value("portrait_timers_fired_total") > 0


def test_churn_risk_follows_the_users_own_cadence() -> None:
    w = Recorder().w
    for week in range(4):  # a weekly shopper: active on 4 days a week apart
        w.apply(ev("weekly", T + week * 7 * DAY))
    last = T + 3 * 7 * DAY
    w.apply(ev("once", last))  # one event on one day: never active

    def tags_at(t: float) -> list[str]:
        for _ in range(20):
            w.apply(ev("clock", t))
        return list(w.row("weekly")["tags"])

    assert "churn_risk" not in tags_at(last + 10 * DAY)  # 10 silent days: usual for a weekly shopper
    assert "churn_risk" in tags_at(last + 15 * DAY)  # beyond 2 x 7 days
    assert "churn_risk" not in w.row("once")["tags"] and "dormant" not in w.row("once")["tags"]


def test_loyal_needs_purchases_in_three_of_the_last_four_weeks() -> None:
    w = Recorder().w
    for week in (0, 1, 2):
        w.apply(ev("fan", T + week * 7 * DAY + HOUR, EventType.PURCHASE, price=5.0))
    assert "loyal" in w.row("fan")["tags"]
    w.apply(ev("fan2", T + HOUR, EventType.PURCHASE, price=5.0))
    w.apply(ev("fan2", T + 2 * HOUR, EventType.PURCHASE, price=5.0))
    assert "loyal" not in w.row("fan2")["tags"]  # two purchases in one week
    for k in range(30):  # time passes: the first two purchase weeks leave the last four
        w.apply(ev("clock", T + 4 * 7 * DAY + 2 * DAY + k))
    assert "loyal" not in w.row("fan")["tags"]


def test_the_watermark_moves_by_the_wall_clock_only_through_advance() -> None:
    r = Recorder()
    w = r.w
    w.apply(ev("u", T, price=1.0))
    assert w.row("u")["views_1h"] == 1.0
    assert w.fire(100) == 0  # event time alone: nothing is due
    assert w.advance(T + 61 * MINUTE, limit=100) == 1  # no traffic, 61 min later (1 min allowed lateness)
    row = w.row("u")
    assert row["views_1h"] == 0.0 and row["views_24h"] == 1.0 and row["as_of_ts"] == T + 60 * MINUTE
    assert r.registry.get_sample_value("portrait_timers_fired_total") == 1.0
    assert len(w.timers) == 1  # the next change: the 24h window


def test_a_burst_of_expiries_is_spread_over_events() -> None:
    w = Recorder(timers_per_event=4).w
    for k in range(40):
        w.apply(ev(f"u{k}", T + k))
    w.apply(ev("late", T + 2 * HOUR))  # every 1h window expired at once: 40 timers due
    fired_now = 40 - sum(1 for k in range(40) if w.row(f"u{k}")["views_1h"] == 1.0)
    assert fired_now == 4  # this event did only its share
    for _ in range(9):
        w.apply(ev("late", T + 2 * HOUR + 1))
    assert all(w.row(f"u{k}")["views_1h"] == 0.0 for k in range(40))



def test_events_fire_no_timers_while_their_rows_wait_to_be_written() -> None:
    w = Recorder(timers_per_event=4).w
    for k in range(40):
        w.apply(ev(f"u{k}", T + k))
    backlog = [True]
    w.timers_held = lambda: backlog[0]  # the server: a flush's worth of timer rows still waits
    for _ in range(5):
        w.apply(ev("late", T + 2 * HOUR))
    assert len(w.timers) == 41 and all(w.row(f"u{k}")["views_1h"] == 1.0 for k in range(40))
    backlog[0] = False
    w.apply(ev("late", T + 2 * HOUR + 1))
    assert sum(1 for k in range(40) if w.row(f"u{k}")["views_1h"] == 0.0) == 4  # firing resumes at its share

def _fired(events: list[Event]) -> list[tuple[str, float]]:
    w = Recorder().w
    out: list[tuple[str, float]] = []
    original = w.fire

    def fire(limit: int) -> int:
        before = w.timers.pending()
        n = original(limit)
        out.extend(sorted((u, t) for u, t in before.items() if u not in w.timers.pending()
                          or w.timers.pending()[u] != t))
        return n

    w.fire = fire  # type: ignore[method-assign]
    for e in events:
        w.apply(e)
    return out


def test_a_replay_of_the_same_events_fires_the_same_timers() -> None:
    events = list(simulate(users=30, days=4, seed=3))
    first, second = _fired(events), _fired(list(events))
    assert first == second and len(first) > 30


def test_pending_timers_survive_a_checkpoint() -> None:
    w = Recorder().w
    events = list(simulate(users=40, days=3, seed=6))
    for e in events[: len(events) // 2]:
        w.apply(e)
    pending = w.timers.pending()
    assert len(pending) > 10
    restored = Recorder().w
    snapshot.restore(restored, snapshot.loads(snapshot.dumps(snapshot.take(w, offset=0))))
    assert restored.timers.pending() == pending and restored.watermark == w.watermark
    for e in events[len(events) // 2:]:
        w.apply(e)
        restored.apply(e)
    assert restored.timers.pending() == w.timers.pending()
    assert all(restored.row(u) == w.row(u) for u in w.profiles)


def test_timers_keep_one_entry_per_user_and_an_erased_user_has_none() -> None:
    t = Timers()
    for k in range(5000):
        t.set("u", float(k))  # moved 5,000 times
    assert len(t) == 1 and len(t._heap) <= 2 * len(t) + 1025 and t.pending() == {"u": 4999.0}
    w = Recorder().w
    w.apply(ev("gone", T))
    assert "gone" in w.timers.pending()
    w.erase("gone")
    assert "gone" not in w.timers.pending()
