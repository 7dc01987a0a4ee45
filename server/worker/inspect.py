"""What the explorer reads of one worker's memory, as plain values a worker actor can send to the front end.

The explorer (``server.ui``) shows what GetProfile cannot carry: a user's activity histogram, recent events
and radar inputs (``user_detail``), the population's segment summaries and tags (``population_part``) and the
worker's counters (``system_part``). With one worker the explorer calls these on the worker in its own process;
with ``PORTRAIT_WORKERS`` > 1 each worker actor computes them over its own users and the front end merges the
parts (``merge_population``, ``merge_system``): the same pages, whichever process holds the users.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.domain.events import EventType
from server.domain.profile import FEATURE_NAMES, UserProfile
from server.models.trainer import ITEM, PROPENSITY
from server.models.user import Segmenter
from server.worker.partition import PartitionWorker

SLICE = 1000  # profiles summarized between two yields to the event loop
RECENT_USERS = 12  # the most recently active users the home page links to


def profile_summary(p: UserProfile) -> dict[str, Any] | None:
    """What the segment report takes from one profile (None: not segmented yet); times are absolute
    (``server.tools.segments.summarize`` makes them relative to the latest event seen)."""
    if p.segment < 0 or p.last_event is None:
        return None
    f = p.features()
    cats = p.top_categories(1)
    return {
        "segment": p.segment, "last": p.updated_at, "last_purchase": p.last_purchase,
        "events": sum(f[f"{kind}_30d"] for kind in
                      ("views", "clicks", "carts", "remove_from_carts", "favorites", "purchases", "searches")),
        "sessions": f["sessions_7d"], "purchases": f["purchases_30d"], "spend": f["spend_30d"],
        "aov": f["avg_order_value"] if p.lifetime_purchases else None, "top": cats[0] if cats else None,
    }


@dataclass
class UserDetail:
    """One user as only the owning worker holds it."""

    activity: list[list[int]]
    """Events per day of week (rows) and hour (columns), the whole history."""
    recent: list[tuple[float, EventType, str, str, float]]
    """The latest events, newest first: (time, type, item, category, price)."""
    scaled: list[float]
    """The segment inputs of the row's features, in the segmenter's standard scores (``Segmenter.scale``)."""
    center: list[float] | None
    """The centre of the row's segment in the same scores (None: no such segment)."""


def user_detail(worker: PartitionWorker, stored: str, row: dict[str, Any]) -> UserDetail | None:
    """``stored``'s detail beside its online ``row`` (GetProfile's); None if the user is erased."""
    if worker.erasures.suppressed and worker.erasures.is_suppressed(stored):
        return None
    p = worker.profiles.get(stored)
    segmenter = worker.trainer.segmenter
    features = {n: float(row.get(n) or 0.0) for n in FEATURE_NAMES}
    as_of = float(row.get("as_of_ts") or row.get("updated_at_ts") or 0.0)
    scaled = segmenter.scale(Segmenter.vector(features, p.category_count() if p else 0, as_of))
    seg = int(row["segment"]) if row.get("segment") is not None else -1
    centers = segmenter.centers
    return UserDetail(activity=p.activity() if p is not None else [[0] * 24 for _ in range(7)],
                      recent=p.recent_events() if p is not None else [], scaled=list(scaled),
                      center=list(centers[seg]) if 0 <= seg < len(centers) else None)


@dataclass
class PopulationPart:
    """One worker's share of the home page's population summary."""

    summaries: list[dict[str, Any]] = field(default_factory=list)
    """``profile_summary`` of every segmented user."""
    tags: dict[str, int] = field(default_factory=dict)
    """Users per tag (with ``suspicious`` for the risk detector's)."""
    recent_users: list[tuple[float, str]] = field(default_factory=list)
    """(last update, stored id) of the most recently active users (empty when ids are not to be shown)."""


async def population_part(worker: PartitionWorker, show_ids: bool) -> PopulationPart:
    """Summarize ``worker``'s users, ``SLICE`` at a time with the event loop free in between."""
    users = list(worker.profiles.items())
    rules = worker.config.tag_rules
    summaries: list[dict[str, Any]] = []
    tags: Counter[str] = Counter()
    recent: list[tuple[float, str]] = []
    for start in range(0, len(users), SLICE):
        for user, p in users[start:start + SLICE]:
            if worker.profiles.get(user) is not p:
                continue  # erased (or replaced) since the slice began
            s = profile_summary(p)
            if s is None:
                continue
            summaries.append(s)
            current = p.current
            row_tags = p.tags(p.features(current), rules, current)
            if worker.risk.user_risk(user, current) >= worker.risk.threshold:
                row_tags.append("suspicious")
            tags.update(row_tags)
            if show_ids:
                item = (p.updated_at, user)
                if len(recent) < RECENT_USERS:
                    heapq.heappush(recent, item)
                elif item > recent[0]:
                    heapq.heapreplace(recent, item)
        await asyncio.sleep(0)
    return PopulationPart(summaries=summaries, tags=dict(tags), recent_users=sorted(recent, reverse=True))


def merge_population(parts: list[PopulationPart]) -> PopulationPart:
    """The whole population from the workers' parts: counts added, the most recent users of all.

    >>> a = PopulationPart([{"segment": 0}], {"buyer": 1}, [(5.0, "u1"), (1.0, "u2")])
    >>> b = PopulationPart([{"segment": 1}], {"buyer": 1, "vip": 1}, [(3.0, "u3")])
    >>> m = merge_population([a, b])
    >>> len(m.summaries), m.tags, m.recent_users
    (2, {'buyer': 2, 'vip': 1}, [(5.0, 'u1'), (3.0, 'u3'), (1.0, 'u2')])
    """
    out = PopulationPart()
    tags: Counter[str] = Counter()
    for part in parts:
        out.summaries.extend(part.summaries)
        tags.update(part.tags)
        out.recent_users.extend(part.recent_users)
    out.tags = dict(tags)
    out.recent_users = sorted(out.recent_users, reverse=True)[:RECENT_USERS]
    return out


@dataclass
class SystemPart:
    """One worker's counters for the system and models pages."""

    users: int = 0
    segment_sizes: list[int] = field(default_factory=list)
    """Users per segment."""
    watermark: float = 0.0
    """The latest event time applied."""
    timers_pending: int = 0
    suppressed: int = 0
    """Erased users whose events are refused."""
    online_store_up: bool = True
    trainer_version: int = 0
    """The models' version the worker scores with (messages learnt, summed over models)."""
    windows: dict[str, int] = field(default_factory=dict)
    """Resolved labels in each model's rolling quality window."""
    workers: int = 1
    """Workers these counters cover."""
    unanswered: int = 0
    """Workers that did not answer (their counters are missing)."""


def system_part(worker: PartitionWorker, online_store_up: bool) -> SystemPart:
    """``worker``'s counters now."""
    t = worker.trainer
    return SystemPart(users=len(worker.profiles), segment_sizes=list(worker.segment_sizes),
                      watermark=worker.watermark, timers_pending=len(worker.timers),
                      suppressed=len(worker.erasures.suppressed), online_store_up=online_store_up,
                      trainer_version=t.version,
                      windows={PROPENSITY: len(t.propensity_quality), ITEM: len(t.item_quality)})


def merge_system(parts: list[SystemPart], unanswered: int = 0) -> SystemPart:
    """The deployment's counters from the parts of the workers that answered: sums, the latest watermark, the
    newest model version, the store up only if every worker can write to it.

    >>> a = SystemPart(2, [1, 1], 10.0, 1, 0, True, 7, {"item": 3})
    >>> b = SystemPart(3, [0, 3], 12.0, 0, 1, False, 5, {"item": 4})
    >>> m = merge_system([a, b], unanswered=1)
    >>> m.users, m.segment_sizes, m.watermark, m.timers_pending, m.suppressed, m.online_store_up
    (5, [1, 4], 12.0, 1, 1, False)
    >>> m.trainer_version, m.windows, m.workers, m.unanswered
    (7, {'item': 7}, 2, 1)
    """
    out = SystemPart(workers=0, unanswered=unanswered)
    for part in parts:
        out.users += part.users
        out.workers += part.workers
        if len(out.segment_sizes) < len(part.segment_sizes):
            out.segment_sizes.extend([0] * (len(part.segment_sizes) - len(out.segment_sizes)))
        for i, n in enumerate(part.segment_sizes):
            out.segment_sizes[i] += n
        out.watermark = max(out.watermark, part.watermark)
        out.timers_pending += part.timers_pending
        out.suppressed += part.suppressed
        out.online_store_up = out.online_store_up and part.online_store_up
        out.trainer_version = max(out.trainer_version, part.trainer_version)
        for model, n in part.windows.items():
            out.windows[model] = out.windows.get(model, 0) + n
    return out
