"""No feature or model output can become inf or NaN, whatever valid events arrive (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from server.domain.events import MAX_AMOUNT, MAX_PRICE, Event, EventType
from server.metrics import Metrics
from server.worker.partition import PartitionWorker, WorkerConfig

T0 = 1_700_000_000.0
INT32_MAX = 2**31 - 1

prices = st.one_of(st.just(0.0), st.just(MAX_PRICE), st.floats(0.0, MAX_PRICE, allow_nan=False, allow_infinity=False),
                   st.floats(0.0, 1e-300, allow_subnormal=True))
quantities = st.one_of(st.just(0), st.just(1), st.just(INT32_MAX), st.integers(0, INT32_MAX))


@st.composite
def events(draw: Any) -> list[Event]:
    n = draw(st.integers(1, 40))
    out = []
    t = T0
    for i in range(n):
        etype = draw(st.sampled_from(list(EventType)))
        price = draw(prices)
        qty = draw(quantities)
        units = max(1, qty) if etype == EventType.PURCHASE else qty
        if price * units > MAX_AMOUNT:  # the documented limit; beyond it the event is rejected (tested apart)
            qty = int(MAX_AMOUNT // price) if price > 0 else qty
        t += draw(st.one_of(st.just(0.0), st.floats(0.0, 40 * 86_400.0), st.floats(-3600.0, 0.0)))
        out.append(Event(f"e{i}", draw(st.sampled_from(["u1", "u2"])), etype, t,
                         item_id="" if etype == EventType.SEARCH else draw(st.sampled_from(["a", "b", "c"])),
                         category=draw(st.sampled_from(["", "x", "y"])), price=price, quantity=qty,
                         query="q" if etype == EventType.SEARCH else ""))
    return out


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_every_feature_and_score_stays_finite(evs: list[Event]) -> None:
    p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    applied = 0
    for e in evs:
        if p.check(e, now=e.event_time) is None:  # type: ignore[arg-type]
            out = p.apply(e)
            applied += 1
            assert out.duplicate or math.isfinite(out.propensity)
    assert applied > 0
    for user in ("u1", "u2"):
        if user not in p.profiles:
            continue
        row = p.row(user)
        bad = {k: v for k, v in row.items() if not _finite(v)}
        assert not bad, bad
        scores = [s for _, s in p.score(user, [("a", "x", MAX_PRICE), ("b", "", 0.0), ("z", "y", 1e-300)])]
        assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)


def test_prices_beyond_the_documented_maximum_are_rejected() -> None:
    p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    over = Event("e1", "u", EventType.PURCHASE, T0, item_id="a", price=MAX_PRICE * 1.5)
    assert p.check(over, now=T0).field == "price"  # type: ignore[union-attr]
    line = Event("e2", "u", EventType.PURCHASE, T0, item_id="a", price=MAX_PRICE, quantity=1001)
    assert p.check(line, now=T0).field == "quantity"  # type: ignore[union-attr]
    ok = Event("e3", "u", EventType.PURCHASE, T0, item_id="a", price=MAX_PRICE, quantity=1000)
    assert p.check(ok, now=T0) is None
    assert "u" not in p.profiles  # checking changes nothing
