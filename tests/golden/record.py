"""Outputs of the pipeline on a seeded simulated shop, recorded so that a re-house of the code can be
checked to change none of them (``tests/unit/worker/test_golden.py``).

``python -m tests.golden.record`` rewrites ``tests/golden/shop.json.gz`` — only when a change is MEANT to
change outputs (say which, and why, in the commit). Floats are kept as ``repr`` strings: equal means equal
to the last bit.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from server.domain.events import Event
from server.metrics import Metrics
from server.tools.simulate import simulate
from server.worker.partition import PartitionWorker, WorkerConfig

PATH = Path(__file__).with_name("shop.json.gz")
USERS, DAYS, DRIFT_DAY, SEED = 250, 6, 3, 11
SCORED_USERS = 25


def _f(x: float) -> str:
    return repr(float(x))


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return _f(v)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def outputs(events: list[Event] | None = None) -> dict[str, Any]:
    """Per-event outcomes (version, propensity, segment, duplicate), every user's final row, Score for a
    fixed candidate list, and the totals the pipeline keeps."""
    evs = events if events is not None else list(simulate(users=USERS, days=DAYS, drift_day=DRIFT_DAY, seed=SEED))
    p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    per_event = []
    for i, e in enumerate(evs):
        if i % 97 == 0:  # a resent event: must stay a duplicate
            dup = Event(**{k: getattr(e, k) for k in Event.__slots__})  # type: ignore[attr-defined]
            evs_dup = [dup]
        else:
            evs_dup = []
        for x in (e, *evs_dup):
            if p.check(x, now=x.event_time) is not None:  # type: ignore[arg-type]
                per_event.append(["rejected"])
                continue
            out = p.apply(x, score=(i % 3 != 0))  # bulk (unscored) and unary (scored) paths alike
            per_event.append([out.duplicate, out.version, _f(out.propensity), out.segment])
    users = sorted(p.profiles)
    rows = {u: {k: _jsonable(v) for k, v in sorted(p.row(u).items()) if k != "event_timestamp_us"} for u in users}
    items = sorted({e.item_id for e in evs if e.item_id})[:40]
    cats = {e.item_id: e.category for e in evs if e.item_id}
    candidates = [(it, cats.get(it, ""), float(10 + 7 * n)) for n, it in enumerate(items)]
    scores = {u: [[it, _f(s)] for it, s in p.score(u, candidates)] for u in users[:SCORED_USERS]}
    scores["(cold start)"] = [[it, _f(s)] for it, s in p.score("never-seen", candidates)]
    return {"events": len(evs), "per_event": per_event, "rows": rows, "scores": scores}


def main() -> None:
    data = outputs()
    with gzip.open(PATH, "wt") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True)
    print(f"wrote {PATH} ({data['events']} events, {len(data['rows'])} users)")


if __name__ == "__main__":
    main()
