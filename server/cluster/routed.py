"""The front end with several workers: the same calls as ``ProfileCore``, routed to the owning worker actor.

User ids are mapped to stored ids here (pseudonyms, when on), then each call goes to the worker owning the
stored id's partition (``server.cluster.actors``). A batch is split by owner keeping each worker's events in
the batch's order, the parts are sent at once, and the answers merged with the batch's own indices. Events
whose user id is invalid still go to a worker (the owner of the raw id), which rejects them: every event is
validated and counted where it would be applied. A worker that is down makes the whole call fail with
UNAVAILABLE; the parts other workers applied are durable in their logs, so the client's retry of the whole
batch counts them as duplicates (by ``event_id``) and applies the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from server.cluster.actors import RayWorkers
from server.domain.errors import InvalidArgument
from server.domain.events import MAX_BATCH, MAX_ID_LEN, BatchResult, Event
from server.domain.pseudonym import Pseudonymizer
from server.log.compaction import CompactionReport
from server.store.feast import OnlineStore
from server.worker.core import read_profile
from server.worker.inspect import PopulationPart, SystemPart, UserDetail, merge_population, merge_system
from server.worker.partition import Outcome

STREAM_CHUNK = 500  # events of a TrackStream sent to the workers at a time
PING_S = 5.0  # a worker's counters for the explorer: a worker that does not answer in this is counted as such
INSPECT_S = 60.0  # a worker's population summary (it summarizes 1,000 profiles between two yields)


def merge(parts: list[tuple[list[int], BatchResult]]) -> BatchResult:
    """One batch's result from its parts' (``indices``: the batch index of each part's events).

    >>> from server.domain.events import FieldError
    >>> a, b = BatchResult(accepted=1), BatchResult(duplicates=1)
    >>> b.reject(1, "e3", FieldError("price", "bad"))
    >>> r = merge([([0, 2], a), ([1, 3], b)])
    >>> r.accepted, r.duplicates, [(i, e) for i, e, _ in r.rejected], r.rejected_count
    (1, 1, [(3, 'e3')], 1)
    """
    out = BatchResult()
    for indices, r in parts:
        out.accepted += r.accepted
        out.duplicates += r.duplicates
        out.suppressed += r.suppressed
        out.rejected_count += r.rejected_count
        out.rejected.extend((indices[i], event_id, err) for i, event_id, err in r.rejected)
    out.rejected.sort(key=lambda x: x[0])
    return out


class RoutedCore:
    """What the gRPC servicer delegates to when ``PORTRAIT_WORKERS`` > 1."""

    def __init__(self, workers: RayWorkers, reader: OnlineStore, ids: Pseudonymizer | None = None) -> None:
        self.workers = workers
        self.reader = reader
        self.ids = ids if ids is not None else Pseudonymizer.identity()

    def _user(self, user_id: str) -> str:
        """Validate a raw user id and map it to the stored one (the pseudonym, when enabled)."""
        if not user_id or len(user_id) > MAX_ID_LEN:
            raise InvalidArgument(f"user_id must be 1..{MAX_ID_LEN} characters", field="user_id")
        return self.ids.map(user_id)

    def _stored(self, e: Event) -> Event:
        if self.ids.enabled and e.user_id and len(e.user_id) <= MAX_ID_LEN:
            e.user_id = self.ids.map(e.user_id)
        return e

    async def track(self, e: Event, wait_visible: bool = False) -> Outcome:
        """One event, applied by its owner; ``InvalidArgument`` names the bad field."""
        e = self._stored(e)
        out: Outcome = await self.workers.call(self.workers.owner_of(e.user_id), "track", e, wait_visible)
        return out

    async def _split(self, events: list[Event], wait_visible: bool) -> BatchResult:
        shares: dict[int, tuple[list[int], list[Event]]] = {}
        for i, e in enumerate(events):
            e = self._stored(e)
            indices, part = shares.setdefault(self.workers.owner_of(e.user_id), ([], []))
            indices.append(i)
            part.append(e)
        owners = list(shares)
        results = await asyncio.gather(*(self.workers.call(w, "track_many", shares[w][1], wait_visible)
                                         for w in owners), return_exceptions=True)
        parts: list[tuple[list[int], BatchResult]] = []
        for w, r in zip(owners, results, strict=True):  # every part answered (or failed) before any error is raised
            if isinstance(r, BaseException):
                raise r
            parts.append((shares[w][0], r))
        return merge(parts)

    async def track_many(self, events: Iterable[Event], wait_visible: bool = False) -> BatchResult:
        """A batch of at most ``MAX_BATCH`` events, split by owner; invalid ones reported by index."""
        events = list(events)
        if len(events) > MAX_BATCH:
            raise InvalidArgument(f"a batch holds at most {MAX_BATCH} events, got {len(events)}", field="events")
        return await self._split(events, wait_visible)

    async def track_stream(self, events: AsyncIterator[Event]) -> BatchResult:
        """A stream of any length, sent on in chunks of ``STREAM_CHUNK``; one summary at the end."""
        parts: list[tuple[list[int], BatchResult]] = []
        chunk: list[Event] = []
        offset = 0

        async def send() -> None:
            nonlocal chunk, offset
            r = await self._split(chunk, False)
            parts.append((list(range(offset, offset + len(chunk))), r))
            offset += len(chunk)
            chunk = []

        async for e in events:
            chunk.append(e)
            if len(chunk) >= STREAM_CHUNK:
                await send()
        if chunk:
            await send()
        return merge(parts)

    async def update_attributes(self, user_id: str, age: int, gender: str, region: str) -> int:
        """Replace a user's attributes; returns the new profile version."""
        stored = self._user(user_id)
        version: int = await self.workers.call_owner(stored, "update_attributes", age, gender, region)
        return version

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """The user's row as the online store serves it (what every other service sees)."""
        return await read_profile(self.reader, self._user(user_id), user_id)

    async def score(self, user_id: str, candidates: list[tuple[str, str, float]]) -> list[tuple[str, float]]:
        """Rank candidates for a user with its owner's models (unknown user: cold start)."""
        stored = self._user(user_id)
        ranked: list[tuple[str, float]] = await self.workers.call_owner(stored, "score", candidates)
        return ranked

    async def recommend(self, user_id: str, k: int) -> list[tuple[str, float]]:
        """The top ``k`` items for a user from its owner."""
        stored = self._user(user_id)
        ranked: list[tuple[str, float]] = await self.workers.call_owner(stored, "recommend", k)
        return ranked

    # -- what the explorer reads: the owner's detail, every worker's part merged --------------------------
    async def inspect_user(self, stored: str, row: dict[str, Any]) -> UserDetail | None:
        """A user's activity, recent events and radar inputs, from its owner; None if erased."""
        detail: UserDetail | None = await self.workers.call_owner(stored, "inspect_user", row)
        return detail

    async def inspect_population(self, show_ids: bool) -> PopulationPart:
        """Every worker's population summary, merged (``Unavailable`` if one does not answer: a partial
        population would misstate the segments)."""
        parts = await asyncio.gather(*(self.workers.call(i, "inspect_population", show_ids, timeout_s=INSPECT_S)
                                       for i in range(self.workers.n)))
        return merge_population(list(parts))

    async def inspect_system(self) -> SystemPart:
        """Every answering worker's counters, merged; the others counted in ``unanswered``."""
        parts = await asyncio.gather(*(self.workers.call(i, "inspect_system", timeout_s=PING_S)
                                       for i in range(self.workers.n)), return_exceptions=True)
        answered = [p for p in parts if isinstance(p, SystemPart)]
        return merge_system(answered, unanswered=len(parts) - len(answered))

    async def _every_key(self, user_id: str, method: str) -> bool:
        """``method`` on the user's stored id under every pseudonym key, each by its owner; True if any was."""
        self._user(user_id)
        found = False
        for stored in self.ids.all(user_id):
            found = bool(await self.workers.call_owner(stored, method)) or found
        return found

    async def delete_user(self, user_id: str) -> bool:
        """Erase a user under every pseudonym key; True if anything was held."""
        return await self._every_key(user_id, "delete_user")

    async def unsuppress_user(self, user_id: str) -> bool:
        """Accept an erased user's events again; True if they were suppressed."""
        return await self._every_key(user_id, "unsuppress_user")

    async def compact(self) -> CompactionReport:
        """Every worker compacts its own files, one after the other (each asks the online store's Redis to rewrite
        its files, which Redis does one at a time); the reports added up."""
        out = CompactionReport()
        for i in range(self.workers.n):
            r = await self.workers.call(i, "compact", timeout_s=600.0)
            out.offline_files += r.offline_files
            out.log_segments += r.log_segments
            out.checkpoints += r.checkpoints
            out.erased_users += r.erased_users
            out.seconds += r.seconds
        return out
