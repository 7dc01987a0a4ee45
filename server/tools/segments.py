"""``portrait segments``: what each KMeans segment means, in human terms.

A segment id is the index of a KMeans centre (``server.models.user.Segmenter``): stable, since centres
move but keep their index. For each segment with users this reports, from the users' profiles
(as of the latest event time seen, like every profile feature):

* ``users`` and their share; ``recency_days`` (mean days since the user's last event) and
  ``days_since_purchase`` (mean over the users who ever bought, ``None`` if none did);
* frequency: mean ``events_30d``, ``sessions_7d``, ``purchases_30d``; the share of ``buyers_30d``;
* money: mean ``spend_30d`` and ``avg_order_value`` (over buyers);
* ``top_categories``: the categories most often first in the users' top categories, with counts;
* a ``name`` made of words comparing the segment with all segmented users (``NAME_RATIO`` = 1.5):
  recency (``active`` when the mean recency is at most 1/1.5 of the overall mean, ``lapsed`` when at
  least 1.5 times it), frequency (``frequent`` / ``occasional``: events_30d at least 1.5 times / at
  most 1/1.5 of the overall mean) and money (``big spenders`` at twice the overall spend_30d, ``buyers``
  when at least the overall share bought in 30 days, else ``browsers``).

>>> from server.domain.events import Event, EventType
>>> from server.metrics import Metrics
>>> from server.models.trainer import TrainerConfig
>>> from server.worker.partition import PartitionWorker, WorkerConfig
>>> p = PartitionWorker(WorkerConfig(trainer=TrainerConfig(segments=2)), Metrics())
>>> for i in range(40):
...     kind = EventType.PURCHASE if i % 2 else EventType.VIEW
...     _ = p.apply(Event(f"e{i}", f"u{i % 4}", kind, 1e9 + 60 * i, item_id="i", category="shoes", price=30.0))
>>> report = segment_report(p)
>>> sum(s.users for s in report), {c for s in report for c, _ in s.top_categories}
(4, {'shoes'})
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.domain.units import DAY
from server.metrics import Metrics
from server.worker.inspect import profile_summary
from server.worker.partition import PartitionWorker, WorkerConfig

NAME_RATIO = 1.5


@dataclass(frozen=True)
class Segment:
    """One segment's summary (means over its users)."""

    id: int
    name: str
    users: int
    share: float
    recency_days: float
    days_since_purchase: float | None
    events_30d: float
    sessions_7d: float
    purchases_30d: float
    buyers_30d: float
    spend_30d: float
    avg_order_value: float | None
    top_categories: list[tuple[str, int]]


def from_events(path: str, progress: bool = False) -> PartitionWorker:
    """A fresh worker with every valid event of the file applied (in event-time order)."""
    from server.tools.evaluate import apply_events
    from server.tools.eventfile import read_events

    worker = PartitionWorker(WorkerConfig(), Metrics())
    apply_events(worker, read_events(path), progress)
    return worker


def from_checkpoint(data_dir: str) -> PartitionWorker | None:
    """A worker holding the state of the newest valid checkpoint under ``data_dir`` (None if there is none).

    That is the server's state at its last checkpoint (every ``PORTRAIT_CHECKPOINT_INTERVAL_S``), without
    the log records after it. Reading it does not disturb a running server.
    """

    from server.log.checkpoint import load_latest
    from server.worker import snapshot

    found = load_latest(Path(data_dir) / "checkpoints")
    if found is None:
        return None
    worker = PartitionWorker(WorkerConfig(), Metrics())
    snapshot.restore(worker, snapshot.loads(found[1], found[0]))
    return worker


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def segment_report(worker: PartitionWorker, top: int = 3) -> list[Segment]:
    """Summaries of the segments that have users, by id."""
    return summarize([s for p in worker.profiles.values() if (s := profile_summary(p)) is not None], top)


def summarize(summaries: list[dict[str, Any]], top: int = 3) -> list[Segment]:
    """The segments of ``profile_summary`` rows, as of the latest event among them (the explorer builds the
    rows a slice at a time, the command in one go)."""
    now = max((r["last"] for r in summaries), default=0.0)
    rows: dict[int, list[dict[str, Any]]] = {}
    for r in summaries:
        rows.setdefault(r["segment"], []).append({
            "recency": (now - r["last"]) / DAY,
            "since_purchase": (now - r["last_purchase"]) / DAY if r["last_purchase"] is not None else None,
            "events": r["events"], "sessions": r["sessions"], "purchases": r["purchases"], "spend": r["spend"],
            "aov": r["aov"], "top": r["top"],
        })
    everyone = [r for rs in rows.values() for r in rs]
    total = len(everyone)
    overall = {k: _mean([r[k] for r in everyone]) or 0.0 for k in ("recency", "events", "spend")}
    overall_buyers = _mean([1.0 if r["purchases"] > 0 else 0.0 for r in everyone]) or 0.0
    out = []
    for sid in sorted(rows):
        rs = rows[sid]
        mean = {k: _mean([r[k] for r in rs if r[k] is not None]) for k in rs[0] if k != "top"}
        buyers = sum(1 for r in rs if r["purchases"] > 0) / len(rs)
        tops = Counter(r["top"] for r in rs if r["top"]).most_common(top)
        out.append(Segment(
            id=sid, name=_name(mean, buyers, overall, overall_buyers), users=len(rs), share=len(rs) / total,
            recency_days=mean["recency"] or 0.0, days_since_purchase=mean["since_purchase"],
            events_30d=mean["events"] or 0.0, sessions_7d=mean["sessions"] or 0.0,
            purchases_30d=mean["purchases"] or 0.0, buyers_30d=buyers, spend_30d=mean["spend"] or 0.0,
            avg_order_value=mean["aov"], top_categories=tops,
        ))
    return out


def _name(mean: dict[str, float | None], buyers: float, overall: dict[str, float], overall_buyers: float) -> str:
    words = []
    recency, events, spend = mean["recency"] or 0.0, mean["events"] or 0.0, mean["spend"] or 0.0
    if recency <= overall["recency"] / NAME_RATIO:
        words.append("active")
    elif recency >= NAME_RATIO * overall["recency"] > 0:
        words.append("lapsed")
    if events >= NAME_RATIO * overall["events"] > 0:
        words.append("frequent")
    elif events <= overall["events"] / NAME_RATIO:
        words.append("occasional")
    if spend >= 2 * overall["spend"] > 0:
        words.append("big spenders")
    elif buyers >= overall_buyers and buyers > 0:
        words.append("buyers")
    else:
        words.append("browsers")
    return " ".join(words)


def to_json(segments: list[Segment]) -> list[dict[str, Any]]:
    """The report as JSON-ready dicts (categories as [name, users] pairs)."""
    return [dict(asdict(s), top_categories=[list(c) for c in s.top_categories]) for s in segments]


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def format_report(segments: list[Segment]) -> str:
    """One paragraph per segment, in words and numbers."""
    if not segments:
        return "no segmented users"
    lines = []
    for s in segments:
        cats = ", ".join(f"{c} ({n})" for c, n in s.top_categories) or "-"
        lines.append(
            f"segment {s.id}: {s.name} - {s.users} users ({100 * s.share:.0f}%)\n"
            f"  recency: last event {_num(s.recency_days)} days ago, "
            + (f"last purchase {_num(s.days_since_purchase)} days ago (those who bought)\n"
               if s.days_since_purchase is not None else "never bought\n") +
            f"  frequency: {_num(s.events_30d)} events / 30 d, {_num(s.sessions_7d)} sessions / 7 d, "
            f"{_num(s.purchases_30d, 2)} purchases / 30 d, {100 * s.buyers_30d:.0f}% bought in 30 d\n"
            f"  money: spend {_num(s.spend_30d, 2)} / 30 d, average order {_num(s.avg_order_value, 2)}\n"
            f"  top categories: {cats}"
        )
    return "\n".join(lines)
