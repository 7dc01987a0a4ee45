"""Micro-batched, coalescing materialization of profile rows to the online and offline stores.

The pipeline marks a user *dirty* after each update. Every ``flush_interval_s``
(or sooner, once ``flush_max_rows`` users are dirty) the materializer builds one
row per dirty user from the current profile (only the latest version per flush)
and writes them in one batch, off the event loop. A failed write loses nothing:
the users go back into the dirty set and are retried with exponential backoff,
so when the store returns the newest version of each is written. Callers that
need read-your-writes await the future returned by ``mark``.

Rows that time alone changed (event-time timers, ``mark_later``) wait in a second, lower-priority set:
each flush writes every event-driven row and at most ``later_rows_per_flush`` of them (``flush_max_rows``
when no event-driven row waits), so a burst of expiries never makes an event's row wait behind it.

Erasures (``forget``) drop a user's pending rows and queue the deletion of its online row;
the flush loop deletes before it writes, after any write already in flight (one loop, in order),
so a row built before the erasure can never land after the delete.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from server.logs import OncePerCause, cause_of
from server.metrics import Metrics
from server.store.writer import WriteError  # its messages are ours (no keys, no user ids): logged in full

log = logging.getLogger(__name__)

Row = dict[str, Any]


class RowSink(Protocol):
    """A batch writer (online or offline store): blocking (run in a worker thread) or a coroutine function."""

    def __call__(self, rows: Sequence[Row]) -> Any: ...


class Materializer:
    """Coalesces dirty users and writes their rows in batches; see module docstring."""

    def __init__(
        self,
        build_row: Callable[[str], Row],
        online: RowSink,
        offline: RowSink,
        metrics: Metrics,
        delete: Callable[[Sequence[str]], Any] | None = None,
        before_write: Callable[[], Awaitable[None]] | None = None,
        flush_interval_s: float = 0.05,
        flush_max_rows: int = 2000,
        offline_roll_s: float = 10.0,
        offline_roll_rows: int = 50_000,
        max_backoff_s: float = 5.0,
        later_rows_per_flush: int = 16,
    ) -> None:
        self.flush_interval_s = flush_interval_s
        self.later_rows_per_flush = later_rows_per_flush
        self.flush_max_rows = flush_max_rows
        self.offline_roll_s = offline_roll_s
        self.offline_roll_rows = offline_roll_rows
        self.max_backoff_s = max_backoff_s
        self._build_row = build_row
        self._before_write = before_write
        self._online = online
        self._delete = delete
        self._deletes: dict[str, list[asyncio.Future[None]]] = {}
        self._offline = offline
        self._metrics = metrics
        self._dirty: dict[str, None] = {}
        self._later: dict[str, None] = {}  # time alone changed them: written after the event-driven rows
        self._inflight = self._inflight_later = 0  # users of the write in flight (online, timers)
        self._received: list[float] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._future: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._offline_rows: list[Row] = []
        self._offline_since = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.online_healthy = True
        self._offline_failures = OncePerCause(log)  # a failing disk is reported once per cause, not per retry
        self.offline_lock = asyncio.Lock()  # held while a part file is written (compaction waits for it)

    # -- producer side (event loop, single writer) --------------------------------------------
    def mark(self, user_id: str, received: float) -> asyncio.Future[None]:
        """Note that ``user_id`` changed (event received at monotonic ``received``); the future
        resolves once a row with this change is visible in the online store."""
        self._dirty[user_id] = None  # a user waits in one set at most: this one wins
        if self._later:
            self._later.pop(user_id, None)
        self._received.append(received)
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        if len(self._dirty) >= self.flush_max_rows:
            self._wake.set()
        return self._future

    def snapshot(self) -> tuple[list[str], list[Row]]:
        """Users still to write online and rows still to append offline (for a checkpoint)."""
        return [*self._dirty, *(u for u in self._later if u not in self._dirty)], list(self._offline_rows)

    def pending_deletes(self) -> list[str]:
        """Users whose online row is still to be deleted (for a checkpoint)."""
        return list(self._deletes)

    def restore(self, dirty: list[str], offline_rows: list[Row], deletes: Sequence[str] = ()) -> None:
        """Re-queue what a checkpoint held (no waiters: nobody is waiting after a restart)."""
        for u in dirty:
            self._dirty[u] = None
        self._offline_rows = offline_rows + self._offline_rows
        for u in deletes:
            self.forget(u)

    def forget(self, user_id: str) -> asyncio.Future[None] | None:
        """An erasure: drop the user's pending online and offline rows and queue the deletion of its
        online row. The future (None outside an event loop or without a delete sink) resolves once
        the row is deleted; until the store is reachable the delete is retried with the writes."""
        self._dirty.pop(user_id, None)
        self._later.pop(user_id, None)
        if self._offline_rows:
            self._offline_rows = [r for r in self._offline_rows if r["user_id"] != user_id]
        if self._delete is None:
            return None
        waiters = self._deletes.setdefault(user_id, [])
        self._wake.set()
        try:
            fut = asyncio.get_running_loop().create_future()
        except RuntimeError:
            return None
        waiters.append(fut)
        return fut

    def mark_quiet(self, user_id: str) -> None:
        """Mark a user dirty without a freshness sample or a waiter (replays)."""
        self._dirty[user_id] = None
        self._later.pop(user_id, None)

    def mark_later(self, user_id: str) -> None:
        """Time alone changed a user (a timer fired): write its row after the event-driven ones."""
        if user_id not in self._dirty:
            self._later[user_id] = None

    @property
    def depth(self) -> int:
        """Users waiting for an online write because of an event."""
        return len(self._dirty)

    @property
    def later_depth(self) -> int:
        """Users waiting for an online write because time alone changed them."""
        return len(self._later)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background flush loop."""
        self._task = asyncio.create_task(self._run(), name="materializer")

    async def stop(self) -> None:
        """Flush everything still pending (online and offline), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        first = min(0.05, self.max_backoff_s)
        backoff = first
        ok = True
        started = time.monotonic()
        while True:
            # flushes start every flush_interval_s, not that long after the last one ended: a write that
            # took longer than the interval is followed at once by the next (rows waited meanwhile)
            delay = self.flush_interval_s - (time.monotonic() - started)
            if ok and delay > 0:  # after a failure, the backoff pause below was the wait
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass
            started = time.monotonic()
            self._wake.clear()
            try:
                ok = await self._flush_online()
                await self._maybe_flush_offline(force=self._stopping)
            except Exception:  # never let the loop die: pending rows and waiters depend on it
                log.exception("materializer flush failed unexpectedly")
                ok = False
            if ok:
                backoff = first
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            if self._stopping and not self._dirty and not self._later and not self._offline_rows \
                    and not self._deletes:
                return

    async def _flush_deletes(self) -> bool:
        deletes, self._deletes = self._deletes, {}
        try:
            await asyncio.to_thread(self._delete, list(deletes))  # type: ignore[arg-type]
        except Exception as exc:
            self._metrics.online_write_errors.inc()
            log.warning("online store delete failed (%d users kept for retry): %s", len(deletes),
                        type(exc).__name__)
            self.online_healthy = False
            for u, ws in deletes.items():
                self._deletes.setdefault(u, []).extend(ws)
            return False
        for ws in deletes.values():
            for w in ws:
                if not w.done():
                    w.set_result(None)
        return True

    async def _flush_online(self) -> bool:
        if self._deletes and not await self._flush_deletes():
            return False
        if not self._dirty and not self._later:
            self._metrics.queue_depth.labels(queue="online").set(0)
            if self._future is not None:  # its users were erased meanwhile: nothing left to show
                waiters = [*self._waiters, self._future]
                self._future, self._waiters, self._received = None, [], []
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
            return True
        users, received, future = list(self._dirty), self._received, self._future
        self._dirty, self._received, self._future = {}, [], None
        later = self._take_later(self.later_rows_per_flush if users else self.flush_max_rows)
        waiters, self._waiters = self._waiters, []
        if future is not None:
            waiters.append(future)
        if not users:
            return await self._write(later, [], received, waiters)
        if not await self._write(users, [], received, waiters):
            self._requeue_later(later)
            return False
        # rows that time alone changed go in a write of their own, after the events' rows are visible: an
        # event's freshness never includes building and writing them (measured: docs/decisions.md)
        return not later or await self._write([], later, [], [])

    async def _write(self, users: list[str], later: list[str], received: list[float],
                     waiters: list[asyncio.Future[None]]) -> bool:
        """Build and write the rows of ``users`` (changed by events) and ``later`` (by time alone); on success
        record freshness and release ``waiters``, on failure put everything back for the retry."""
        rows = [self._build_row(u) for u in users + later]
        self._inflight, self._inflight_later = len(users), len(later)  # still waiting: counted in the depths
        self._set_depths()
        t0 = time.perf_counter()
        try:
            if self._before_write is not None:
                await self._before_write()  # e.g. the event log: never show what is not durable
            if inspect.iscoroutinefunction(self._online):
                await self._online(rows)  # e.g. the writer process, driven from the loop
            else:
                await asyncio.to_thread(self._online, rows)
        except Exception as exc:
            self._metrics.online_write_errors.inc()
            if self.online_healthy:
                log.warning("online store write failed (%d rows kept for retry): %s", len(rows),
                            exc if isinstance(exc, WriteError) else type(exc).__name__)
            self.online_healthy = False
            for u in users:  # back into their set (unless erased meanwhile); newer changes are already there
                if u not in self._deletes:
                    self._dirty.setdefault(u, None)
            self._requeue_later(later)
            self._received = received + self._received
            self._waiters = waiters + self._waiters
            self._inflight = self._inflight_later = 0
            self._set_depths()
            return False
        if not self.online_healthy:
            log.info("online store writes recovered")
        self.online_healthy = True
        now = time.monotonic()
        self._metrics.stage_duration.labels(stage="online_write").observe(time.perf_counter() - t0)
        self._metrics.online_write_rows.inc(len(rows))
        if received and log.isEnabledFor(logging.DEBUG):
            log.debug("wrote %d rows online in %.1f ms; oldest change waited %.1f ms", len(rows),
                      1000 * (time.perf_counter() - t0), 1000 * (now - received[0]))
        for r in received:
            self._metrics.freshness.observe(now - r)
        for w in waiters:
            if not w.done():
                w.set_result(None)
        # not the rows of users erased while they were written (their online rows go with the queued deletes)
        self._offline_rows.extend(r for r in rows if r["user_id"] not in self._deletes)
        self._inflight = self._inflight_later = 0
        self._set_depths()
        return True

    def _requeue_later(self, later: list[str]) -> None:
        """Rows of ``later`` not written: back into the lower-priority set (unless erased, or an event made
        them ordinary dirty rows meanwhile)."""
        for u in later:
            if u not in self._deletes and u not in self._dirty:
                self._later.setdefault(u, None)

    def _take_later(self, n: int) -> list[str]:
        """Up to ``n`` users of the lower-priority set, oldest first."""
        later = self._later
        if len(later) <= n:
            self._later = {}
            return list(later)
        out = list(itertools.islice(later, n))
        for u in out:
            del later[u]
        return out

    def _set_depths(self) -> None:
        depth = self._metrics.queue_depth
        depth.labels(queue="online").set(len(self._dirty) + self._inflight)
        depth.labels(queue="timers").set(len(self._later) + self._inflight_later)
        depth.labels(queue="offline").set(len(self._offline_rows))

    async def _maybe_flush_offline(self, force: bool = False) -> None:
        if not self._offline_rows:
            self._offline_since = time.monotonic()
            return
        due = time.monotonic() - self._offline_since >= self.offline_roll_s
        if not (force or due or len(self._offline_rows) >= self.offline_roll_rows):
            return
        rows, self._offline_rows = self._offline_rows, []
        t0 = time.perf_counter()
        try:
            async with self.offline_lock:
                await asyncio.to_thread(self._offline, rows)
        except Exception as exc:
            self._offline_failures.failed(cause_of(exc), "offline store append failed: %s (%d rows kept for retry)",
                                          cause_of(exc), len(rows))
            self._metrics.offline_write_errors.inc()
            self._offline_rows = rows + self._offline_rows
            return
        self._offline_failures.recovered("offline store appends recovered")
        self._metrics.stage_duration.labels(stage="offline_write").observe(time.perf_counter() - t0)
        self._metrics.offline_write_rows.inc(len(rows))
        self._offline_since = time.monotonic()
        self._metrics.queue_depth.labels(queue="offline").set(len(self._offline_rows))
