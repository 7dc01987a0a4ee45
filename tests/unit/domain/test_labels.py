"""Unit tests of server.domain.labels.DelayedLabels: positives within the horizon, late purchases, watermark
negatives with allowed lateness, per-user and global bounds, out-of-order decisions, frozen inputs."""

from __future__ import annotations

import math

import pytest

from server.domain.labels import Decision, DelayedLabels

H = 3600.0


def q(**kw: float) -> DelayedLabels:
    args: dict[str, float] = dict(horizon_s=H, min_interval_s=300.0, allowed_lateness_s=0.0)
    args.update(kw)
    return DelayedLabels(**args)  # type: ignore[arg-type]


def test_purchase_within_horizon_is_positive() -> None:
    labels = q()
    assert labels.decide("u1", 0.0, (1.0,), 0.2)
    assert labels.decide("u1", 600.0, (2.0,), 0.4)
    assert labels.decide("u2", 0.0, (3.0,), 0.1)
    out = labels.on_purchase("u1", H)  # exactly at the horizon of the first decision: still positive
    assert out == [(Decision(0.0, (1.0,), 0.2), True), (Decision(600.0, (2.0,), 0.4), True)]
    assert labels.pending_for("u1") == 0
    assert labels.pending_for("u2") == 1
    assert len(labels) == 1


def test_purchase_only_labels_earlier_decisions() -> None:
    labels = q()
    labels.decide("u1", 100.0, (1.0,), 0.5)
    assert labels.on_purchase("u1", 100.0) == []  # not strictly after the decision
    assert labels.on_purchase("u1", 50.0) == []  # a late purchase from before the decision
    assert labels.on_purchase("nobody", 500.0) == []
    assert len(labels) == 1


def test_purchase_after_the_horizon_is_negative_if_unresolved() -> None:
    labels = q()
    labels.decide("u1", 0.0, (1.0,), 0.3)
    labels.decide("u1", 3000.0, (2.0,), 0.6)
    out = labels.on_purchase("u1", H + 1.0)  # no other event moved the watermark yet
    assert [(d.t, y) for d, y in out] == [(0.0, False), (3000.0, True)]
    assert len(labels) == 0
    assert labels.advance(10 * H) == []  # nothing is labelled twice


def test_watermark_negative_respects_allowed_lateness() -> None:
    labels = q(allowed_lateness_s=60.0)
    labels.decide("u1", 0.0, (1.0,), 0.3)
    assert labels.advance(H) == []  # watermark H - 60
    assert labels.advance(H + 59.0) == []
    assert labels.watermark == H - 1.0
    assert labels.on_purchase("u1", H - 30.0) == [(Decision(0.0, (1.0,), 0.3), True)]  # a late purchase counts

    labels.decide("u2", 10.0, (2.0,), 0.1)
    assert labels.advance(H + 69.0) == []  # watermark 9 + H: the deadline 10 + H not passed yet
    assert labels.advance(H + 70.0) == [(Decision(10.0, (2.0,), 0.1), False)]
    assert len(labels) == 0
    assert labels.on_purchase("u2", H) == []  # already resolved as negative


def test_watermark_never_moves_back() -> None:
    labels = q()
    labels.advance(10_000.0)
    labels.advance(5.0)
    assert labels.watermark == 10_000.0
    assert labels.decide("u1", 10_000.0 - H, (0.0,), 0.5) is False  # its outcome window already closed
    assert labels.decide("u1", 10_000.0 - H + 1, (0.0,), 0.5) is True
    assert labels.skipped == 0  # too late is not "skipped"


def test_min_interval_per_user() -> None:
    labels = q()
    assert labels.decide("u1", 0.0, (), 0.0)
    assert not labels.decide("u1", 299.9, (), 0.0)
    assert labels.decide("u2", 10.0, (), 0.0)  # per user
    assert labels.decide("u1", 300.0, (), 0.0)
    assert labels.pending_for("u1") == 2


@pytest.mark.parametrize(("interval", "lateness"), [(300.0, 0.0), (300.0, 60.0), (700.0, 0.0), (1.0, 0.0)])
def test_pending_per_user_is_bounded_under_a_flood(interval: float, lateness: float) -> None:
    labels = q(min_interval_s=interval, allowed_lateness_s=lateness)
    bound = math.ceil((H + lateness) / interval)
    peak = 0
    for i in range(5 * int(H)):  # one event a second for five horizons
        t = float(i)
        labels.decide("u1", t, (t,), 0.1)
        labels.advance(t)
        peak = max(peak, labels.pending_for("u1"))
    assert peak <= bound
    assert peak >= bound - 1  # the bound is reached: the test exercises it
    assert len(labels) == labels.pending_for("u1")


def test_pending_per_user_is_bounded_with_late_events() -> None:
    labels = q()
    labels.decide("u1", 10_000.0, (), 0.0)
    labels.advance(10_000.0)
    for i in range(1000):  # late events, one every second, all still inside the watermark
        t = 7000.0 + i
        labels.decide("u1", t, (), 0.0)
        labels.advance(t)
    assert labels.pending_for("u1") <= math.ceil(H / 300.0) + 1


def test_max_pending_caps_and_counts_skipped() -> None:
    labels = q(max_pending=3)
    assert all(labels.decide(f"u{i}", 0.0, (), 0.0) for i in range(3))
    assert not labels.decide("u3", 0.0, (), 0.0)
    assert not labels.decide("u4", 1.0, (), 0.0)
    assert not labels.decide("u0", 100.0, (), 0.0)  # min_interval refuses first: not counted as skipped
    assert labels.skipped == 2
    assert len(labels) == 3
    labels.on_purchase("u0", 10.0)
    assert labels.decide("u3", 11.0, (), 0.0)  # room again
    assert labels.skipped == 2


def test_out_of_order_decisions_stay_sorted() -> None:
    labels = q()
    labels.decide("u1", 2000.0, ("b",), 0.2)  # type: ignore[arg-type]
    labels.decide("u1", 1000.0, ("a",), 0.1)  # type: ignore[arg-type]
    labels.decide("u1", 3000.0, ("c",), 0.3)  # type: ignore[arg-type]
    assert labels.pending_for("u1") == 3
    assert [(d.x, y) for d, y in labels.on_purchase("u1", 2500.0)] == [(("a",), True), (("b",), True)]
    assert [(d.x, y) for d, y in labels.advance(3000.0 + H)] == [(("c",), False)]


def test_out_of_order_watermark_resolution() -> None:
    labels = q()
    labels.decide("u1", 500.0, (1.0,), 0.1)
    labels.decide("u2", 100.0, (2.0,), 0.2)
    labels.decide("u1", 50.0, (3.0,), 0.3)
    out = labels.advance(H + 100.0)
    assert sorted(d.x[0] for d, y in out if not y) == [2.0, 3.0]
    assert len(out) == 2
    assert labels.pending_for("u1") == 1


def test_decision_keeps_what_was_passed_at_decide_time() -> None:
    labels = q()
    x = (1.0, 2.0, 3.0)
    labels.decide("u1", 0.0, x, 0.42)
    labels.decide("u1", 400.0, (9.0, 9.0, 9.0), 0.99)  # later features are a new decision, not an update
    out = labels.on_purchase("u1", 200.0)
    assert out == [(Decision(0.0, (1.0, 2.0, 3.0), 0.42), True)]


def test_decision_is_frozen_against_caller_mutation() -> None:
    labels = q()
    x = [1.0, 2.0]
    labels.decide("u1", 0.0, x, 0.5)
    x[0] = 99.0
    [(d, _)] = labels.on_purchase("u1", 10.0)
    assert list(d.x) == [1.0, 2.0]


def test_drop_user() -> None:
    labels = q()
    labels.decide("u1", 0.0, (), 0.0)
    labels.decide("u1", 400.0, (), 0.0)
    labels.decide("u2", 0.0, (), 0.0)
    labels.drop_user("u1")
    labels.drop_user("nobody")
    assert labels.pending_for("u1") == 0
    assert len(labels) == 1
    assert labels.on_purchase("u1", 500.0) == []
    assert [d.t for d, _ in labels.advance(10 * H)] == [0.0]  # only u2's
    assert len(labels) == 0


def test_advance_resolves_at_most_about_limit_per_call_and_the_rest_later() -> None:
    labels = q()
    for i in range(10):
        labels.decide(f"u{i}", float(i), (float(i),), 0.5)
    first = labels.advance(10 * H, limit=4)
    assert [d.x for d, _ in first] == [(0.0,), (1.0,), (2.0,), (3.0,)]  # oldest deadlines first
    assert all(y is False for _, y in first)
    assert len(labels) == 6
    rest = labels.advance(10 * H, limit=4) + labels.advance(10 * H, limit=4)
    assert [d.x for d, _ in rest] == [(float(i),) for i in range(4, 10)]
    assert len(labels) == 0 and labels.advance(10 * H, limit=4) == []
