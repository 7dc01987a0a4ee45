"""The trainer in a process of its own (server.models.remote), against a real child process: it learns what a
worker feeds in order, publishes, is restarted after kill -9 from the models held + the messages after them, and
ends with exactly the models of an in-process trainer fed the same messages; its checkpoint state loads into an
in-process trainer with the same result."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from server.domain.errors import ResourceExhausted
from server.domain.events import Event, EventType
from server.metrics import Metrics
from server.models.remote import RemoteTrainer, TrainerProcess, publication
from server.models.trainer import PROPENSITY, UNLEARNT, ItemStats, Labelled, Trainer, TrainerConfig
from server.tools.simulate import simulate
from server.worker.core import ProfileCore
from server.worker.materialize import Materializer
from server.worker.partition import PartitionWorker, WorkerConfig


@pytest.fixture(scope="module")
def messages() -> list[Any]:
    """What a partition worker feeds its trainer for a simulated stream (every kind of message)."""
    sent: list[Any] = []
    w = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    w.trainer.feed = sent.append  # type: ignore[method-assign]
    for e in simulate(users=150, days=3, seed=5):
        w.apply(e)
    assert {type(m).__name__ for m in sent} >= {"Labelled", "UserVector", "EventVector", "ItemStats"}
    return sent


def weights(t: Trainer, messages: list[Any]) -> dict[str, Any]:
    """What every learnt model answers for the inputs of the stream, and the versions: equal only if the models
    learnt the same messages in the same order (floats compared exactly)."""
    out: dict[str, Any] = {"versions": dict(t.versions), "centers": t.segmenter.centers}
    for m in messages[::7]:
        kind = type(m).__name__
        if kind == "Labelled":
            model = {"propensity": t.propensity, "item": t.item_model, "recommend": t.next_item}[m.model]
            out.setdefault(m.model, []).append(model.predict(m.x))
        elif kind == "EventVector":
            out.setdefault("risk", []).append(t.risk.score(m.x))
        elif kind == "UserVector":
            out.setdefault("segments", []).append(t.segmenter.predict(m.x))
    assert {"propensity", "item", "risk", "segments"} <= set(out)
    return out


def in_process(messages: list[Any]) -> Trainer:
    t = Trainer(TrainerConfig())
    for m in messages:
        t.feed(m)
    return t


async def feed_through_child(messages: list[Any], kill_at: tuple[int, ...] = ()) -> tuple[RemoteTrainer, int]:
    remote = RemoteTrainer(TrainerConfig(), publish_s=0.05)
    proc = TrainerProcess(remote)
    await proc.start()
    try:
        for i, m in enumerate(messages):
            remote.feed(m)
            if i in kill_at:
                await proc.drain(timeout_s=0.2)  # let it learn and publish part of the way, then kill it
                pid = proc.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                async with asyncio.timeout(30):
                    while proc.pid == pid or proc.restarts < kill_at.index(i) + 1:
                        await asyncio.sleep(0.01)
            elif i % 500 == 0:
                await asyncio.sleep(0)  # the send loop runs between the worker's batches
        assert await proc.drain(timeout_s=60)
        return remote, proc.restarts
    finally:
        await proc.close()


async def test_the_child_learns_what_the_worker_feeds_and_publishes_it(messages: list[Any]) -> None:
    remote, restarts = await feed_through_child(messages)
    expected = in_process(messages)
    assert restarts == 0 and not remote.unlearnt
    assert weights(remote, messages) == weights(expected, messages)
    assert remote.version == expected.version and remote.staleness_s() == 0.0
    # the worker's own share (item statistics, quality windows) was learnt here, in order
    assert remote.top_items.top("", 5) == expected.top_items.top("", 5)
    assert len(remote.propensity_quality) == len(expected.propensity_quality) > 0


async def test_a_killed_child_is_restarted_and_ends_with_the_same_models(messages: list[Any]) -> None:
    n = len(messages)
    remote, restarts = await feed_through_child(messages, kill_at=(n // 3, 2 * n // 3))
    assert restarts == 2
    assert weights(remote, messages) == weights(in_process(messages), messages)


async def test_its_checkpoint_state_loads_into_an_in_process_trainer(messages: list[Any]) -> None:
    half = len(messages) // 2
    remote = RemoteTrainer(TrainerConfig())
    for m in messages[:half]:
        remote.feed(m)  # no child: nothing learnt, everything but item statistics waits
    state = pickle.loads(pickle.dumps(remote.state()))
    assert len(state[UNLEARNT]) == sum(type(m) is not ItemStats for m in messages[:half]) > 0
    t = Trainer(TrainerConfig())
    t.load_state(state)
    for m in messages[half:]:
        t.feed(m)
    assert weights(t, messages) == weights(in_process(messages), messages)
    # and back: a RemoteTrainer loading that state queues its unlearnt messages for its child
    again = RemoteTrainer(TrainerConfig())
    again.load_state(state)
    assert len(again.unlearnt) == len(state[UNLEARNT]) and again.staleness_s() > 0


def test_scores_use_published_models_only() -> None:
    remote = RemoteTrainer(TrainerConfig())
    x = np.linspace(0.0, 1.0, len(remote.propensity._weights)).tolist()
    before = remote.propensity.predict(x)
    remote.feed(Labelled(PROPENSITY, x, before, True))
    assert remote.propensity.predict(x) == before  # not learnt here
    child = Trainer(TrainerConfig())
    child.learn(remote.unlearnt[0])
    remote.publish(1, dict(child.versions), publication(child, 0))
    assert remote.propensity.predict(x) > before and remote.versions[PROPENSITY] == 1


async def test_writes_are_refused_while_the_trainer_process_is_behind_and_accepted_once_it_caught_up() -> None:
    metrics = Metrics(CollectorRegistry())
    remote = RemoteTrainer(TrainerConfig(), publish_s=0.05)
    worker = PartitionWorker(WorkerConfig(), metrics, remote)
    rows: list[Any] = []
    core = ProfileCore(worker, Materializer(worker.row, rows.extend, rows.extend, metrics), None,  # type: ignore[arg-type]
                       max_trainer_backlog=10)
    t0 = 1_767_225_600.0

    def event(i: int) -> Event:
        return Event(f"e{i}", "u1", EventType.VIEW, t0 + i, item_id="i1", category="c1")

    n = 0
    while remote.backlog() <= 10:  # no trainer process yet: every message waits
        await core.track(event(n))
        n += 1
    with pytest.raises(ResourceExhausted, match="trainer process is behind"):
        await core.track(event(n))
    assert worker.row("u1")["profile_version"] == n  # the refused event changed nothing
    assert metrics.registry.get_sample_value("portrait_rejected_total", {"reason": "trainer_backlog"}) == 1
    proc = TrainerProcess(remote)
    await proc.start()
    try:
        assert await proc.drain(timeout_s=60) and remote.backlog() == 0
        await core.track(event(n))
        assert worker.row("u1")["profile_version"] == n + 1
    finally:
        await proc.close()
