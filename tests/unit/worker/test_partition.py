"""Unit tests of server.worker.partition.Pipeline: versions, duplicates, validation errors, attributes, segments,
delayed labels and their metrics, bounded pending labels, the row and its timestamp, on_change."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.domain.errors import FailedPrecondition, InvalidArgument
from server.domain.events import Event, EventType
from server.domain.profile import DAY, FEATURE_NAMES
from server.metrics import Metrics
from server.models.trainer import TrainerConfig
from server.worker import snapshot
from server.worker.partition import PROPENSITY, PartitionWorker, WorkerConfig

T = 1_700_006_400.0
NOW = T + 100 * DAY
_ids = itertools.count()


def ev(user: str, t: float, etype: EventType = EventType.VIEW, **kw: Any) -> Event:
    kw.setdefault("event_id", f"e{next(_ids)}")
    kw.setdefault("item_id", "" if etype == EventType.SEARCH else "sku")
    return Event(user_id=user, type=etype, event_time=t, **kw)


class Harness:
    def __init__(self, **config: Any) -> None:
        self.registry = CollectorRegistry()
        self.changes: list[str] = []
        self.p = PartitionWorker(WorkerConfig(**config), Metrics(self.registry), on_change=self.changes.append)

    def track(self, e: Event) -> Any:
        return self.p.track(e, now=NOW)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def row(self, user: str) -> dict[str, Any]:
        r = self.p.row(user)
        del r["event_timestamp_us"]  # bumped on every call by design
        return r


def test_version_counts_accepted_events_and_attribute_updates() -> None:
    h = Harness()
    assert h.track(ev("u1", T)).version == 1
    assert h.track(ev("u1", T + 1, EventType.CLICK)).version == 2
    assert h.p.update_attributes("u1", 30, "f", "eu") == 3
    assert h.track(ev("u1", T - 5)).version == 4  # late events count too
    assert h.track(ev("u2", T)).version == 1
    assert h.p.update_attributes("u3", 20, "", "") == 1  # attributes alone create a user
    assert h.p.row("u1")["profile_version"] == 4


def test_duplicate_changes_nothing() -> None:
    h = Harness()
    first = ev("u1", T, EventType.PURCHASE, event_id="dup", price=10.0, category="c")
    h.track(first)
    h.track(ev("u1", T + 1))
    before, features, changes = h.row("u1"), h.p.profiles["u1"].features(), list(h.changes)
    out = h.track(ev("u1", T + 2, EventType.PURCHASE, event_id="dup", price=99.0))  # same id, any content
    assert out.duplicate
    assert out.version == 2
    assert h.row("u1") == before
    assert h.p.profiles["u1"].features() == features
    assert h.changes == changes
    assert h.sample("portrait_events_total", event_type="purchase", outcome="duplicate") == 1.0
    assert h.sample("portrait_events_total", event_type="purchase", outcome="accepted") == 1.0


def test_invalid_event_raises_and_changes_nothing() -> None:
    h = Harness()
    h.track(ev("u1", T))
    before = h.row("u1")
    with pytest.raises(InvalidArgument) as exc:
        h.track(ev("u1", T + 1, EventType.PURCHASE, event_id="bad", price=-1.0))
    assert exc.value.field == "price"
    assert exc.value.message
    with pytest.raises(InvalidArgument) as exc:
        h.track(ev("u2", T, item_id=""))
    assert exc.value.field == "item_id"
    with pytest.raises(InvalidArgument) as exc:
        h.track(ev("u2", NOW + 301))
    assert exc.value.field == "event_time"
    assert h.row("u1") == before
    assert "u2" not in h.p.profiles
    assert h.changes == ["u1"]
    assert h.sample("portrait_events_total", event_type="purchase", outcome="rejected") == 1.0
    assert h.sample("portrait_events_total", event_type="view", outcome="rejected") == 2.0
    assert not h.track(ev("u1", T + 1, event_id="bad")).duplicate  # the rejected id was not remembered


def test_check_validates_without_applying() -> None:
    h = Harness()
    err = h.p.check(ev("u1", T, EventType.SEARCH, query=""), now=NOW)
    assert err is not None and err.field == "query"
    assert h.p.check(ev("u1", T), now=NOW) is None
    assert h.p.profiles == {}
    assert h.changes == []


@pytest.mark.parametrize(("args", "field"), [
    (("", 30, "f", "eu"), "user_id"), (("u" * 129, 30, "f", "eu"), "user_id"),
    (("u1", -1, "f", "eu"), "attributes.age"), (("u1", 151, "f", "eu"), "attributes.age"),
    (("u1", 30, "g" * 33, "eu"), "attributes.gender"), (("u1", 30, "f", "r" * 129), "attributes.region"),
])
def test_update_attributes_validation(args: tuple[str, int, str, str], field: str) -> None:
    h = Harness()
    with pytest.raises(InvalidArgument) as exc:
        h.p.update_attributes(*args)
    assert exc.value.field == field
    assert h.p.profiles == {}
    assert h.changes == []


def test_update_attributes_bounds_and_row() -> None:
    h = Harness()
    h.p.update_attributes("u" * 128, 0, "g" * 32, "r" * 128)
    assert h.p.update_attributes("u1", 150, "m", "us-east") == 1
    h.track(ev("u1", T))
    row = h.p.row("u1")
    assert (row["age"], row["gender"], row["region"]) == (150, "m", "us-east")
    assert h.p.update_attributes("u1", 42, "", "") == 3
    assert (h.p.row("u1")["gender"], h.p.row("u1")["region"]) == ("", "")
    assert h.changes == ["u" * 128, "u1", "u1", "u1"]


def test_segment_sizes_count_users_with_events() -> None:
    h = Harness(trainer=TrainerConfig(segments=4))
    for i in range(40):
        for j in range(i % 5 + 1):
            h.track(ev(f"u{i}", T + j * 600, EventType.PURCHASE if j % 3 == 2 else EventType.VIEW, price=float(i)))
    h.p.update_attributes("attrs-only", 40, "", "")
    assert sum(h.p.segment_sizes) == 40
    assert all(n >= 0 for n in h.p.segment_sizes)
    assert h.p.profiles["attrs-only"].segment == -1
    for i in range(40):
        assert 0 <= h.p.row(f"u{i}")["segment"] < 4


def test_purchase_resolves_earlier_decisions_as_positive() -> None:
    h = Harness()
    h.track(ev("u1", T))
    assert h.p.labels.pending_for("u1") == 1
    h.track(ev("u1", T + 600, EventType.PURCHASE, price=5.0))
    assert h.sample("portrait_labels_total", model=PROPENSITY, label="positive") == 1.0
    assert h.sample("portrait_labels_total", model=PROPENSITY, label="negative") == 0.0
    assert h.p.labels.pending_for("u1") == 1  # the purchase's own decision waits for a later one
    assert len(h.p.trainer.propensity_quality) == 1


def test_watermark_resolves_negatives() -> None:
    h = Harness(propensity_horizon_s=3600.0, allowed_lateness_s=60.0)
    h.track(ev("u1", T))
    h.track(ev("u2", T + 3600 + 59))
    assert h.sample("portrait_labels_total", model=PROPENSITY, label="negative") == 0.0
    h.track(ev("u2", T + 3600 + 60, EventType.CLICK))
    assert h.sample("portrait_labels_total", model=PROPENSITY, label="negative") == 1.0
    assert h.p.labels.pending_for("u1") == 0


def test_pending_labels_bounded_under_a_flood_for_one_user() -> None:
    h = Harness(propensity_horizon_s=3600.0, decision_interval_s=300.0, allowed_lateness_s=60.0)
    bound = math.ceil((3600 + 60) / 300)
    for i in range(3 * 3600 // 2):
        h.track(ev("u1", T + 2 * i, EventType.CLICK))
        assert len(h.p.labels) <= bound
    assert len(h.p.labels) >= bound - 1


def test_pending_labels_bounded_under_a_flood_of_late_events() -> None:
    h = Harness(propensity_horizon_s=3600.0, decision_interval_s=300.0, allowed_lateness_s=60.0)
    h.track(ev("u1", T + 3000))
    for i in range(500):
        h.track(ev("u1", T + i, EventType.CLICK))
    assert len(h.p.labels) <= math.ceil((3600 + 60) / 300)


def test_row_has_every_field() -> None:
    h = Harness()
    h.track(ev("u1", T, category="shoes", session_id="s"))
    row = h.p.row("u1")
    expected = {*FEATURE_NAMES, "tags", "top_categories", "profile_version", "segment", "purchase_propensity",
                "event_timestamp_us", "age", "gender", "region", "user_id"}
    assert expected <= set(row)
    assert row["user_id"] == "u1"
    assert row["top_categories"] == ["shoes"]
    assert row["tags"] == ["new"]
    assert 0.0 < row["purchase_propensity"] < 1.0
    assert row["event_timestamp_us"] == int(T * 1_000_000)


def test_row_timestamp_strictly_increases_with_late_events() -> None:
    h = Harness()
    h.track(ev("u1", T + 100))
    ts1 = h.p.row("u1")["event_timestamp_us"]
    h.track(ev("u1", T + 50))  # late: as-of time unchanged
    ts2 = h.p.row("u1")["event_timestamp_us"]
    assert ts1 == int((T + 100) * 1_000_000)
    assert ts2 > ts1
    h.track(ev("u1", T + 200))
    assert h.p.row("u1")["event_timestamp_us"] == int((T + 200) * 1_000_000)
    h.track(ev("u2", T))
    assert h.p.row("u2")["event_timestamp_us"] == int(T * 1_000_000)  # per user


def test_on_change_once_per_accepted_event() -> None:
    h = Harness()
    h.track(ev("u1", T, event_id="a"))
    h.track(ev("u2", T, event_id="b"))
    h.track(ev("u1", T + 1, event_id="a"))  # duplicate
    with pytest.raises(InvalidArgument):
        h.track(ev("u1", T, event_id=""))
    h.track(ev("u1", T - 10, event_id="c"))
    assert h.changes == ["u1", "u2", "u1"]


def test_erase_drops_every_trace_of_the_user_and_suppresses_later_events() -> None:

    h = Harness(item_decision_interval_s=0.0, decision_interval_s=0.0)
    for k in range(6):
        h.track(ev("victim", T + k, EventType.ADD_TO_CART, item_id=f"i{k}", category="shoes", price=10.0,
                   event_id=f"victim-e{k}"))
        h.track(ev("other", T + k, EventType.VIEW, item_id="i1", category="shoes"))
    p = h.p
    assert p.labels.pending_for("victim") and p.items.history.get("victim", "i1") is not None
    sizes = sum(p.segment_sizes)
    assert p.erase("victim", offset=3, at=5.0)
    assert "victim" not in p.profiles and p.labels.pending_for("victim") == 0
    assert p.items.history.get("victim", "i1") is None and p.risk.user_risk("victim", T) == 0.0
    assert sum(p.segment_sizes) == sizes - 1 and "victim-e0" not in p.dedupe
    blob = snapshot.dumps(snapshot.take(p, offset=0))
    assert b"victim" not in blob and b"other" in blob  # nothing left anywhere in the checkpointed state
    out = h.track(ev("victim", T + 10, event_id="victim-e0"))  # even a resend of an old id: suppressed
    assert out.suppressed and not out.duplicate and "victim" not in p.profiles
    assert h.sample("portrait_events_total", event_type="view", outcome="suppressed") == 1.0
    with pytest.raises(FailedPrecondition):
        p.update_attributes("victim", 30, "", "")
    assert not p.erase("victim")  # idempotent: nothing held any more
    assert p.unsuppress(p.erasures.digest("victim"), at=6.0)
    assert h.track(ev("victim", T + 11)).version == 1  # a new, empty profile


def test_erase_digest_finds_the_user_without_its_id() -> None:
    h = Harness()
    h.track(ev("victim", T))
    d = h.p.erasures.digest("victim")
    assert h.p.erase_digest(d, 7, 1.0) == "victim" and "victim" not in h.p.profiles
    assert h.p.erase_digest(d, 8, 2.0) is None and h.p.erasures.pending[d][0] == 8


def test_a_jump_of_event_time_resolves_the_backlog_a_few_labels_per_event() -> None:
    p = PartitionWorker(WorkerConfig(labels_per_event=2, decision_interval_s=0.0), Metrics(CollectorRegistry()))
    t = 1_700_000_000.0
    for i in range(8):  # eight users, one decision each
        p.apply(Event(f"e{i}", f"u{i}", EventType.VIEW, t + i, item_id="a"), score=True)
    assert len(p.labels) == 8
    later = t + 10 * 86_400.0  # every deadline passed at once
    pending = []
    for i in range(5):
        p.apply(Event(f"x{i}", "other", EventType.SEARCH, later + i, query="q"), score=False)
        pending.append(sum(p.labels.pending_for(f"u{k}") for k in range(8)))
    assert pending[0] == 8 - 2 and pending[-1] == 0  # spread over the events, all resolved in the end
    assert len(p.trainer.propensity_quality) >= 8  # and every one of them learnt
