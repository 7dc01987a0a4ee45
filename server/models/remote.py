"""The trainer in a process of its own (``PORTRAIT_TRAINER=process``): the worker's loop stops learning.

The worker keeps a ``RemoteTrainer``: the same object the worker scores with (``Trainer``'s fields), but
``feed`` learns only what is cheap and read per event — item statistics, co-visits, top items and the
rolling quality windows — and queues every other message (resolved decisions, user and event vectors) for
``TrainerProcess``'s child (``python -m server.models.remote``). The child is the single writer of the
learnt models (propensity, item model, recommendation ranker, KMeans segments, HalfSpaceTrees risk); it
learns the messages in the order they were fed and publishes its models at least every ``publish_s`` while
it learns; ``RemoteTrainer.publish`` swaps them in. So the worker scores with a version at most about
``publish_s`` (plus the time to learn the backlog) behind: ``portrait_model_staleness_seconds``.

**Nothing learnt is lost.** The worker keeps every message the models it holds do not cover yet
(``unlearnt``). Its checkpoint is its models + those messages (``Trainer.state()[UNLEARNT]``; an
in-process ``Trainer`` loading it learns them in order, so either mode reads the other's checkpoints). A
child killed (``kill -9``) is started again from the models held + the messages after them: the same
sequence, so it ends with the same models as a child that was never killed (``tests/integration/
models/test_remote.py``). What differs from the in-process trainer is only *when* the worker sees a model:
scores (and the rows carrying them) use a model up to ``publish_s`` old, so a replay is exact in counts and
profiles, not in the scores of the moment; ``portrait evaluate`` keeps the in-process trainer.

Frames on the child's stdin/stdout: 4-byte big-endian length + pickle (as ``server.store.writer``); a
publication carries the propensity's replay window as the rows written since the previous one (``publication``:
~4 MB whole, measured on the bench stream; the other models ~60 KB together).
In: ``("load", config, models, versions, publish_s, covered)`` once, then lists of messages. Out:
``(covered, versions, models)``: ``covered`` counts messages since the ``RemoteTrainer`` was loaded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import select
import signal
import sys
import time
from collections import deque
from typing import Any

from server.childproc import HEADER, close_child, frame, read_frame
from server.logs import exit_quietly
from server.models.trainer import ITEM_STATS, UNLEARNT, ItemStats, Trainer, TrainerConfig
from server.models.user import Propensity

log = logging.getLogger(__name__)

#: The models the child learns and publishes (the rest of ``Trainer.FIELDS`` stays with the worker).
LEARNT = ("propensity", "item_model", "segmenter", "risk", "next_item")
SEND_EVERY_S = 0.005  # the worker hands its queued messages to the child this often
NICE = 10  # the child's CPU priority below the server's and the writer's: learning can wait, ingest and rows cannot


UNLEARNT_FROM = "unlearnt_from"
"""The number of a state's first unlearnt message, counting every message fed since the first start (the shared
trainer, ``server.cluster.trainer``, learns each number once)."""
FOLDED = "folded"
"""(item stream ID, {worker: the highest log offset folded}): the other workers' item statistics a state holds
(``server.models.shared``)."""
_WINDOW = ("_replay_x", "_replay_y")  # the propensity's replay window: published as the rows that changed


def publication(trainer: Trainer, labels_before: int) -> dict[str, Any]:
    """The learnt models as the child publishes them. The propensity's replay window (10,000 inputs, ~4 MB)
    travels as the rows written since the previous publication (``labels_before`` labels learnt then)."""
    models = {name: getattr(trainer, name) for name in LEARNT if name != "propensity"}
    prop = trainer.propensity
    head = {k: v for k, v in vars(prop).items() if k not in _WINDOW}
    window, n = prop.replay_window, prop._labels
    rows: Any
    if not prop.replay or n == labels_before:
        rows = None
    elif n - labels_before >= window:
        rows = (None, prop._replay_x, prop._replay_y)
    else:
        idx = [i % window for i in range(labels_before, n)]
        rows = (idx, prop._replay_x[idx], prop._replay_y[idx])
    models["propensity"] = (head, rows)
    return models


def _patched(held: Propensity, head: dict[str, Any], rows: Any) -> Propensity:
    """A published propensity: its scalars and weights, and the held replay window with the new rows written."""
    p = Propensity.__new__(Propensity)
    p.__dict__.update(head)
    p._replay_x, p._replay_y = held._replay_x, held._replay_y
    if rows is not None:
        idx, xs, ys = rows
        if idx is None:
            p._replay_x, p._replay_y = xs, ys
        else:
            p._replay_x[idx], p._replay_y[idx] = xs, ys  # in place: a forked checkpoint holds its own copy
    return p


class RemoteTrainer(Trainer):
    """The worker's side of a trainer process: scores with the newest models the child published.

    >>> from server.models.trainer import EventVector, TrainerConfig
    >>> t = RemoteTrainer(TrainerConfig())
    >>> t.feed(EventVector({"price": 1.0}))
    >>> len(t.unlearnt), t.versions["risk"]            # queued for the child, not learnt here
    (1, 0)
    >>> child = Trainer(TrainerConfig()); child.learn(t.unlearnt[0])
    >>> t.publish(1, dict(child.versions), publication(child, 0))
    >>> len(t.unlearnt), t.versions["risk"]
    (0, 1)
    """

    def __init__(self, config: TrainerConfig, publish_s: float = 0.5, share_item_stats: bool = False) -> None:
        super().__init__(config)
        self.publish_s = publish_s
        self.share_item_stats = share_item_stats  # item statistics queued too, for the other workers (shared.py)
        self.folded: dict[int, int] = {}  # other workers' item statistics folded in: the highest log offset of each
        self.folded_id = "0-0"  # ... read from the item stream up to this entry
        self.unlearnt: deque[Any] = deque()  # fed, not yet in the models held here (in feed order)
        self.sent = 0  # of ``unlearnt``, how many the child has been sent
        self._sent_at: deque[tuple[int, float]] = deque()  # (messages sent so far, when) per send
        self.covered = 0  # messages the models held cover (counted since this object was loaded)
        self.origin = 0  # the number of unlearnt[0] at the load, counting every message fed since the first start

    def publish(self, covered: int, versions: dict[str, int], models: dict[str, Any]) -> None:
        """Swap in models the child published, covering the first ``covered`` messages since the load (the
        shared trainer also publishes models that moved with other workers' messages alone: ``covered`` unchanged)."""
        drop = covered - self.covered
        if drop < 0:
            return
        for name, model in models.items():
            setattr(self, name, _patched(self.propensity, *model) if name == "propensity" else model)
        for _ in range(drop):
            self.unlearnt.popleft()
        self.sent -= drop
        self.covered = covered
        for model, v in versions.items():
            if model != ITEM_STATS:
                self.versions[model] = v
        self.version = sum(self.versions.values())
        while self._sent_at and self._sent_at[0][0] <= covered:
            self._sent_at.popleft()

    def take_unsent(self) -> list[Any]:
        """The queued messages not yet sent to the child, marked sent."""
        out = list(itertools.islice(self.unlearnt, self.sent, None))
        self.sent = len(self.unlearnt)
        self._sent_at.append((self.covered + self.sent, time.monotonic()))
        return out

    def resend(self) -> None:
        """A new child: every message after the models held is sent again."""
        self.sent = 0
        self._sent_at.clear()

    def learn(self, message: Any) -> None:
        """Item statistics here (and queued too when shared with other workers); everything else queued for the
        child (``feed`` records quality first, as in one process; ``load_state`` queues a checkpoint's unlearnt
        messages through ``requeue``)."""
        if type(message) is ItemStats:
            Trainer.learn(self, message)
            if self.share_item_stats:
                self.unlearnt.append(message)
        else:
            self.unlearnt.append(message)

    def requeue(self, message: Any) -> None:
        """A checkpoint's unlearnt message, queued again (item statistics without learning them twice)."""
        self.unlearnt.append(message)

    def backlog(self) -> int:
        """Messages the models held do not cover yet (kept until they do)."""
        return len(self.unlearnt)

    def staleness_s(self) -> float:
        """How long the oldest message the models held do not cover has waited (0 when none waits)."""
        if not self.unlearnt:
            return 0.0
        if self._sent_at:
            return max(0.0, time.monotonic() - self._sent_at[0][1])
        return SEND_EVERY_S

    def state(self) -> dict[str, Any]:
        """The models held, the worker's own statistics, and the messages they do not cover yet."""
        return {**super().state(), UNLEARNT: list(self.unlearnt), UNLEARNT_FROM: self.origin + self.covered,
                FOLDED: (self.folded_id, dict(self.folded))}

    def load_state(self, state: dict[str, Any]) -> None:
        """Models and statistics from ``state``; its unlearnt messages queued for the (next) child."""
        self.unlearnt.clear()
        self.sent, self.covered = 0, 0
        self.origin = int(state.get(UNLEARNT_FROM, 0))
        self.folded_id, folded = state.get(FOLDED, ("0-0", {}))
        self.folded = dict(folded)
        self._sent_at.clear()
        super().load_state(state)

    def models(self) -> dict[str, Any]:
        """What a new child starts from."""
        return {name: getattr(self, name) for name in LEARNT}


class TrainerProcess:
    """Drives the child from the event loop: sends what the ``RemoteTrainer`` queued every
    ``SEND_EVERY_S``, applies its publications, and starts it again (from the models held + the messages
    after them) when it dies."""

    def __init__(self, trainer: RemoteTrainer) -> None:
        self.trainer = trainer
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0
        self._stopping = False
        self._dead = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The child's pid (None before the start)."""
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        """Start the child with the models held and begin sending and reading."""
        await self._spawn()
        self._tasks = [asyncio.create_task(self._send_loop(), name="trainer-send"),
                       asyncio.create_task(self._supervise(), name="trainer-supervise")]

    async def _spawn(self) -> None:
        t = self.trainer
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.models.remote", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=os.getcwd())
        t.resend()
        versions = {k: v for k, v in t.versions.items() if k != ITEM_STATS}
        assert self._proc.stdin is not None
        self._proc.stdin.write(frame(("load", t.config, t.models(), versions, t.publish_s, t.covered)))
        self._dead.clear()
        self._reader = asyncio.create_task(self._read_loop(self._proc), name="trainer-read")

    async def _read_loop(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                covered, versions, models = await read_frame(proc.stdout)
                self.trainer.publish(covered, versions, models)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            self._dead.set()

    async def _send_loop(self) -> None:
        while True:
            await asyncio.sleep(SEND_EVERY_S)
            await self.send()

    async def send(self) -> None:
        """Send the queued messages now (a dead child gets them on its restart)."""
        proc = self._proc
        if proc is None or proc.returncode is not None or self._dead.is_set() or proc.stdin is None:
            return
        if len(self.trainer.unlearnt) == self.trainer.sent:
            return
        try:
            proc.stdin.write(frame(self.trainer.take_unsent()))
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._dead.set()

    async def _supervise(self) -> None:
        while not self._stopping:
            await self._dead.wait()
            if self._stopping:
                return
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("the trainer process exited (code %s); starting it again from the models held and the "
                        "%d messages after them", code, len(self.trainer.unlearnt))
            await self._spawn()

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until the child published models covering every message fed so far (True), or the timeout."""
        deadline = time.monotonic() + timeout_s
        while self.trainer.unlearnt:
            await self.send()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(SEND_EVERY_S)
        return True

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child (end of its input); what it had not published stays in ``unlearnt`` (checkpointed)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._proc is not None:
            await close_child(self._proc, timeout_s)


class _Frames:
    """Frames read from a raw fd (``select`` sees the fd, so no buffered reader may hide bytes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def fill(self) -> None:
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.eof = True
        self.buf += chunk

    def peek_whole(self) -> bool:
        """Is a whole frame buffered?"""
        return len(self.buf) >= HEADER.size and len(self.buf) >= HEADER.size + HEADER.unpack_from(self.buf)[0]

    def pop(self) -> bytes | None:
        if len(self.buf) < HEADER.size:
            return None
        (n,) = HEADER.unpack_from(self.buf)
        if len(self.buf) < HEADER.size + n:
            return None
        body = bytes(self.buf[HEADER.size:HEADER.size + n])
        del self.buf[:HEADER.size + n]
        return body


def main() -> int:
    """The child: load the models, learn the messages in order, publish at least every ``publish_s``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent shuts us down
    os.nice(NICE)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of libraries must not corrupt the frames
    frames = _Frames(0)
    while (body := frames.pop()) is None:
        if frames.eof:
            return 0
        frames.fill()
    _, config, models, versions, publish_s, covered = pickle.loads(body)
    trainer = Trainer(config)
    for name, model in models.items():
        setattr(trainer, name, model)
    trainer.versions.update(versions)
    published, last = covered, time.monotonic()
    labels = trainer.propensity._labels  # the worker holds the replay window as of these labels

    def publish() -> None:
        nonlocal labels
        out.write(frame((covered, dict(trainer.versions), publication(trainer, labels))))
        out.flush()
        labels = trainer.propensity._labels

    while True:
        # learn what is buffered, but publish on time even while a backlog waits (the worker's models stay fresh)
        while (covered == published or time.monotonic() - last < publish_s) and (body := frames.pop()) is not None:
            for message in pickle.loads(body):
                trainer.learn(message)
                covered += 1
        due = covered != published and time.monotonic() - last >= publish_s
        if due or (frames.eof and not frames.peek_whole() and covered != published):
            publish()
            published, last = covered, time.monotonic()
        if frames.eof and not frames.peek_whole():
            return 0
        if due or frames.peek_whole():
            continue
        wait = max(0.0, publish_s - (time.monotonic() - last)) if covered != published else None
        if select.select([frames.fd], [], [], wait)[0]:
            frames.fill()


if __name__ == "__main__":
    exit_quietly(main())


__all__ = ["LEARNT", "RemoteTrainer", "TrainerProcess", "publication"]
