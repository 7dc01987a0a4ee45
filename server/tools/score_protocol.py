"""``portrait evaluate FILE --through-server``: Score measured the way a shop uses it, on a real server.

The protocol: a real Portrait server (gRPC on loopback, its embedded Redis, a temporary data dir) gets the
file's events in event-time order; just before each *view* after the first ``static_days``, the client asks
``Score(user, [the item being viewed])``. The label of that decision: the user bought that item within
``horizon_s`` after the view (known from the file). Nothing else is asked, so the number is what a shop
calling Score at page views would see.

On the same decisions, baselines that need no learning: ``heuristic`` (the user's history with the item
before the view — carted, then favorited, then viewed more often, ranks higher) and ``popular`` (the item's
purchases so far, by all users). The table gives each one's ROC AUC and, for Score minus each baseline, a
paired 95 % interval over users (bootstrap).

>>> decisions = [Decision("u", "a", 0.0, 0.9, 3.0, 1.0, True), Decision("u", "b", 1.0, 0.1, 0.0, 0.0, False),
...              Decision("v", "a", 2.0, 0.2, 0.0, 1.0, False), Decision("v", "c", 3.0, 0.8, 2.0, 0.0, True)]
>>> r = summarize(decisions, bootstrap=20)
>>> r["learners"]["score"]["roc_auc"], r["learners"]["heuristic"]["roc_auc"], r["decisions"], r["positives"]
(1.0, 1.0, 4, 2)
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.domain.events import Event, EventType, validate
from server.domain.units import DAY
from server.models.quality import roc_auc

BATCH = 500


@dataclass(frozen=True)
class Decision:
    """One Score call at a view, its answer, the baselines' scores and the label."""

    user: str
    item: str
    t: float
    score: float
    heuristic: float
    popular: float
    bought: bool


def _heuristic(carted: bool, favorited: bool, views: int) -> float:
    """The user's history with the item: carted > favorited > more views."""
    return 2.0 * carted + 1.0 * favorited + min(views, 99) / 100.0


def labels_for(events: Sequence[Event], horizon_s: float) -> dict[tuple[str, str], list[float]]:
    """(user, item) -> sorted purchase times (to label a view at t: a purchase in (t, t + horizon])."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.type == EventType.PURCHASE and e.item_id:
            out[e.user_id, e.item_id].append(float(e.event_time))  # type: ignore[arg-type]
    for times in out.values():
        times.sort()
    return out


def _bought(purchases: dict[tuple[str, str], list[float]], user: str, item: str, t: float, horizon_s: float) -> bool:
    times = purchases.get((user, item))
    if not times:
        return False
    i = bisect.bisect_right(times, t)
    return i < len(times) and times[i] <= t + horizon_s


def run(events: Iterable[Event], target: str, horizon_s: float = DAY, static_days: float = 3.0,
        progress: bool = False) -> list[Decision]:
    """Send ``events`` (valid ones, in event-time order) to the server at ``target``, asking Score before
    each view after ``static_days``; returns the decisions (a blocking client: run it off the server's loop)."""
    from server.api.client import PortraitClient
    from server.log.codec import event_to_proto

    now = time.time()
    evs = sorted((e for e in events if validate(e, now) is None), key=lambda e: float(e.event_time))  # type: ignore[arg-type]
    if not evs:
        return []
    purchases = labels_for(evs, horizon_s)
    start = float(evs[0].event_time) + static_days * DAY  # type: ignore[arg-type]
    history: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # carts, favorites, views
    bought_items: dict[str, int] = defaultdict(int)
    decisions: list[Decision] = []
    pending: list[Any] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(evs), desc="through the server", unit="event")
    with PortraitClient(target, timeout_s=60.0) as client:

        def flush() -> None:
            if pending:
                client.track_encoded(pending)
                if bar is not None:
                    bar.update(len(pending))
                pending.clear()

        for e in evs:
            t = float(e.event_time)  # type: ignore[arg-type]
            if e.type == EventType.VIEW and e.item_id and t >= start:
                flush()  # the server has every earlier event before it is asked
                ((_, p),) = client.score(e.user_id, [(e.item_id, e.category, e.price)])
                carts, favorites, views = history[e.user_id, e.item_id]
                decisions.append(Decision(e.user_id, e.item_id, t, p,
                                          _heuristic(carts > 0, favorites > 0, views), float(bought_items[e.item_id]),
                                          _bought(purchases, e.user_id, e.item_id, t, horizon_s)))
            pending.append(event_to_proto(e))
            if len(pending) >= BATCH:
                flush()
            if e.item_id:
                h = history[e.user_id, e.item_id]
                if e.type == EventType.ADD_TO_CART:
                    h[0] += 1
                elif e.type == EventType.FAVORITE:
                    h[1] += 1
                elif e.type == EventType.VIEW:
                    h[2] += 1
                elif e.type == EventType.PURCHASE:
                    bought_items[e.item_id] += 1
        flush()
    if bar is not None:
        bar.close()
    return decisions


def summarize(decisions: Sequence[Decision], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """ROC AUC of Score and the baselines on the same decisions, and paired intervals over users."""
    y = np.array([d.bought for d in decisions], dtype=bool)
    preds = {"score": np.array([d.score for d in decisions]), "heuristic": np.array([d.heuristic for d in decisions]),
             "popular": np.array([d.popular for d in decisions])}
    users = np.array([d.user for d in decisions])
    out: dict[str, Any] = {"decisions": len(decisions), "positives": int(y.sum()), "users": len(set(users.tolist())),
                           "learners": {k: {"roc_auc": roc_auc(v, y)} for k, v in preds.items()}}
    groups = {u: np.flatnonzero(users == u) for u in set(users.tolist())}
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {k: [] for k in preds if k != "score"}
    for _ in range(bootstrap):
        pick = np.concatenate([groups[u] for u in rng.choice(names, len(names))])
        yy = y[pick]
        if yy.all() or not yy.any():
            continue
        base = roc_auc(preds["score"][pick], yy)
        for k in diffs:
            diffs[k].append(base - roc_auc(preds[k][pick], yy))
    for k, ds in diffs.items():
        lo, hi = (np.percentile(ds, [2.5, 97.5]).tolist() if ds else [math.nan, math.nan])
        out["learners"][k]["score_minus_this"] = {"mean": float(np.mean(ds)) if ds else math.nan, "ci95": [lo, hi]}
    return out


def format_table(r: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    lines = [f"Score at views, through a real server: {r['decisions']} decisions ({r['positives']} bought within the "
             f"horizon) of {r['users']} users", "",
             "| learner | ROC AUC | Score - this (95% CI over users) |", "|---|---|---|"]
    for k, v in r["learners"].items():
        d = v.get("score_minus_this")
        ci = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "-"
        lines.append(f"| {k} | {v['roc_auc']:.3f} | {ci} |")
    return "\n".join(lines)


def evaluate_through_server(path: str, horizon_s: float = DAY, static_days: float = 3.0, bootstrap: int = 200,
                            progress: bool = False) -> dict[str, Any]:
    """Start a server on loopback (embedded Redis, a temporary data dir), run the protocol on the event file,
    stop the server; returns ``summarize``'s result."""
    from server.app import PortraitServer
    from server.config import Settings
    from server.store.feast import FEAST_ENV_VARS
    from server.tools.eventfile import read_events

    events = list(read_events(Path(path)))
    with tempfile.TemporaryDirectory(prefix="portrait-through-server-") as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp), grpc_port=0, metrics_port=0, ui_port=0,  # type: ignore[call-arg]
                            embedded_redis_port=0, redis_url=None, feast_redis=None, redis_cluster=False,
                            log_level="WARNING")

        async def main() -> list[Decision]:
            srv = PortraitServer(settings)
            await srv.start()
            try:
                return await asyncio.to_thread(run, events, f"127.0.0.1:{srv.grpc_port}", horizon_s, static_days,
                                               progress)
            finally:
                await srv.stop()

        saved = {k: v for k, v in os.environ.items() if k in FEAST_ENV_VARS}
        try:
            decisions = asyncio.run(main())
        finally:  # the server exported its (temporary) data dir for Feast: put the caller's back
            for k in FEAST_ENV_VARS:
                os.environ.pop(k, None)
            os.environ.update(saved)
    result = summarize(decisions, bootstrap)
    result.update(protocol="through-server", horizon_s=horizon_s, static_days=static_days, file=str(path))
    return result
