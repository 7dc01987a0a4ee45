"""ProfileCore: the transport-agnostic, async face of Portrait.

Wraps the single-writer pipeline, the materializer and the online-store reader.
All methods run on the server's event loop; blocking store calls go to threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from server.durability import Durability
from server.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from server.events import MAX_BATCH, BatchResult, Event
from server.features import OnlineStore
from server.materialize import Materializer
from server.pipeline import Outcome, Pipeline

YIELD_EVERY = 256  # events processed between yields to the event loop in batches
STREAM_COMMIT_EVERY = 2000  # events of a stream between log commits


class ProfileCore:
    """What the gRPC servicer delegates to."""

    def __init__(self, pipeline: Pipeline, materializer: Materializer, reader: OnlineStore,
                 durability: Durability | None = None, max_log_backlog_bytes: int = 64 * 1024 * 1024) -> None:
        self.pipeline = pipeline
        self.materializer = materializer
        self.reader = reader
        self.durability = durability
        self.max_log_backlog_bytes = max_log_backlog_bytes
        self._latency = pipeline.metrics.update_latency
        self._rejected = pipeline.metrics.rejected

    def _admit(self) -> None:
        """Backpressure: refuse new writes while the log has too much not yet on disk."""
        if self.durability is not None and self.durability.log.pending_bytes > self.max_log_backlog_bytes:
            self._rejected.labels(reason="log_backlog").inc()
            raise ResourceExhausted("the event log is behind; retry with backoff")

    async def _commit(self) -> None:
        if self.durability is not None:
            await self.durability.commit()

    def _apply(self, e: Event, received: float, score: bool = True) -> tuple[Outcome, asyncio.Future[None] | None]:
        out = self.pipeline.apply(e, score=score)
        fut = None
        if not out.duplicate:
            if self.durability is not None:
                self.durability.log_event(e)  # same step as the apply: log order = apply order
            fut = self.materializer.mark(e.user_id, received)
        self._latency.observe(time.monotonic() - received)
        return out, fut

    async def track(self, e: Event, wait_visible: bool = False) -> Outcome:
        """One event; ``InvalidArgument`` names the bad field."""
        received = time.monotonic()
        err = self.pipeline.check(e)
        if err:
            raise InvalidArgument(err.message, field=err.field)
        self._admit()
        out, fut = self._apply(e, received)
        await self._commit()  # acknowledged = durable
        if wait_visible and fut is not None:
            await fut
        return out

    async def track_many(self, events: Iterable[Event], wait_visible: bool = False) -> BatchResult:
        """A batch of at most ``MAX_BATCH`` events: valid ones applied, invalid ones reported."""
        events = list(events)
        if len(events) > MAX_BATCH:
            raise InvalidArgument(f"a batch holds at most {MAX_BATCH} events, got {len(events)}", field="events")
        self._admit()
        result = BatchResult()
        futures: list[asyncio.Future[None]] = []
        for i, e in enumerate(events):
            self._one(i, e, time.monotonic(), result, futures)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        await self._commit()
        if wait_visible and futures:
            await asyncio.gather(*set(futures))
        return result

    async def track_stream(self, events: AsyncIterator[Event]) -> BatchResult:
        """A stream of events of any length; one summary at the end."""
        self._admit()
        result = BatchResult()
        i = 0
        async for e in events:
            self._one(i, e, time.monotonic(), result, None)
            i += 1
            if i % STREAM_COMMIT_EVERY == 0:
                await self._commit()  # bounds the unflushed log while the stream goes on
        await self._commit()
        return result

    def _one(self, i: int, e: Event, received: float, result: BatchResult,
             futures: list[asyncio.Future[None]] | None) -> None:
        err = self.pipeline.check(e)
        if err:
            result.rejected.append((i, e.event_id, err))
            return
        out, fut = self._apply(e, received, score=False)
        if out.duplicate:
            result.duplicates += 1
        else:
            result.accepted += 1
            if futures is not None and fut is not None:
                futures.append(fut)

    async def update_attributes(self, user_id: str, age: int, gender: str, region: str) -> int:
        """Replace a user's attributes; returns the new profile version."""
        self._admit()
        version = self.pipeline.update_attributes(user_id, age, gender, region)
        if self.durability is not None:
            self.durability.log_attributes(user_id, age, gender, region)
        self.materializer.mark(user_id, time.monotonic())
        await self._commit()
        return version

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """The user's row as the online store serves it (what every other service sees)."""
        if not user_id:
            raise InvalidArgument("user_id must not be empty", field="user_id")
        try:
            row = await asyncio.to_thread(self.reader.read, user_id)
        except Exception as exc:
            raise Unavailable(f"online store unavailable: {type(exc).__name__}") from exc
        if row is None:
            raise NotFound(f"no profile for user_id {user_id!r}", field="user_id")
        return row

    async def score(self, user_id: str, candidates: list[tuple[str, str, float]]) -> list[tuple[str, float]]:
        """Rank (item_id, category, price) candidates for a user, best first (unknown user: cold start)."""
        return self.pipeline.score(user_id, candidates)
