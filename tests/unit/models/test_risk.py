"""The risk signal: event features, the detector on simulated traffic with injected anomalies, the decayed
per-user risk, bounded per-user state, and its wiring into the pipeline (profile row, suspicious tag, metric)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.domain.events import Event, EventType
from server.domain.profile import HOUR, UserProfile
from server.metrics import Metrics
from server.models.risk import RISK_INPUTS, RiskDetector, UserRisk, inputs
from server.tools.simulate import simulate
from server.worker.partition import PartitionWorker, WorkerConfig

T = 1_700_006_400.0


class Risk:
    """The shared detector and the per-user state together, in the order the partition worker uses them:
    inputs from the user's state, score with the detector, the detector learns, the user's state records."""

    def __init__(self, threshold: float = 0.94, half_life_s: float = 3600.0) -> None:
        self.detector = RiskDetector()
        self.users = UserRisk(threshold, half_life_s)
        self.threshold, self.window_size = threshold, self.detector.window_size
        self.user_risk, self.user_state, self._users = self.users.user_risk, self.users.user_state, self.users._users

    vector = staticmethod(inputs)

    def observe(self, e: Event, f: dict[str, float], previous_t: float | None) -> float:
        x = self.users.vector(e, f, previous_t)
        score = self.detector.score(x)
        self.detector.learn(x)
        self.users.record(e, score)
        return score

    def suspicious(self, user: str, t: float) -> bool:
        return self.user_risk(user, t) >= self.threshold
_ids = itertools.count()


def ev(user: str, t: float, etype: EventType = EventType.VIEW, **kw: Any) -> Event:
    kw.setdefault("item_id", "i")
    return Event(f"k{next(_ids)}", user, etype, t, **kw)


def test_vector_is_scaled_into_the_unit_cube() -> None:
    r = Risk()
    first = r.vector(ev("u", T, price=10.0, category="c", context={"device": "phone"}), {}, None, (), ())
    assert list(first) == list(RISK_INPUTS)
    assert first["gap"] == 1.0  # a first event: as far apart as it gets
    assert first["new_category"] == 0.0 and first["new_device"] == 0.0  # nothing known to compare with
    f = {"avg_viewed_price_30d": 10.0, "views_1h": 5000.0}
    odd = r.vector(ev("u", T + 1, EventType.PURCHASE, price=1e6, quantity=10_000, category="new",
                      context={"device": "bot"}), f, T, ("c",), ("phone",))
    assert odd == {"gap": pytest.approx(0.0467, abs=1e-3), "velocity": 1.0, "price_vs_usual": 1.0, "units": 1.0,
                   "new_category": 1.0, "new_device": 1.0, "is_purchase": 1.0}
    usual = r.vector(ev("u", T + 60, price=10.0, category="c", context={"device": "phone"}), f, T, ("c",),
                     ("phone",))
    assert usual["price_vs_usual"] == 0.0 and usual["new_category"] == 0.0 and usual["new_device"] == 0.0
    assert all(0.0 <= v <= 1.0 for v in (*first.values(), *odd.values(), *usual.values()))


@pytest.fixture(scope="module")
def trained() -> tuple[Risk, dict[str, UserProfile], list[float], float]:
    """A detector after a week of simulated traffic, with the profiles it saw and the scores it gave."""
    risk = Risk()
    profiles: dict[str, UserProfile] = {}
    scores = []
    t = 0.0
    for e in simulate(users=400, days=7, seed=4):
        p = profiles.setdefault(e.user_id, UserProfile())
        previous = p.last_event
        p.update(e)
        scores.append(risk.observe(e, p.features(), previous))
        t = float(e.event_time)  # type: ignore[arg-type]
    return risk, profiles, scores[risk.window_size:], t


def test_ordinary_traffic_stays_under_the_threshold_and_anomalies_cross_it(
        trained: tuple[Risk, dict[str, UserProfile], list[float], float]) -> None:
    risk, profiles, scores, t = trained
    above = sum(s >= risk.threshold for s in scores) / len(scores)
    assert above < 0.002  # at most 1 ordinary event in 500 is flagged
    assert sorted(scores)[len(scores) // 2] < 0.6

    def observe(user: str, e: Event) -> float:
        p = profiles[user]
        previous = p.last_event
        p.update(e)
        return risk.observe(e, p.features(), previous)

    buyers = [u for u, p in profiles.items() if p.lifetime_events >= 20][:3]
    assert len(buyers) == 3
    # an expensive bulk purchase on a new device in a new category; then an account on a fresh device
    # buying a luxury item; then one far above the user's usual price
    anomalies = [
        ev(buyers[0], t + 10, EventType.PURCHASE, price=5000.0, quantity=20, category="zz", context={"device": "x"}),
        ev(buyers[1], t + 20, EventType.PURCHASE, price=900.0, category="yy", context={"device": "bot"}),
        ev(buyers[2], t + 30, EventType.PURCHASE, price=20_000.0, quantity=5),
    ]
    got = [observe(u, e) for u, e in zip(buyers, anomalies)]
    assert all(s >= risk.threshold for s in got), got
    assert all(risk.suspicious(u, t + 30) for u in buyers)


def test_user_risk_is_the_decayed_maximum_and_state_is_bounded() -> None:
    r = Risk(half_life_s=HOUR)
    r._users["u"] = (0.8, T, 0)  # as if an event at T scored 0.8 (no categories or devices yet)
    assert r.user_risk("u", T + HOUR) == pytest.approx(0.4)
    assert r.user_risk("u", T - 10) == 0.8  # asked before it: no decay
    assert r.user_risk("nobody", T) == 0.0
    p = UserProfile()
    for i in range(30):
        e = ev("u", T + HOUR + i, category=f"c{i}", context={"device": f"d{i}"})
        p.update(e)
        r.observe(e, p.features(), None)
    _, _, categories, devices = r.user_state("u")  # type: ignore[misc]
    assert categories == tuple(f"c{i}" for i in range(22, 30))
    assert devices == ("d26", "d27", "d28", "d29")
    # scores are 0 while the detector's first reference window fills, so the risk decayed from 0.8
    assert r.user_risk("u", T + 2 * HOUR) == pytest.approx(0.2, rel=0.01)


def test_per_user_state_is_one_flat_tuple_with_shared_categories() -> None:
    r = Risk()
    for u in ("u", "v"):
        for i in range(3):
            r.observe(ev(u, T + i, category="".join(["c", str(i)]), context={"device": "".join(["d", u])}), {}, None)
    assert r._users["u"][2:] == (3, "c0", "c1", "c2", "du")  # (risk, risk_t, n categories, *categories, *devices)
    assert r.user_state("u")[2:] == (("c0", "c1", "c2"), ("du",))  # type: ignore[index]
    assert r._users["u"][3] is r._users["v"][3]  # category names are shared between users
    assert r.user_state("nobody") is None


@pytest.mark.parametrize(("threshold", "tagged"), [(0.0, True), (1.01, False)])
def test_pipeline_row_carries_risk_and_the_suspicious_tag(threshold: float, tagged: bool) -> None:
    registry = CollectorRegistry()
    p = PartitionWorker(WorkerConfig(risk_threshold=threshold), Metrics(registry))
    for i in range(5):
        p.apply(ev("u", T + i, EventType.ADD_TO_CART, category="c"))
    row = p.row("u")
    assert row["risk_score"] == p.risk.user_risk("u", T + 4)
    assert ("suspicious" in row["tags"]) is tagged
    assert row["tags"] == sorted(row["tags"])
    assert registry.get_sample_value("portrait_risk_score_count") == 5.0
