"""What the explorer's pages show, read from the running server on its event loop.

Every coroutine here runs on the server's loop (the HTTP threads submit them with
``asyncio.run_coroutine_threadsafe``), so it reads the worker's state between two events, like the gRPC
servicer does. The profile card is ``ProfileCore.get_profile`` — the row GetProfile serves, read through
Feast's online store — and Score and Recommend results are ``ProfileCore.score`` and
``ProfileCore.recommend``, the functions the gRPC servicer calls:
one source for every number a client also sees. What GetProfile does not carry (the activity histogram,
the recent events, the category breadth for the radar) comes from the in-memory profile of the same user in
the worker that owns it (``server.worker.inspect``): in this process with one worker, asked of the owning
worker actor with ``PORTRAIT_WORKERS`` > 1 (``RoutedCore``), which is the only difference between the two.

Population figures (segments in words, tag counts) need every profile: each worker summarizes a slice of
1,000 profiles at a time with its loop free in between, at most every ``max(POPULATION_TTL_S, 20 x the last
build's duration)`` (so even a huge population costs the loop under 5 %), and pages show the time they are
as of. Counters (users, segment sizes, watermark, queues) are read live, summed over the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from server.domain.errors import NotFound
from server.domain.events import EventType
from server.domain.pseudonym import Pseudonymizer
from server.metrics import QUEUES
from server.models.user import SEGMENT_INPUTS
from server.tools.segments import Segment, summarize
from server.ui.history import History, Sample, collect, read, total
from server.worker.inspect import PopulationPart, SystemPart, UserDetail

log = logging.getLogger("portrait")

POPULATION_TTL_S = 30.0
RADAR_AXES = ("recent purchase", "events 30d", "spend 30d", "order value", "categories", "sessions 7d",
              "purchases 30d")
"""The radar's axes: the segment inputs (``SEGMENT_INPUTS``) in words; the first is flipped (days since the
last purchase: fewer = further out)."""
RADAR_Z = 3.0
"""Standard scores from -3 (centre of the radar) to +3 (rim); the population's mean is the middle ring."""
MAX_SCORED = 20
RECOMMENDED = 10  # items of the Recommend section (the RPC's default k)

assert len(RADAR_AXES) == len(SEGMENT_INPUTS)


def radar_radius(z: float) -> float:
    """A standard score as a radar radius in 0..1 (clamped): the mean is 0.5.

    >>> radar_radius(0.0), radar_radius(3.0), radar_radius(-9.0)
    (0.5, 1.0, 0.0)
    """
    return min(1.0, max(0.0, 0.5 + z / (2 * RADAR_Z)))


def _oriented(z: list[float]) -> list[float]:
    return [-z[0], *z[1:]]  # days since the last purchase: fewer is "more", like every other axis


class Source(Protocol):
    """What the explorer reads: ``server.worker.core.ProfileCore`` (one worker, in this process) or
    ``server.cluster.routed.RoutedCore`` (worker actors)."""

    ids: Pseudonymizer

    async def get_profile(self, user_id: str) -> dict[str, Any]: ...

    async def score(self, user_id: str, candidates: list[tuple[str, str, float]]) -> list[tuple[str, float]]: ...

    async def recommend(self, user_id: str, k: int) -> list[tuple[str, float]]: ...

    async def inspect_user(self, stored: str, row: dict[str, Any]) -> UserDetail | None: ...

    async def inspect_population(self, show_ids: bool) -> PopulationPart: ...

    async def inspect_system(self) -> SystemPart: ...


@dataclass
class UserView:
    """The user page: GetProfile's row plus what only the worker holds."""

    row: dict[str, Any]
    segment: Segment | None
    activity: list[list[int]]
    recent: list[tuple[float, EventType, str, str, float]]
    radar: list[tuple[str, str, list[float]]]
    radar_z: dict[str, list[float]]
    scores: list[tuple[str, float]]
    scored_from: int
    recommended: list[tuple[str, float]]


@dataclass
class PopulationView:
    """The home page's population at a glance."""

    users: int
    segments: list[Segment]
    segment_sizes: list[int]
    tags: list[tuple[str, int]]
    recent_users: list[tuple[float, str]]
    as_of: float
    built_in_s: float
    events_per_s: float | None
    events_total: float
    pseudonymized: bool


@dataclass
class ModelsView:
    """The models page."""

    history: History
    now: Sample
    trainer_version: int
    window: dict[str, int]
    learnt_at: dict[str, float]
    started: float


@dataclass
class SystemView:
    """The system page."""

    history: History
    now: Sample
    users: int
    watermark: float
    timers_pending: int
    online_store_up: bool
    queue: dict[str, float]
    rejected: float
    started: float
    suppressed: int
    workers: int = 1
    workers_answering: int = 1


@dataclass
class _Built:
    segments: list[Segment] = field(default_factory=list)
    tags: list[tuple[str, int]] = field(default_factory=list)
    recent_users: list[tuple[float, str]] = field(default_factory=list)
    users: int = 0
    as_of: float = 0.0
    seconds: float = 0.0


class Explorer:
    """The explorer's reads of one server (``core``; its metrics in ``registry``, the one ``/metrics`` serves), and
    its own small state: the history of samples and the population summary's cache."""

    def __init__(self, core: Source, registry: CollectorRegistry, history_interval_s: float = 60.0) -> None:
        self.core = core
        self.registry = registry
        self.history = History()
        self.history_interval_s = history_interval_s
        self.started = time.time()
        self._built: _Built | None = None
        self._building: asyncio.Task[_Built] | None = None

    # -- sampling ---------------------------------------------------------------------------------
    async def _now(self) -> tuple[Sample, SystemPart]:
        counters = await self.core.inspect_system()
        return read(collect(self.registry), time.time(), counters.trainer_version), counters

    async def sample(self) -> Sample:
        """The server's metrics now (not kept)."""
        return (await self._now())[0]

    async def run_sampler(self) -> None:
        """Sample every ``history_interval_s`` (the first at once), for ever (cancelled at stop)."""
        while True:
            self.history.add(await self.sample())
            await asyncio.sleep(self.history_interval_s)

    def live_rate(self, now: Sample) -> float | None:
        """Accepted events per second since the latest kept sample (or the latest interval's rate)."""
        if self.history.samples:
            last = self.history.samples[-1]
            if now.t - last.t >= 1.0:
                return max(0.0, now.events - last.events) / (now.t - last.t)
        return self.history.events_per_s()

    # -- one user ---------------------------------------------------------------------------------
    async def user(self, user_id: str) -> UserView:
        """The user page's data; ``NotFound`` for an unknown or erased user, ``InvalidArgument`` for a bad id,
        ``Unavailable`` when the online store (or the user's worker) cannot be read (GetProfile's errors)."""
        core = self.core
        row = await core.get_profile(user_id)  # what GetProfile returns (validates and maps the id)
        detail = await core.inspect_user(core.ids.map(user_id), row)
        if detail is None:
            raise NotFound("no profile for this user_id", field="user_id")  # erased meanwhile
        z_user = _oriented(detail.scaled)
        seg = int(row["segment"]) if row.get("segment") is not None else -1
        radar_z = {"population": [0.0] * len(RADAR_AXES), "user": z_user}
        series = [("population (mean)", "population", [radar_radius(0.0)] * len(RADAR_AXES))]
        if detail.center is not None:
            radar_z["segment"] = _oriented(detail.center)
            series.append((f"segment {seg} centre", "segment", [radar_radius(z) for z in radar_z["segment"]]))
        series.append(("this user", "user", [radar_radius(z) for z in z_user]))
        candidates: dict[str, tuple[str, str, float]] = {}
        for _, _, item, category, price in detail.recent:
            if item and item not in candidates and len(candidates) < MAX_SCORED:
                candidates[item] = (item, category, price)
        scores = await core.score(user_id, list(candidates.values())) if candidates else []
        recommended = await core.recommend(user_id, RECOMMENDED)
        segment = None
        if self._built is not None:
            segment = next((s for s in self._built.segments if s.id == seg), None)
        return UserView(row=row, segment=segment, activity=detail.activity, recent=detail.recent, radar=series,
                        radar_z=radar_z, scores=scores, scored_from=len(candidates), recommended=recommended)

    # -- the population ---------------------------------------------------------------------------
    async def population(self) -> PopulationView:
        """The home page's data (the population summary may be up to its time-to-live old)."""
        built = await self._population()
        now, counters = await self._now()
        return PopulationView(users=counters.users, segments=built.segments, segment_sizes=counters.segment_sizes,
                              tags=built.tags, recent_users=built.recent_users, as_of=built.as_of,
                              built_in_s=built.seconds, events_per_s=self.live_rate(now), events_total=now.events,
                              pseudonymized=self.core.ids.enabled)

    async def segments(self) -> list[Segment]:
        """The segments in words (``portrait segments``' report, over the live profiles)."""
        return (await self._population()).segments

    async def _population(self) -> _Built:
        built = self._built
        if built is not None and time.time() - built.as_of < max(POPULATION_TTL_S, 20 * built.seconds):
            return built
        if self._building is None or self._building.done():
            if self._building is not None and not self._building.cancelled() and self._building.exception():
                log.warning("the population summary could not be built (%s); kept the one of %s, trying again",
                            type(self._building.exception()).__name__, time.ctime(built.as_of) if built else "-")
            self._building = asyncio.get_running_loop().create_task(self._build())
        if built is not None:
            return built  # a fresh one is on its way; this one says how old it is
        return await asyncio.shield(self._building)

    async def _build(self) -> _Built:
        t0 = time.monotonic()
        as_of = time.time()
        # pseudonyms are never shown: the raw id is not known here
        part = await self.core.inspect_population(show_ids=not self.core.ids.enabled)
        built = _Built(segments=summarize(part.summaries),
                       tags=sorted(part.tags.items(), key=lambda kv: (-kv[1], kv[0])),
                       recent_users=part.recent_users, users=len(part.summaries), as_of=as_of,
                       seconds=time.monotonic() - t0)
        self._built = built
        return built

    # -- models and system ------------------------------------------------------------------------
    async def models(self) -> ModelsView:
        """The models page's data."""
        now, counters = await self._now()
        return ModelsView(history=self.history, now=now, trainer_version=counters.trainer_version,
                          window=dict(counters.windows), learnt_at=dict(self.history.learnt_at),
                          started=self.started)

    async def system(self) -> SystemView:
        """The system page's data."""
        c = await self.core.inspect_system()
        samples = collect(self.registry)
        now = read(samples, time.time(), c.trainer_version)
        return SystemView(
            history=self.history, now=now, users=c.users, watermark=c.watermark, timers_pending=c.timers_pending,
            online_store_up=c.online_store_up,
            queue={q: total(samples, "portrait_queue_depth", {"queue": q}) for q in QUEUES},
            rejected=total(samples, "portrait_rejected_total", {}), started=self.started,
            suppressed=c.suppressed, workers=c.workers + c.unanswered, workers_answering=c.workers,
        )
