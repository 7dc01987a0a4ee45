"""A worker's side of the shared trainer (``PORTRAIT_WORKERS>1``; the trainer is ``server.cluster.trainer``).

Each worker keeps a ``RemoteTrainer`` (it scores with the newest models it holds; item statistics, co-visits,
top items and the quality windows stay the worker's own, from its users). ``TrainerLink`` appends every message
it queues to the trainer stream ``<PORTRAIT_LOG_PREFIX>:trainer`` (in the log's Redis), one entry per send,
tagged with the worker and the number of its first message: the worker numbers its messages from its first
start on, and the number of the first one it holds unlearnt is in its checkpoints (``UNLEARNT_FROM``). The
trainer learns each ``(worker, number)`` once (``learn_entry``), so a worker restarted from its checkpoint may
send again what it held and regenerate, by its replay, the messages after it. Every ``publish_s`` the link
swaps in the trainer's newest models.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import Any

from server.models.remote import LEARNT, SEND_EVERY_S, RemoteTrainer
from server.models.trainer import Trainer

log = logging.getLogger("portrait")


def stream_key(log_prefix: str) -> str:
    """The trainer stream's key.

    >>> stream_key("portrait:log")
    'portrait:log:trainer'
    """
    return f"{log_prefix}:trainer"


def redis_client(url: str, cluster: bool) -> Any:
    """A redis-py client of the log's Redis (a ``RedisCluster`` on a cluster)."""
    import redis
    from redis.cluster import RedisCluster

    kw: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
    return RedisCluster.from_url(url, **kw) if cluster else redis.Redis.from_url(url, **kw)


def shared_publication(trainer: Trainer) -> dict[str, Any]:
    """The learnt models as workers receive them: the propensity without its replay window (workers score
    with its weights; the window is the trainer's to learn with)."""
    models = {name: getattr(trainer, name) for name in LEARNT if name != "propensity"}
    prop = trainer.propensity
    models["propensity"] = ({k: v for k, v in vars(prop).items() if k not in ("_replay_x", "_replay_y")}, None)
    return models


def learn_entry(trainer: Trainer, learnt: dict[int, int], worker: int, first: int, messages: list[Any]) -> int:
    """Learn the messages of one stream entry that were not learnt yet (``learnt[worker]``: the next number
    expected from it); returns how many were learnt.

    >>> from server.models.trainer import EventVector, TrainerConfig
    >>> t, learnt = Trainer(TrainerConfig()), {}
    >>> m = [EventVector({"price": float(i)}) for i in range(3)]
    >>> learn_entry(t, learnt, 0, 0, m), learn_entry(t, learnt, 0, 1, m), learnt, t.versions["risk"]
    (3, 1, {0: 4}, 4)
    """
    skip = learnt.get(worker, 0) - first
    if skip >= len(messages):
        return 0
    todo = messages[max(skip, 0):]
    for message in todo:
        trainer.learn(message)
    learnt[worker] = first + len(messages)
    return len(todo)


class TrainerStream:
    """A worker's appends to the trainer stream."""

    def __init__(self, url: str, cluster: bool, key: str) -> None:
        self.url, self.cluster, self.key = url, cluster, key
        self._client: Any = None

    def append(self, worker: int, first: int, messages: list[Any]) -> None:
        """One entry: the worker, the number of its first message, the messages (pickled)."""
        if self._client is None:
            self._client = redis_client(self.url, self.cluster)
        self._client.xadd(self.key, {"w": worker, "s": first, "m": pickle.dumps(messages, protocol=5)})


class TrainerLink:
    """A worker's side of the shared trainer: appends what its ``RemoteTrainer`` queued to the trainer stream
    (in order, tagged), and swaps in the trainer actor's models every ``publish_s``."""

    def __init__(self, trainer: RemoteTrainer, stream: TrainerStream, worker: int, actor: Any,
                 publish_s: float) -> None:
        self.trainer = trainer
        self.stream = stream
        self.worker = worker
        self.actor = actor
        self.publish_s = publish_s
        self._tasks: list[asyncio.Task[None]] = []
        self._unreachable_since: float | None = None

    @property
    def pid(self) -> int | None:
        return None  # the trainer is an actor of its own (``portrait workers`` lists it)

    async def start(self) -> None:
        self.trainer.resend()  # everything held unlearnt goes to the stream again (the trainer drops repeats)
        self._tasks = [asyncio.create_task(self._send_loop(), name="trainer-append"),
                       asyncio.create_task(self._pull_loop(), name="trainer-pull")]

    async def send(self) -> None:
        """Append the queued messages now (a failed append is retried: they stay queued)."""
        t = self.trainer
        if len(t.unlearnt) == t.sent:
            return
        first = t.origin + t.covered + t.sent
        messages = t.take_unsent()
        try:
            await asyncio.to_thread(self.stream.append, self.worker, first, messages)
        except Exception:
            t.sent -= len(messages)  # not appended: sent again next round
            raise

    async def _send_loop(self) -> None:
        while True:
            await asyncio.sleep(SEND_EVERY_S)
            try:
                await self.send()
            except Exception as exc:
                log.warning("appending to the trainer stream failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def pull(self) -> None:
        """Swap in the trainer's newest models (covering this worker's messages up to the number it reports)."""
        covered, versions, models = pickle.loads(await self.actor.publication.remote(self.worker))
        self.trainer.publish(covered - self.trainer.origin, versions, models)

    async def _pull_loop(self) -> None:
        while True:
            await asyncio.sleep(self.publish_s)
            try:
                await asyncio.wait_for(self.pull(), 30.0)
                if self._unreachable_since is not None:
                    log.info("the trainer answers again")
                    self._unreachable_since = None
            except Exception as exc:
                if self._unreachable_since is None:
                    self._unreachable_since = time.monotonic()
                    log.warning("the trainer does not answer (%s): scoring with the models held", type(exc).__name__)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Until the models held cover every message queued (True), or the timeout."""
        deadline = time.monotonic() + timeout_s
        while self.trainer.unlearnt:
            try:
                await self.send()
                await self.pull()
            except Exception:
                pass
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.publish_s / 5)
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()


__all__ = ["TrainerLink", "TrainerStream", "learn_entry", "redis_client", "shared_publication", "stream_key"]
