"""ProfileCore: the transport-agnostic, async face of Portrait.

Wraps the partition worker, the materializer and the online-store reader.
All methods run on the server's event loop; blocking store calls go to threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from server.domain.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from server.domain.events import MAX_BATCH, MAX_ID_LEN, BatchResult, Event
from server.domain.pseudonym import Pseudonymizer
from server.log.compaction import CompactionReport
from server.store.feast import OnlineStore
from server.worker.durability import Durability
from server.worker.inspect import PopulationPart, SystemPart, UserDetail, population_part, system_part, user_detail
from server.worker.materialize import Materializer
from server.worker.partition import Outcome, PartitionWorker

BUSY_TIMERS_PER_TICK = 200  # timers fired per (1 s) tick while events arrive, beside PORTRAIT_TIMERS_PER_EVENT
BUSY_TIMER_CHUNK = 25  # ... this many at a time, the loop free in between (200 at once held it ~15 ms)
YIELD_EVERY = 64  # events processed between yields to the event loop in batches (256 held it 60-100 ms)
STREAM_COMMIT_EVERY = 2000  # events of a stream between log commits


async def read_profile(reader: OnlineStore, stored: str, user_id: str) -> dict[str, Any]:
    """The row of the stored id ``stored`` as the online store serves it, under the caller's ``user_id`` (not the
    pseudonym); ``Unavailable`` if the store cannot be read, ``NotFound`` if it has no row."""
    try:
        row = await asyncio.to_thread(reader.read, stored)
    except Exception as exc:
        raise Unavailable(f"online store unavailable: {type(exc).__name__}") from exc
    if row is None:
        raise NotFound("no profile for this user_id", field="user_id")
    row["user_id"] = user_id
    return row


class ProfileCore:
    """What the gRPC servicer delegates to."""

    def __init__(self, worker: PartitionWorker, materializer: Materializer, reader: OnlineStore,
                 durability: Durability | None = None, max_log_backlog_bytes: int = 64 * 1024 * 1024,
                 ids: Pseudonymizer | None = None, offline_dir: Any = None,
                 rewrite_online: Any = None, erase_timeout_s: float = 10.0,
                 max_trainer_backlog: int = 1_000_000) -> None:
        self.worker = worker
        self.materializer = materializer
        self.reader = reader
        self.durability = durability
        self.max_log_backlog_bytes = max_log_backlog_bytes
        self.max_trainer_backlog = max_trainer_backlog
        self.ids = ids if ids is not None else Pseudonymizer.identity()
        self.offline_dir = offline_dir
        self.rewrite_online = rewrite_online
        self.erase_timeout_s = erase_timeout_s
        self._latency = worker.metrics.update_latency
        self._last_event = time.monotonic()  # of the latest applied event (the start counts as one: a replay
        # sent right after a start moves the watermark by event time only)
        self._rejected = worker.metrics.rejected

    def _admit(self) -> None:
        """Backpressure: refuse new writes while the log has too much not yet on disk, or the trainer process
        too many messages not yet learnt."""
        if self.durability is not None and self.durability.log.pending_bytes > self.max_log_backlog_bytes:
            self._rejected.labels(reason="log_backlog").inc()
            raise ResourceExhausted("the event log is behind; retry with backoff")
        if self.worker.trainer.backlog() > self.max_trainer_backlog:
            self._rejected.labels(reason="trainer_backlog").inc()
            raise ResourceExhausted("the trainer process is behind; retry with backoff")

    async def _commit(self) -> None:
        if self.durability is not None:
            await self.durability.commit()

    def _user(self, user_id: str) -> str:
        """Validate a raw user id and map it to the stored one (the pseudonym, when enabled)."""
        if not user_id or len(user_id) > MAX_ID_LEN:
            raise InvalidArgument(f"user_id must be 1..{MAX_ID_LEN} characters", field="user_id")
        return self.ids.map(user_id)

    def _apply(self, e: Event, received: float, score: bool = True) -> tuple[Outcome, asyncio.Future[None] | None]:
        if self.ids.enabled:
            e.user_id = self.ids.map(e.user_id)  # validated already; from here on only the pseudonym
        if self.durability is not None:
            self.worker.offset = self.durability.log.next_offset  # the offset log_event gives it below
        out = self.worker.apply(e, score=score)
        fut = None
        if not (out.duplicate or out.suppressed):
            if self.durability is not None:
                self.durability.log_event(e)  # same step as the apply: log order = apply order
            fut = self.materializer.mark(e.user_id, received)
        self._latency.observe(time.monotonic() - received)
        self._last_event = received
        return out, fut

    async def advance_time(self, idle_s: float, chunk: int = 1000) -> int:
        """With no event for ``idle_s`` (monotonic), let the wall clock move the watermark and fire every timer
        it passed, ``chunk`` at a time with the loop free between chunks; returns how many fired."""
        if time.monotonic() - self._last_event < idle_s:  # busy: event time moves the watermark; catch up a
            held = self.worker.timers_held  # bounded share per tick besides the per-event share
            fired = 0
            while fired < BUSY_TIMERS_PER_TICK and not (held is not None and held()):
                n = self.worker.fire(BUSY_TIMER_CHUNK)
                fired += n
                if n < BUSY_TIMER_CHUNK:
                    break
                await asyncio.sleep(0)
            return fired
        fired = 0
        while True:
            n = self.worker.advance(time.time(), chunk)
            fired += n
            if n < chunk:
                return fired
            await asyncio.sleep(0)

    async def track(self, e: Event, wait_visible: bool = False) -> Outcome:
        """One event; ``InvalidArgument`` names the bad field."""
        received = time.monotonic()
        err = self.worker.check(e)
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
        try:
            async for e in events:
                self._one(i, e, time.monotonic(), result, None)
                i += 1
                if i % STREAM_COMMIT_EVERY == 0:
                    await self._commit()  # bounds the unflushed log while the stream goes on
        finally:  # also when the stream breaks off (idle, cancelled, undecodable): what was applied is durable
            await self._commit()
        return result

    def _one(self, i: int, e: Event, received: float, result: BatchResult,
             futures: list[asyncio.Future[None]] | None) -> None:
        err = self.worker.check(e)
        if err:
            result.reject(i, e.event_id, err)
            return
        out, fut = self._apply(e, received, score=False)
        if out.suppressed:
            result.suppressed += 1
        elif out.duplicate:
            result.duplicates += 1
        else:
            result.accepted += 1
            if futures is not None and fut is not None:
                futures.append(fut)

    async def update_attributes(self, user_id: str, age: int, gender: str, region: str) -> int:
        """Replace a user's attributes; returns the new profile version."""
        self._admit()
        user_id = self._user(user_id)
        version = self.worker.update_attributes(user_id, age, gender, region)
        if self.durability is not None:
            self.durability.log_attributes(user_id, age, gender, region)
        self.materializer.mark(user_id, time.monotonic())
        await self._commit()
        return version

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """The user's row as the online store serves it (what every other service sees)."""
        return await read_profile(self.reader, self._user(user_id), user_id)

    async def score(self, user_id: str, candidates: list[tuple[str, str, float]]) -> list[tuple[str, float]]:
        """Rank (item_id, category, price) candidates for a user, best first (unknown user: cold start)."""
        return self.worker.score(self._user(user_id), candidates)

    async def recommend(self, user_id: str, k: int) -> list[tuple[str, float]]:
        """The top ``k`` items for a user, best first (unknown user: cold start)."""
        return self.worker.recommend(self._user(user_id), k)

    # -- what the explorer reads (server.worker.inspect; stored ids) -------------------------------------
    async def inspect_user(self, stored: str, row: dict[str, Any]) -> UserDetail | None:
        """A user's activity, recent events and radar inputs beside its online ``row``; None if erased."""
        return user_detail(self.worker, stored, row)

    async def inspect_population(self, show_ids: bool) -> PopulationPart:
        """The population's summaries (a slice of profiles at a time, the loop free in between)."""
        return await population_part(self.worker, show_ids)

    async def inspect_system(self) -> SystemPart:
        """The worker's counters now."""
        return system_part(self.worker, self.materializer.online_healthy)

    # -- erasure -----------------------------------------------------------------------------------
    async def delete_user(self, user_id: str) -> bool:
        """Erase a user (under every pseudonym key): the erasure record is appended and the in-memory
        state dropped in one step (so no later event of theirs is ever applied or logged), the record is
        made durable, then the online row is deleted. Returns whether anything was held."""
        self._user(user_id)
        existed, waits, at = False, [], time.time()
        for stored in self.ids.all(user_id):
            offset = -1
            if self.durability is not None:
                offset = self.durability.log_erasure(self.worker.erasures.digest(stored), at, stored)
            existed = self.worker.erase(stored, offset, at) or existed
            fut = self.materializer.forget(stored)
            if fut is not None:
                waits.append(fut)
        await self._commit()  # acknowledged = durable (a restart replays the erasure)
        self.worker.metrics.erasures.inc()
        if waits:
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*waits)), self.erase_timeout_s)
            except TimeoutError:
                raise Unavailable("the erasure is recorded and applied; the online row will be deleted once the "
                                  "online store is reachable") from None
        return existed

    async def unsuppress_user(self, user_id: str) -> bool:
        """Accept an erased user's events again; True if they were suppressed."""
        self._user(user_id)
        lifted, at = False, time.time()
        for stored in self.ids.all(user_id):
            digest = self.worker.erasures.digest(stored)
            if self.worker.unsuppress(digest, at):
                lifted = True
                if self.durability is not None:
                    self.durability.log_unsuppress(digest, at, stored)
        await self._commit()
        return lifted

    async def compact(self) -> CompactionReport:
        """Rewrite stored files without the users erased since the last compaction."""
        if self.durability is None or self.offline_dir is None:
            return CompactionReport()
        report = await self.durability.compact(self.offline_dir, self.rewrite_online)
        if report.erased_users:
            self.worker.metrics.compaction_duration.observe(report.seconds)
        return report
