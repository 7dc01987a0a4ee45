"""The shared trainer's input protocol on a real Redis, without Ray: workers' ``TrainerLink``s append numbered
messages to the trainer stream, ``TrainerActor`` (the actor's class, run in this process) learns each number once
— through a worker restarted from its checkpoint (which sends again what it held) and a trainer restarted from
its checkpoint (which reads the stream again after it)."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

from server.cluster.trainer import TrainerActor
from server.models.remote import RemoteTrainer
from server.models.shared import TrainerLink, TrainerStream, learn_entry, redis_client, stream_key
from server.models.trainer import EventVector, Trainer, TrainerConfig, UserVector
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
    stream = TrainerStream(redis_url, False, key)

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
