"""Unit tests of server.models.trainer: every message kind reaches its model, versions count messages, the
state round-trips, and what partition workers send names no user."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.domain.profile import UserProfile
from server.metrics import Metrics
from server.models.itemstats import VIEWS
from server.models.trainer import (
    ITEM,
    PROPENSITY,
    EventVector,
    ItemStats,
    Labelled,
    Trainer,
    TrainerConfig,
    UserVector,
)
from server.tools.simulate import simulate
from server.worker.partition import PartitionWorker, WorkerConfig

T = 1_700_006_400.0


def test_each_message_reaches_its_model_and_moves_the_version() -> None:
    t = Trainer(TrainerConfig(segments=3))
    f = UserProfile().features()
    x = t.propensity.vector(f, event_type=1, t=T)
    before = t.propensity.predict(x)
    t.feed(Labelled(PROPENSITY, x, before, True))
    assert t.propensity.predict(x) > before and len(t.propensity_quality) == 1 and t.version == 1
    none = (0.0, 0.0, 0.0, 0.0)
    xi = t.item_model.vector(f, [], None, (0.0, 0.0), none, none[:3], none, none[:3], "c", 10.0, 1, T)
    t.feed(Labelled(ITEM, xi, 0.5, True))  # a positive: always learnt (negatives are sampled)
    assert t.item_model.predict(xi) > 0.5 and len(t.item_quality) == 1 and t.version == 2
    t.feed(ItemStats("i1", "c1", T, VIEWS, 20.0))
    assert t.items.get("i1", T)[0] == 1.0 and t.categories.get("c1", T)[0] == 1.0
    t.feed(ItemStats("i2", "", T, VIEWS, 0.0))  # no category: only the item counts
    assert len(t.categories) == 1 and len(t.items) == 2
    centers = t.segmenter.centers
    t.feed(UserVector(t.segmenter.vector(f, 0, T)))
    assert t.segmenter.centers != centers
    t.feed(EventVector({"gap": 1.0, "velocity": 0.0, "price_vs_usual": 0.0, "units": 0.0, "new_category": 0.0,
                        "new_device": 0.0, "is_purchase": 0.0}))
    assert t.version == 6
    with pytest.raises(TypeError, match="learns no dict"):
        t.feed({"x": 1.0})  # type: ignore[arg-type]
    assert t.version == 6


def test_state_round_trips_and_a_restored_trainer_continues_identically() -> None:
    a = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    events = list(simulate(users=40, days=3, seed=5))
    for e in events[: len(events) // 2]:
        a.apply(e)
    b = Trainer(TrainerConfig())
    b.load_state(pickle.loads(pickle.dumps(a.trainer.state())))
    assert b.version == a.trainer.version > 0
    twin = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()), trainer=b)
    twin.load_state(pickle.loads(pickle.dumps(a.state())))
    for e in events[len(events) // 2:]:
        assert twin.apply(e) == a.apply(e)
    assert b.version == a.trainer.version and b.propensity.weights == a.trainer.propensity.weights
    with pytest.raises(ValueError, match="lacks"):
        Trainer(TrainerConfig()).load_state({"version": 1})


class Recording(Trainer):
    def __init__(self) -> None:
        super().__init__(TrainerConfig())
        self.sent: list[Any] = []

    def feed(self, message: Any) -> None:
        self.sent.append(message)
        super().feed(message)


def test_workers_send_the_trainer_no_user_ids() -> None:
    trainer = Recording()
    w = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()), trainer=trainer)
    events = list(simulate(users=30, days=3, seed=8))
    for e in events:
        w.apply(e)
    kinds = {type(m).__name__ for m in trainer.sent}
    assert kinds == {"Labelled", "UserVector", "EventVector", "ItemStats"}
    assert trainer.version == len(trainer.sent)
    users = {e.user_id for e in events}
    blob = pickle.dumps(trainer.sent)
    assert not any(u.encode() in blob for u in users)


def test_touches_feed_the_recommendation_candidates_and_purchases_the_ranker() -> None:
    from server.models.next_item import NextItemRanker
    from server.models.trainer import RECOMMEND

    t = Trainer(TrainerConfig())
    t.feed(ItemStats("a", "shoes", T, VIEWS, 0.0))
    t.feed(ItemStats("b", "shoes", T + 60, VIEWS, 0.0, before=(("a", "shoes"),)))
    assert [i for i, _ in t.covisits.neighbours("a")] == ["b"] and set(t.top_items.top("shoes", 5)) == {"a", "b"}
    x = NextItemRanker.vector(0, None, T, True, True, True, (0.0, 0.0, 0.0), (1.0, 0.0))
    before = t.next_item.predict(x)
    t.feed(Labelled(RECOMMEND, x, float("nan"), True))
    assert t.next_item.predict(x) > before
    assert len(t.propensity_quality) == 0 and len(t.item_quality) == 0  # the ranker keeps no rolling quality


def test_a_state_from_before_the_recommendation_models_loads_with_them_empty() -> None:
    t = Trainer(TrainerConfig())
    t.feed(ItemStats("a", "shoes", T, VIEWS, 0.0))
    old = {k: v for k, v in t.state().items() if k not in Trainer.ADDED}
    fresh = Trainer(TrainerConfig())
    fresh.load_state(old)
    assert len(fresh.items) == 1 and len(fresh.covisits) == 0 and fresh.top_items.top("", 5) == []
    with pytest.raises(ValueError, match="propensity"):
        fresh.load_state({k: v for k, v in old.items() if k != "propensity"})
