"""A worker's side of the shared trainer (``PORTRAIT_WORKERS>1``; the trainer is ``server.cluster.trainer``).

Each worker keeps a ``RemoteTrainer`` (it scores with the newest models it holds; the quality windows stay the
worker's own). ``TrainerLink`` appends every message it queues to the trainer stream
``<PORTRAIT_LOG_PREFIX>:trainer`` (in the log's Redis), one entry per send, tagged with the worker and the number
of its first message: the worker numbers its messages from its first start on, and the number of the first one it
holds unlearnt is in its checkpoints (``UNLEARNT_FROM``). The trainer learns each ``(worker, number)`` once
(``learn_entry``), so a worker restarted from its checkpoint may send again what it held and regenerate, by its
replay, the messages after it. Every ``publish_s`` the link swaps in the trainer's newest models.

Item statistics (popularity, co-visits, top items: read per event, for scores and candidates) are learnt by
every worker from every worker's users. A worker learns its own item touches at once (``ItemStats``, as in one
process) and queues them with its other messages; the same append puts them on the item stream
``<prefix>:items`` (``ItemStats`` only, so readers do not download the models' inputs). Every ``publish_s`` each
worker folds in the other workers' entries (``fold_entry``): each touch once, by the log offset of the event it
comes from (the same when a restarted worker replays its log, unlike message numbers, which messages resolved
by the wall clock can shift), so a resend after a restart changes nothing; the highest offset folded per
worker and the stream ID read are in its checkpoints (the trainer skips ``ItemStats``: its models do not read
them). The item stream keeps ``ITEMS_KEEP_S`` of entries
(trimmed by time at each append) unless ``PORTRAIT_LOG_RETENTION_S=-1``: a worker down longer than that misses
the other workers' touches meanwhile (logged).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from typing import Any

from server.models.remote import LEARNT, SEND_EVERY_S, RemoteTrainer
from server.models.trainer import ItemStats, Trainer

log = logging.getLogger("portrait")

ITEMS_KEEP_S = 3600.0  # item stream entries kept (by time) for workers restarting from an older checkpoint
FOLD_READ = 256  # item stream entries read per round
FINAL_FOLD_S = 15.0  # at a stop, the last fold's time limit (the other workers' touches, before the checkpoint)


def stream_key(log_prefix: str) -> str:
    """The trainer stream's key.

    >>> stream_key("portrait:log")
    'portrait:log:trainer'
    """
    return f"{log_prefix}:trainer"


def items_key(log_prefix: str) -> str:
    """The item stream's key (the other workers' item touches).

    >>> items_key("portrait:log")
    'portrait:log:items'
    """
    return f"{log_prefix}:items"


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
        if type(message) is not ItemStats:  # the workers' (fold_entry)
            trainer.learn(message)
    learnt[worker] = first + len(messages)
    return len(todo)


def fold_entry(trainer: Trainer, folded: dict[int, int], worker: int, touches: list[ItemStats]) -> int:
    """Fold in one item stream entry of another worker (its touches in log order): each touch whose event's log
    offset is above the highest folded from that worker (``folded[worker]``), so a resend after a restart is not
    counted twice. Returns how many were learnt.

    >>> from server.models.trainer import TrainerConfig
    >>> t, folded = Trainer(TrainerConfig()), {}
    >>> touches = [ItemStats("i1", "c", 0.0, 0, 5.0, offset=7), ItemStats("i1", "c", 0.0, 0, 5.0, offset=9)]
    >>> fold_entry(t, folded, 2, touches), fold_entry(t, folded, 2, touches), folded
    (2, 0, {2: 9})
    >>> t.items.get("i1", 0.0)[0]    # two views, not four
    2.0
    """
    last, n = folded.get(worker, -1), 0
    for message in touches:
        if message.offset > last:
            Trainer.learn(trainer, message)  # learnt here only (a RemoteTrainer would queue it as its own)
            last = message.offset
            n += 1
    folded[worker] = last
    return n


class TrainerStream:
    """A worker's appends to the trainer stream and the item stream, and its reads of the item stream."""

    def __init__(self, url: str, cluster: bool, key: str, items: str, keep_items: bool = False) -> None:
        self.url, self.cluster, self.key, self.items = url, cluster, key, items
        self.keep_items = keep_items  # PORTRAIT_LOG_RETENTION_S=-1: the item stream is never trimmed
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            self._client = redis_client(self.url, self.cluster)
        return self._client

    def append(self, worker: int, first: int, messages: list[Any]) -> None:
        """One entry: the worker, the number of its first message, the messages (pickled); its item statistics
        (with their index) also on the item stream, which keeps ``ITEMS_KEEP_S`` of entries."""
        client = self._redis()
        client.xadd(self.key, {"w": worker, "s": first, "m": pickle.dumps(messages, protocol=5)})
        touches = [m for m in messages if type(m) is ItemStats]
        if touches:
            trim: dict[str, Any] = {} if self.keep_items else {
                "minid": f"{int((time.time() - ITEMS_KEEP_S) * 1000)}-0", "approximate": True}
            client.xadd(self.items, {"w": worker, "i": pickle.dumps(touches, protocol=5)}, **trim)

    def read_items(self, after: str, count: int = FOLD_READ) -> list[tuple[str, int, list[ItemStats]]]:
        """Item stream entries after ID ``after``: (ID, worker, its touches)."""
        got = self._redis().xrange(self.items, min=f"({after}", count=count)
        return [(i.decode() if isinstance(i, bytes) else i, int(f[b"w"]), pickle.loads(f[b"i"])) for i, f in got]

    def first_item_id(self) -> str | None:
        """The oldest item stream entry's ID (None: empty)."""
        got = self._redis().xrange(self.items, count=1)
        if not got:
            return None
        i = got[0][0]
        return str(i.decode() if isinstance(i, bytes) else i)


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
        self._checked_gap = False
        self._fold_failing = False

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

    async def fold(self) -> int:
        """Fold in the other workers' item statistics appended since the last fold; how many were learnt."""
        t, n = self.trainer, 0
        if not self._checked_gap:  # once, after the start: was the entry last folded trimmed since?
            self._checked_gap = True
            oldest = await asyncio.to_thread(self.stream.first_item_id)
            if t.folded_id != "0-0" and oldest is not None and _id_key(oldest) > _id_key(t.folded_id):
                log.warning("the item stream was trimmed after this worker's checkpoint (it read up to %s, the "
                            "stream starts at %s): other workers' item touches in between may be missing here",
                            t.folded_id, oldest)
        while True:
            entries = await asyncio.to_thread(self.stream.read_items, t.folded_id)
            for entry_id, worker, touches in entries:
                if worker != self.worker:
                    n += fold_entry(t, t.folded, worker, touches)
                t.folded_id = entry_id
            if len(entries) < FOLD_READ:
                return n
            await asyncio.sleep(0)

    async def _pull_loop(self) -> None:
        while True:
            await asyncio.sleep(self.publish_s)
            try:
                await asyncio.wait_for(self.fold(), 30.0)  # the item stream: it does not need the trainer
                self._fold_failing = False
            except Exception as exc:
                if not self._fold_failing:  # once until it works again (it is retried every publish_s)
                    log.warning("reading the other workers' item statistics failed (%s); retrying",
                                type(exc).__name__)
                self._fold_failing = True
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
        """Until the models held cover every message queued (True), or the timeout; then the other workers' item
        statistics appended so far are folded in (the final checkpoint follows: it should not lag behind them)."""
        deadline = time.monotonic() + timeout_s
        drained = True
        while self.trainer.unlearnt:
            try:
                await self.send()
                await self.pull()
            except Exception:
                pass
            if time.monotonic() > deadline:
                drained = False
                break
            await asyncio.sleep(self.publish_s / 5)
        try:
            await asyncio.wait_for(self.fold(), FINAL_FOLD_S)
        except Exception as exc:
            log.warning("the last fold of the other workers' item statistics did not finish (%s): the next start "
                        "reads on from the checkpoint's position", type(exc).__name__)
        return drained

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["TrainerLink", "TrainerStream", "fold_entry", "items_key", "learn_entry", "redis_client",
           "shared_publication", "stream_key"]
