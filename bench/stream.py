"""The benchmark's input: one seeded synthetic event stream, the same for every contender.

Made once by ``server.tools.simulate`` and pickled to a file that every process loads.
Phases that must not collide (rounds against one long-lived server) use a *variant*:
the same events with prefixed user/event ids and event times shifted by whole
"slots" (the span of the stream plus a day), so every round is a fresh set of users
that arrives later in event time than the previous one.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from server.domain.events import Event, EventType
from server.domain.units import DAY, HOUR
from server.tools.simulate import START, simulate

MAX_SLOTS = 48  # variants per run (rounds x phases); event times must stay in the past


def stream_start(days: int, now: float | None = None) -> float:
    """Where the stream starts: ``server.tools.simulate.START`` if every shifted variant stays in the past,
    else a day-aligned time far enough back (same hours of day, same promotion days)."""
    now = time.time() if now is None else now
    need = (days + 1) * DAY * (MAX_SLOTS + 1)
    if START + need < now:
        return START
    return math.floor(now / DAY) * DAY - need


def generate(users: int, days: int, seed: int) -> list[Event]:
    """The base stream: ``simulate(users, days, seed)`` in event-time order."""
    return list(simulate(users=users, days=days, seed=seed, start=stream_start(days)))


def slot_span(events: Sequence[Event]) -> float:
    """Shift between two slots: the stream's span rounded up to days, plus one day."""
    if not events:
        return DAY
    first, last = float(events[0].event_time or 0.0), float(events[-1].event_time or 0.0)
    return (math.ceil((last - first) / DAY) + 1) * DAY


def variant(events: Iterable[Event], prefix: str, shift_s: float = 0.0, users: str = "prefix") -> list[Event]:
    """The same events with ``prefix`` on event and session ids and times + ``shift_s``; user ids get
    the prefix too (``users="prefix"``), stay (``"keep"``) or are one per event (``"unique"``: ``<prefix>n<i>``)."""
    out = []
    for i, e in enumerate(events):
        user = {"prefix": prefix + e.user_id, "keep": e.user_id, "unique": f"{prefix}n{i}"}[users]
        out.append(Event(
            event_id=prefix + e.event_id, user_id=user, type=e.type,
            event_time=None if e.event_time is None else e.event_time + shift_s,
            item_id=e.item_id, category=e.category, price=e.price, quantity=e.quantity,
            session_id=(prefix + e.session_id) if e.session_id else "", query=e.query, context=dict(e.context),
        ))
    return out


def remap_users(events: Iterable[Event], population: int, prefix: str) -> list[Event]:
    """Map each simulated user (``u00042``) coherently onto one of ``population`` users ``<prefix><k>``
    (a multiplicative hash, so the active users are spread over the population)."""
    out = []
    for e in events:
        k = (int(e.user_id.lstrip("u")) * 2_654_435_761) % population
        out.append(Event(
            event_id=prefix + e.event_id, user_id=f"{prefix}{k}", type=e.type, event_time=e.event_time,
            item_id=e.item_id, category=e.category, price=e.price, quantity=e.quantity,
            session_id=e.session_id, query=e.query, context=dict(e.context),
        ))
    return out


def population_events(population: int, prefix: str, end_time: float, seed_items: int = 500) -> Iterable[Event]:
    """One VIEW per user of a population (untimed warm-up), spread over a day ending 2 h before ``end_time``
    (so an event at ``end_time`` moves the watermark past every propensity decision they made)."""
    step = DAY / max(population, 1)
    t0 = end_time - DAY - 2 * HOUR
    for k in range(population):
        yield Event(event_id=f"{prefix}w{k}", user_id=f"{prefix}{k}", type=EventType.VIEW, event_time=t0 + k * step,
                    item_id=f"i-w-{k % seed_items:03d}", category=f"c{k % 20:02d}", price=10.0 + k % 90,
                    session_id=f"{prefix}{k}-w")


def fresh_strings(e: Event) -> Event:
    """A copy whose strings are new objects, as the server gets them from each request's protobuf
    (so memory measurements pay for per-user strings like the server does)."""
    def s(x: str) -> str:
        return (x + " ")[:-1] if x else x

    return Event(s(e.event_id), s(e.user_id), e.type, e.event_time, s(e.item_id), s(e.category), e.price,
                 e.quantity, s(e.session_id), s(e.query), {s(k): s(v) for k, v in e.context.items()})


def save(events: Sequence[Event], path: Path) -> None:
    """Pickle the events (the file every benchmark process loads)."""
    with open(path, "wb") as fh:
        pickle.dump(list(events), fh, protocol=pickle.HIGHEST_PROTOCOL)


def load(path: Path | str) -> list[Event]:
    """The events saved by ``save``."""
    with open(path, "rb") as fh:
        events: list[Event] = pickle.load(fh)
    return events
