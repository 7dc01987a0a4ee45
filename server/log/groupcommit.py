"""Group commit: callers wait until the log is durable up to their offset; one flush task at a time writes
everything appended so far, so concurrent callers share one write (an fsync, a Redis pipeline).

Used by both event logs (``server.log.eventlog``, ``server.log.streams``): each gives ``flush_once``, which
writes what is buffered and returns the offset now durable, or None when nothing was buffered. A flush that
raises fails every waiter and ``failed`` keeps the cause: the log then refuses writes.

>>> import asyncio
>>> durable = 0
>>> async def flush_once():
...     global durable
...     if durable == 3:
...         return None
...     durable = 3
...     return durable
>>> gc = GroupCommit(flush_once, "example")
>>> asyncio.run(gc.until(3, durable)), durable
(None, 3)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class GroupCommit:
    """The waiters of one log and its flush task."""

    def __init__(self, flush_once: Callable[[], Awaitable[int | None]], name: str) -> None:
        self._flush_once = flush_once
        self._name = name
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None

    async def until(self, target: int, durable: int) -> None:
        """Return once the log is durable up to ``target`` (``durable``: how far it is now)."""
        if durable >= target:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)
        await fut

    async def _run(self) -> None:
        while True:
            try:
                done = await self._flush_once()
            except BaseException as exc:  # disk full, I/O error, Redis gone: every waiter fails
                self.failed = exc
                for _, fut in self._waiters:
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"event log write failed: {exc}"))
                self._waiters.clear()
                return
            if done is None:
                return
            keep = []
            for target, fut in self._waiters:
                if target <= done:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((target, fut))
            self._waiters = keep
