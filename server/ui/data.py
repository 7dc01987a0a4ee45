"""What the explorer's pages show, read from the running server on its event loop.

Every coroutine here runs on the server's loop (the HTTP threads submit them with
``asyncio.run_coroutine_threadsafe``), so it reads the worker's state between two events, like the gRPC
servicer does. The profile card is ``ProfileCore.get_profile`` — the row GetProfile serves, read through
Feast's online store — and Score and Recommend results are ``ProfileCore.score`` and
``ProfileCore.recommend``, the functions the gRPC servicer calls:
one source for every number a client also sees. What GetProfile does not carry (the activity histogram,
the recent events, the category breadth for the radar) comes from the worker's in-memory profile of the
same user.

Population figures (segments in words, tag counts) need every profile: ``Population`` builds them a slice
of ``SLICE`` profiles at a time with the loop free in between, at most every ``max(POPULATION_TTL_S,
20 x the last build's duration)`` (so even a huge population costs the loop under 5 %), and pages show
the time they are as of.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.domain.errors import NotFound
from server.domain.events import EventType
from server.domain.profile import FEATURE_NAMES
from server.metrics import QUEUES
from server.models.trainer import ITEM, PROPENSITY
from server.models.user import SEGMENT_INPUTS, Segmenter
from server.tools.segments import Segment, profile_summary, summarize
from server.ui.history import History, Sample, read
from server.worker.core import ProfileCore

SLICE = 1000
POPULATION_TTL_S = 30.0
RECENT_USERS = 12
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


@dataclass
class _Built:
    segments: list[Segment] = field(default_factory=list)
    tags: list[tuple[str, int]] = field(default_factory=list)
    recent_users: list[tuple[float, str]] = field(default_factory=list)
    users: int = 0
    as_of: float = 0.0
    seconds: float = 0.0


class Explorer:
    """The explorer's reads of one server (``core``), and its own small state: the history of samples and the
    population summary's cache."""

    def __init__(self, core: ProfileCore, history_interval_s: float = 60.0) -> None:
        self.core = core
        self.history = History()
        self.history_interval_s = history_interval_s
        self.started = time.time()
        self._built: _Built | None = None
        self._building: asyncio.Task[_Built] | None = None

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self) -> Sample:
        """The server's metrics now (not kept)."""
        w = self.core.worker
        return read(w.metrics.registry, time.time(), w.trainer.version)

    async def run_sampler(self) -> None:
        """Sample every ``history_interval_s`` (the first at once), for ever (cancelled at stop)."""
        while True:
            self.history.add(self.sample())
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
        ``Unavailable`` when the online store cannot be read (GetProfile's errors)."""
        core = self.core
        row = await core.get_profile(user_id)  # what GetProfile returns (validates and maps the id)
        stored = core.ids.map(user_id)
        worker = core.worker
        if worker.erasures.suppressed and worker.erasures.is_suppressed(stored):
            raise NotFound("no profile for this user_id", field="user_id")  # erased meanwhile
        p = worker.profiles.get(stored)
        activity = p.activity() if p is not None else [[0] * 24 for _ in range(7)]
        recent = p.recent_events() if p is not None else []
        segmenter = worker.trainer.segmenter
        features = {n: float(row.get(n) or 0.0) for n in FEATURE_NAMES}
        as_of = float(row.get("as_of_ts") or row.get("updated_at_ts") or 0.0)
        z_user = _oriented(segmenter.scale(Segmenter.vector(features, p.category_count() if p else 0, as_of)))
        seg = int(row["segment"]) if row.get("segment") is not None else -1
        radar_z = {"population": [0.0] * len(RADAR_AXES), "user": z_user}
        series = [("population (mean)", "population", [radar_radius(0.0)] * len(RADAR_AXES))]
        if 0 <= seg < len(segmenter.centers):
            radar_z["segment"] = _oriented(segmenter.centers[seg])
            series.append((f"segment {seg} centre", "segment", [radar_radius(z) for z in radar_z["segment"]]))
        series.append(("this user", "user", [radar_radius(z) for z in z_user]))
        candidates: dict[str, tuple[str, str, float]] = {}
        for _, _, item, category, price in recent:
            if item and item not in candidates and len(candidates) < MAX_SCORED:
                candidates[item] = (item, category, price)
        scores = await core.score(user_id, list(candidates.values())) if candidates else []
        recommended = await core.recommend(user_id, RECOMMENDED)
        segment = None
        if self._built is not None:
            segment = next((s for s in self._built.segments if s.id == seg), None)
        return UserView(row=row, segment=segment, activity=activity, recent=recent, radar=series, radar_z=radar_z,
                        scores=scores, scored_from=len(candidates), recommended=recommended)

    # -- the population ---------------------------------------------------------------------------
    async def population(self) -> PopulationView:
        """The home page's data (the population summary may be up to its time-to-live old)."""
        built = await self._population()
        w = self.core.worker
        now = self.sample()
        return PopulationView(users=len(w.profiles), segments=built.segments, segment_sizes=list(w.segment_sizes),
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
            self._building = asyncio.get_running_loop().create_task(self._build())
        if built is not None:
            return built  # a fresh one is on its way; this one says how old it is
        return await asyncio.shield(self._building)

    async def _build(self) -> _Built:
        w = self.core.worker
        t0 = time.monotonic()
        as_of = time.time()
        users = list(w.profiles.items())
        rules = w.config.tag_rules
        summaries: list[dict[str, Any]] = []
        tags: Counter[str] = Counter()
        recent: list[tuple[float, str]] = []
        show_ids = not self.core.ids.enabled  # pseudonyms are never shown: the raw id is not known here
        for start in range(0, len(users), SLICE):
            for user, p in users[start:start + SLICE]:
                if w.profiles.get(user) is not p:
                    continue  # erased (or replaced) since the slice began
                s = profile_summary(p)
                if s is None:
                    continue
                summaries.append(s)
                current = p.current
                row_tags = p.tags(p.features(current), rules, current)
                if w.risk.user_risk(user, current) >= w.risk.threshold:
                    row_tags.append("suspicious")
                tags.update(row_tags)
                if show_ids:
                    item = (p.updated_at, user)
                    if len(recent) < RECENT_USERS:
                        heapq.heappush(recent, item)
                    elif item > recent[0]:
                        heapq.heapreplace(recent, item)
            await asyncio.sleep(0)
        built = _Built(segments=summarize(summaries), tags=sorted(tags.items(), key=lambda kv: (-kv[1], kv[0])),
                       recent_users=sorted(recent, reverse=True), users=len(summaries), as_of=as_of,
                       seconds=time.monotonic() - t0)
        self._built = built
        return built

    # -- models and system ------------------------------------------------------------------------
    def models(self) -> ModelsView:
        """The models page's data."""
        t = self.core.worker.trainer
        return ModelsView(history=self.history, now=self.sample(), trainer_version=t.version,
                          window={PROPENSITY: len(t.propensity_quality), ITEM: len(t.item_quality)},
                          learnt_at=dict(self.history.learnt_at), started=self.started)

    def system(self) -> SystemView:
        """The system page's data."""
        core = self.core
        w = core.worker
        reg = w.metrics.registry

        def gauge(name: str, labels: dict[str, str] | None = None) -> float:
            v = reg.get_sample_value(name, labels or {})
            return math.nan if v is None else v

        rejected = sum(s.value for m in w.metrics.rejected.collect() for s in m.samples if s.name.endswith("_total"))
        return SystemView(
            history=self.history, now=self.sample(), users=len(w.profiles), watermark=w.watermark,
            timers_pending=len(w.timers), online_store_up=core.materializer.online_healthy,
            queue={q: gauge("portrait_queue_depth", {"queue": q}) for q in QUEUES},
            rejected=rejected, started=self.started, suppressed=len(w.erasures.suppressed),
        )
