"""The shared trainer's input protocol on a real Redis, without Ray: workers' ``TrainerLink``s append numbered
messages to the trainer stream, ``TrainerActor`` (the actor's class, run in this process) learns each number once
— through a worker restarted from its checkpoint (which sends again what it held) and a trainer restarted from
its checkpoint (which reads the stream again after it). Every worker folds in the other workers' item statistics
once, through a restart of its own and a resend of another's."""

from __future__ import annotations

import asyncio
import math
import pickle
from pathlib import Path
from typing import Any

from server.cluster.trainer import TrainerActor
from server.models.remote import RemoteTrainer
from server.models.shared import TrainerLink, TrainerStream, items_key, learn_entry, redis_client, stream_key
from server.models.trainer import EventVector, ItemStats, Trainer, TrainerConfig, UserVector
from tests.conftest import uid
from tests.integration.cluster.canon import canon


def _messages(worker: int, n: int, start: int = 0) -> list[Any]:
    """Distinct messages: risk inputs and segment inputs, tagged by worker and number."""
    return [EventVector({"price": float(worker * 1000 + i)}) if i % 2 else
            UserVector([float(worker), float(i), 0.0, 1.0, 2.0, 0.5, 0.0])  # Segmenter's 7 inputs
            for i in range(start, start + n)]


async def _until(cond: Any, timeout_s: float = 30.0) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)


async def test_each_message_is_learnt_once_through_worker_and_trainer_restarts(redis_url: str,
                                                                             tmp_path: Path) -> None:
    key = stream_key(uid("trainer-test"))
    config = TrainerConfig(segments=2)
    stream = TrainerStream(redis_url, False, key, items_key(key))

    def actor() -> TrainerActor:
        return TrainerActor(config, redis_url, False, key, tmp_path / "trainer", checkpoint_interval_s=3600,
                            keep_stream=True)

    trainer = actor()
    await trainer._started()
    workers = [RemoteTrainer(config) for _ in range(2)]
    links = [TrainerLink(w, stream, i, None, 0.5) for i, w in enumerate(workers)]
    for i, w in enumerate(workers):
        for m in _messages(i, 30):
            w.feed(m)
        await links[i].send()
    await _until(lambda: trainer.learnt == {0: 30, 1: 30})

    # worker 0 "crashes": it restarts from a checkpoint taken after 10 messages were covered, holding 20 unlearnt
    covered, versions, models = pickle.loads(await trainer.publication(0))
    assert covered == 30 and versions["risk"] + versions["segments"] == 60
    workers[0].publish(10, versions, models)  # a checkpoint made when the models held covered 10
    state = workers[0].state()
    assert state["unlearnt_from"] == 10 and len(state["unlearnt"]) == 20
    again = RemoteTrainer(config)
    again.load_state(state)
    link = TrainerLink(again, stream, 0, None, 0.5)
    for m in _messages(0, 10, start=30):  # its replay regenerates what came after the checkpoint, then goes on
        again.feed(m)
    await link.send()  # numbers 10..39: 10..29 were learnt, 30..39 are new
    await _until(lambda: trainer.learnt.get(0) == 40)
    assert trainer.trainer.versions["risk"] + trainer.trainer.versions["segments"] == 70  # 40 + 30, none twice

    # the trainer checkpoints, learns more, is killed, and restarts from its checkpoint: the same models
    await trainer.checkpoint()
    for m in _messages(1, 5, start=30):
        workers[1].feed(m)
    await links[1].send()
    await _until(lambda: trainer.learnt.get(1) == 35)
    if trainer._runner:
        trainer._runner.cancel()
    restarted = actor()
    await restarted._started()
    await _until(lambda: restarted.learnt == {0: 40, 1: 35})
    assert restarted.trainer.versions == trainer.trainer.versions
    for name in ("segmenter", "risk"):
        assert canon(getattr(restarted.trainer, name)) == canon(getattr(trainer.trainer, name)), name

    # and both equal a trainer that read the stream once, in order
    ref, learnt = Trainer(config), {}
    for _, f in redis_client(redis_url, False).xrange(key):
        learn_entry(ref, learnt, int(f[b"w"]), int(f[b"s"]), pickle.loads(f[b"m"]))
    assert learnt == restarted.learnt and ref.versions == restarted.trainer.versions
    for name in ("segmenter", "risk"):
        assert canon(getattr(ref, name)) == canon(getattr(restarted.trainer, name)), name
        assert canon(getattr(ref, name)) != canon(getattr(Trainer(config), name)), name  # it did learn
    if restarted._runner:
        restarted._runner.cancel()


def _touches(worker: int, n: int, start: int = 0) -> list[Any]:
    """Item touches of one worker's users (views, carts, purchases of 12 items over two days), the i-th from the
    event at log offset i, with a risk input every fifth message (the trainer's numbering counts every message)."""
    out: list[Any] = []
    for i in range(start, start + n):
        if i % 5 == 4:
            out.append(EventVector({"price": float(i)}))
            continue
        item = f"i{(worker * 7 + i) % 12}"
        out.append(ItemStats(item, f"c{i % 3}", 1_800_000_000.0 + 900.0 * i + worker, (0, 2, 5)[i % 3], 10.0 + i % 4,
                             before=((f"i{(i + 1) % 12}", "c0"),) if i % 2 else (), offset=i))
    return out


def _same_item_statistics(a: Trainer, b: Trainer) -> bool:
    t = 1_800_200_000.0
    for item in (f"i{k}" for k in range(12)):
        for x, y in zip(a.items.get(item, t), b.items.get(item, t), strict=True):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
                return False
    return all(math.isclose(x, y, rel_tol=1e-9) for c in ("c0", "c1", "c2")
               for x, y in zip(a.categories.get(c, t), b.categories.get(c, t), strict=True))


async def test_every_worker_folds_the_other_workers_item_statistics_once(redis_url: str) -> None:
    prefix = uid("items-test")
    stream = TrainerStream(redis_url, False, stream_key(prefix), items_key(prefix), keep_items=True)
    config = TrainerConfig(segments=2)
    workers = [RemoteTrainer(config, share_item_stats=True) for _ in range(3)]
    links = [TrainerLink(w, stream, i, None, 0.5) for i, w in enumerate(workers)]
    ref = Trainer(config)  # every worker's touches, learnt once
    for i, w in enumerate(workers):
        for m in _touches(i, 40):
            w.feed(m)
            if type(m) is ItemStats:
                ref.learn(m)
        await links[i].send()
    folded = [await link.fold() for link in links]
    assert folded == [64, 64, 64]  # 2 x 32 touches of the others; its own were learnt when fed
    assert all(_same_item_statistics(w, ref) for w in workers)
    assert not _same_item_statistics(Trainer(config), ref)  # the comparison sees a difference

    # worker 0 restarts from a checkpoint taken now, holding its 40 messages unlearnt (the trainer never
    # covered them here): it sends them again, and goes on; the others fold the resend without counting it twice
    # (by the touches' log offsets)
    state = workers[0].state()
    again = RemoteTrainer(config, share_item_stats=True)
    again.load_state(state)
    assert _same_item_statistics(again, ref) and len(again.unlearnt) == 40
    relink = TrainerLink(again, stream, 0, None, 0.5)
    for m in _touches(0, 10, start=40):
        again.feed(m)
        if type(m) is ItemStats:
            ref.learn(m)
    again.resend()
    await relink.send()  # numbers 0..49: 0..39 were appended before
    for m in _touches(2, 5, start=40):
        workers[2].feed(m)
        if type(m) is ItemStats:
            ref.learn(m)
    await links[2].send()
    assert await links[1].fold() == 8 + 4  # worker 0's 8 new touches, worker 2's 4
    assert await relink.fold() == 4  # from its checkpoint's stream position: worker 2's new touches only
    assert await links[2].fold() == 8
    for w in (again, workers[1], workers[2]):
        assert _same_item_statistics(w, ref)

    # the trainer learns none of them (its models do not read item statistics) but counts their numbers
    t, learnt = Trainer(config), {}
    for _, f in redis_client(redis_url, False).xrange(stream_key(prefix)):
        learn_entry(t, learnt, int(f[b"w"]), int(f[b"s"]), pickle.loads(f[b"m"]))
    assert learnt == {0: 50, 1: 40, 2: 45} and len(t.items) == 0 and t.versions["risk"] == 8 + 8 + 8 + 2 + 1
