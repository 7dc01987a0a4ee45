"""Offline evaluation of ``Recommend``: does the item a user buys next appear in its top k?

Replays an event file in event time through a fresh ``PartitionWorker`` (the server's own code). Just
before each purchase after the first ``static_days`` (the models' warm-up), it asks for the user's top
``k`` items — ``PartitionWorker.recommend``, what the Recommend RPC answers — and, for comparison:

- **popular**: the k most touched items over all (the trainer's ``TopItems``, as of that moment);
- **recent**: the k items the user touched most recently, most recent first;
- **candidates**: the recommender's candidates in the order they are generated (recent items, then
  co-visited, category and popular items), without the item model: what the ranking adds.

Metrics per purchase: hit (the bought item is in the list) and NDCG@k (``1 / log2(rank + 1)``, one relevant
item). A repeat purchase of the same item by the same user within 30 minutes counts once. Intervals are
paired bootstraps over users (the same resampled users for both lists).

>>> from server.tools.simulate import simulate
>>> r = evaluate_recommend(simulate(users=60, days=4, seed=1), static_days=2.0, bootstrap=20)
>>> r["purchases"] > 0 and set(r["lists"]) == {"recommend", "popular", "recent", "candidates"}
True
>>> 0.0 <= r["lists"]["recommend"]["hit"] <= 1.0
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from server.domain.events import Event, EventType, validate
from server.domain.profile import SESSION_GAP_S
from server.domain.units import DAY
from server.metrics import Metrics
from server.worker.partition import PartitionWorker, WorkerConfig

LISTS = ("recommend", "popular", "recent", "candidates")


def _gain(ranked: list[str], item: str) -> tuple[float, float]:
    """(hit, NDCG) of one relevant ``item`` in ``ranked``."""
    try:
        rank = ranked.index(item)
    except ValueError:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(rank + 2)


def evaluate_recommend(events: Iterable[Event], static_days: float = 3.0, k: int = 10, bootstrap: int = 200,
                       seed: int = 0, config: WorkerConfig | None = None, progress: bool = False) -> dict[str, Any]:
    """Replay ``events`` and score every list at each purchase; see the module docstring."""
    valid = sorted((e for e in events if validate(e, now=math.inf) is None),
                   key=lambda e: e.event_time)  # type: ignore[arg-type,return-value]
    worker = PartitionWorker(config or WorkerConfig(), Metrics())
    start = float(valid[0].event_time) + static_days * DAY if valid else 0.0  # type: ignore[arg-type]
    last_bought: dict[tuple[str, str], float] = {}
    users: list[str] = []
    gains: dict[str, list[tuple[float, float]]] = {name: [] for name in LISTS}
    items = worker.items
    it: Iterable[Event] = valid
    if progress:
        from tqdm import tqdm

        it = tqdm(valid, desc="recommend", unit="ev", unit_scale=True, leave=False)
    for e in it:
        t = float(e.event_time)  # type: ignore[arg-type]
        if e.type == EventType.PURCHASE and e.item_id and t >= start:
            key = (e.user_id, e.item_id)
            if t - last_bought.get(key, -math.inf) > SESSION_GAP_S:
                p = worker.profiles.get(e.user_id)
                top = p.top_categories() if p is not None and p.last_event is not None else []
                lists = {
                    "recommend": [i for i, _ in worker.recommend(e.user_id, k)],
                    "popular": worker.trainer.top_items.top("", k),
                    "recent": [i for i, _ in items.history.recent(e.user_id, k)],
                    "candidates": list(items.candidates(e.user_id, top, worker.trainer))[:k],
                }
                for name, ranked in lists.items():
                    gains[name].append(_gain(ranked, e.item_id))
                users.append(e.user_id)
            last_bought[key] = t
        worker.apply(e, score=False)
    return _summarize(users, gains, k, bootstrap, seed, len(valid))


def _summarize(users: list[str], gains: dict[str, list[tuple[float, float]]], k: int, bootstrap: int, seed: int,
               events: int) -> dict[str, Any]:
    arrays = {name: np.array(g, dtype=float).reshape(-1, 2) for name, g in gains.items()}
    out: dict[str, Any] = {"events": events, "purchases": len(users), "users": len(set(users)), "k": k,
                           "lists": {}, "lift": {}}
    for name, a in arrays.items():
        out["lists"][name] = {"hit": float(a[:, 0].mean()) if len(a) else None,
                              "ndcg": float(a[:, 1].mean()) if len(a) else None}
    if not users or bootstrap <= 0:
        return out
    codes = np.unique(np.array(users), return_inverse=True)[1]
    n_users = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    counts = np.bincount(codes, minlength=n_users).astype(float)
    sums = {name: np.stack([np.bincount(codes, weights=a[:, j], minlength=n_users) for j in (0, 1)])
            for name, a in arrays.items()}
    draws = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=bootstrap).astype(float)
    total = draws @ counts
    means = {name: (draws @ s.T) / total[:, None] for name, s in sums.items()}  # (bootstrap, 2): hit, ndcg
    for base in ("popular", "recent", "candidates"):
        diff = means["recommend"] - means[base]
        out["lift"][base] = {metric: {"mean": float(np.mean(diff[:, j])),
                                      "low": float(np.quantile(diff[:, j], 0.025)),
                                      "high": float(np.quantile(diff[:, j], 0.975))}
                             for j, metric in enumerate(("hit", "ndcg"))}
    return out


def format_table(r: dict[str, Any]) -> str:
    """The result as a small Markdown table."""
    k = r["k"]
    lines = [f"{r['purchases']:,} purchases of {r['users']:,} users ({r['events']:,} events); the bought item "
             f"in the top {k}:", "", f"| list | hit rate@{k} | NDCG@{k} | recommend − list, hit [95 %] | "
             f"recommend − list, NDCG [95 %] |", "|---|---|---|---|---|"]
    for name in LISTS:
        m = r["lists"][name]
        hit = "—" if m["hit"] is None else f"{m['hit']:.3f}"
        ndcg = "—" if m["ndcg"] is None else f"{m['ndcg']:.3f}"
        lift = r["lift"].get(name)
        cells = ["—", "—"] if lift is None else [
            f"{lift[x]['mean']:+.3f} [{lift[x]['low']:+.3f}, {lift[x]['high']:+.3f}]" for x in ("hit", "ndcg")]
        lines.append(f"| {name} | {hit} | {ndcg} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
