"""In-process measurements of Portrait's own code (no gRPC, no Redis), one subprocess each.

``python -m bench.inproc limit --events F --rounds N``
    The limit: ``PartitionWorker.check`` + ``PartitionWorker.apply(e, score=False)`` over the events (what the
    server does per event in TrackBatch/TrackStream, minus transport and materialization),
    a fresh PartitionWorker per round. Prints events/s per round.
``python -m bench.inproc memory --users N --days D --seed S``
    RSS per user: a PartitionWorker fed the simulated stream of N users (events rebuilt with fresh
    strings, as from protobufs); VmRSS delta / users. The dedupe set is sized to 1 here (it is
    bounded by event count, not users) and measured separately, per remembered id.
``python -m bench.inproc scaling --events F --population N --rounds R``
    Events/s and RSS with N users in memory: N users get one event each (untimed), then the
    same base events, mapped onto the population, are timed.
``python -m bench.inproc timers --users N --hours H``
    Timer load: N users each send 3 events within one hour of event time (untimed), then the watermark
    walks H hours in one-minute steps and every due timer fires, each building the row it re-materializes
    (what the server then writes online and offline). Reports firings per user, firings per second of
    event time (the extra online writes at N users), and the loop's cost per firing.
``python -m bench.inproc costs --events F``
    What each model costs: one PartitionWorker applies the events as the server does (scoring on); every
    message to the trainer is timed by kind (each model's learning), the worker's stages come from its own
    ``portrait_stage_duration_seconds``; then Score (10 candidates), Recommend (k=10) and a row build are
    timed per call, and the item-side state (popularity, co-visitation, top items) is measured per item
    with tracemalloc. Reports µs per event (averaged over all events) and per call.
``python -m bench.inproc components --events F``
    Cost per event of each component of the scaled-out design, measured apart (issue #16): the front end
    (TrackBatch bytes -> protobuf -> domain events, batches of 500), the log append (record encoding + the
    event log's append and a group commit with fsync per 500), the worker's apply with learning taken out
    (scoring on; the trainer's messages are recorded, not learnt), the trainer learning those messages, a
    row build per event, and the online write of those rows through Feast into an embedded Redis
    (batches of 500). The in-process server does all of them on one core today.
Each prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry

from bench import stream
from bench.procs import rss_bytes
from server.domain.events import Event, EventType
from server.metrics import Metrics
from server.worker.partition import PartitionWorker, WorkerConfig


def new_pipeline(**config: Any) -> PartitionWorker:
    """A PartitionWorker as the server builds it (default config), with its own metrics registry."""
    return PartitionWorker(WorkerConfig(**config), Metrics(CollectorRegistry()))


def run_loop(p: PartitionWorker, events: list[Event], now: float, cpu: list[float] | None = None) -> tuple[int, float]:
    """The limit loop; returns (accepted, wall seconds) and appends the CPU seconds to ``cpu``."""
    check, apply = p.check, p.apply
    accepted = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for e in events:
        if check(e, now) is None:
            apply(e, score=False)
            accepted += 1
    dt = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(time.process_time() - c0)
    return accepted, dt


def cmd_limit(a: argparse.Namespace) -> dict[str, Any]:
    events = stream.load(a.events)
    now = time.time()
    rounds: list[float] = []
    cpu: list[float] = []
    accepted = 0
    for _ in range(a.rounds):
        p = new_pipeline()
        gc.collect()
        accepted, dt = run_loop(p, events, now, cpu)
        rounds.append(len(events) / dt)
        del p
    out: dict[str, Any] = {"events": len(events), "accepted": accepted, "eps_rounds": rounds,
                           "eps_per_cpu_s_rounds": [len(events) / c for c in cpu],
                           "users": len({e.user_id for e in events})}
    if a.cprofile:
        p = new_pipeline()
        prof = cProfile.Profile()
        prof.enable()
        run_loop(p, events, now)
        prof.disable()
        prof.dump_stats(a.cprofile)
        out["cprofile"] = top_functions(prof, 25)
        out["cprofile_file"] = a.cprofile
    return out


def top_functions(prof: cProfile.Profile, n: int) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time, with their share of the total."""
    st = pstats.Stats(prof, stream=io.StringIO())
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in rows:
        short = file.split("/site-packages/")[-1].split("/work/main/")[-1]
        out.append({"function": f"{short}:{line}({func})", "calls": nc, "own_s": round(tt, 4),
                    "own_pct": round(100 * tt / total, 1), "cum_s": round(ct, 4)})
    return out


def cmd_memory(a: argparse.Namespace) -> dict[str, Any]:
    events = stream.generate(a.users, a.days, a.seed)
    now = time.time()
    p = new_pipeline(dedupe_capacity=1)
    # warm the code paths and the models on a few events of other users, then take the baseline
    for e in stream.variant(events[:2000], "warm-"):
        if p.check(e, now) is None:
            p.apply(e, score=False)
    gc.collect()
    before = rss_bytes()
    users_before = len(p.profiles)
    for e in events:
        e = stream.fresh_strings(e)
        if p.check(e, now) is None:
            p.apply(e, score=False)
    gc.collect()
    after = rss_bytes()
    users = len(p.profiles) - users_before
    pending = len(p.labels)
    # the dedupe set: bounded by PORTRAIT_DEDUPE_CAPACITY ids, whatever the number of users
    from server.domain.dedupe import Dedupe

    n_ids = 200_000
    d = Dedupe(n_ids)
    gc.collect()
    d0 = rss_bytes()
    for i in range(n_ids):
        d.seen_or_add(f"s0-{i}-{'x' * 10}")
    gc.collect()
    d1 = rss_bytes()
    return {"users": users, "events": len(events), "rss_before": before, "rss_after": after,
            "bytes_per_user": (after - before) / max(users, 1), "pending_labels": pending,
            "events_per_user": len(events) / max(users, 1),
            "dedupe_bytes_per_id": (d1 - d0) / n_ids}


class GcTimer:
    """Time spent in the cyclic garbage collector, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.seconds[g] += time.perf_counter() - self._t0
            self.count[g] += 1

    def reset(self) -> None:
        self.seconds, self.count = [0.0, 0.0, 0.0], [0, 0, 0]


def cmd_scaling(a: argparse.Namespace) -> dict[str, Any]:
    base = stream.load(a.events)
    n = a.population
    now = time.time()
    t_end = float(base[0].event_time or 0.0)
    span = stream.slot_span(base)
    gc.collect()
    rss0 = rss_bytes()
    p = new_pipeline()
    t0 = time.perf_counter()
    for e in stream.population_events(n, "p", t_end):
        e = stream.fresh_strings(e)
        if p.check(e, now) is None:
            p.apply(e, score=False)
    populate_s = time.perf_counter() - t0
    # settle: one event at the stream's start resolves every decision the population made (each user's
    # first event records one; they all turn negative here), so the timed rounds measure steady state
    t1 = time.perf_counter()
    pending = len(p.labels)
    settle = Event("p-settle", "p-settle", EventType.VIEW, t_end - 1.0, item_id="i-settle", category="c00")
    if p.check(settle, now) is None:
        p.apply(settle, score=False)
    settle_s = time.perf_counter() - t1
    gc.collect()
    rss1 = rss_bytes()
    if a.gc_freeze:  # diagnostic: move the population out of the collector's reach (gc.freeze)
        gc.freeze()
    mapped = stream.remap_users(base, n, "p")
    active = len({e.user_id for e in mapped})
    rounds = []
    timer = GcTimer()
    gc_share = []
    for r in range(a.rounds):
        events = stream.variant(mapped, f"r{r}-", shift_s=r * span, users="keep") if r else mapped
        gc.collect()
        timer.reset()
        _, dt = run_loop(p, events, now)
        rounds.append(len(events) / dt)
        gc_share.append(sum(timer.seconds) / dt)
    gc.collect()
    rss2 = rss_bytes()
    return {"population": n, "users": len(p.profiles), "active_users": active, "events": len(base),
            "eps_rounds": rounds, "populate_eps": n / populate_s, "rss_bytes": rss2 - rss0,
            "rss_per_user": (rss2 - rss0) / max(len(p.profiles), 1), "rss_after_populate": rss1 - rss0,
            "pending_labels": len(p.labels), "gc_freeze": a.gc_freeze,
            "settled_labels": pending - len(p.labels), "settle_s": settle_s,
            "gc_share_rounds": gc_share, "gc_collections_last_round": timer.count}


def cmd_timers(a: argparse.Namespace) -> dict[str, Any]:
    import random

    rng = random.Random(a.seed)
    t0_event = 1_700_006_400.0
    p = new_pipeline()
    rows = 0

    def rebuild(user: str) -> None:
        nonlocal rows
        p.row(user)
        rows += 1

    p.on_timer = rebuild
    populate = time.perf_counter()
    kinds = (EventType.VIEW, EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE)
    events = sorted((t0_event + rng.random() * 3600.0, f"u{u}", k) for u in range(a.users) for k in range(3))
    for n, (t, user, k) in enumerate(events):
        p.apply(Event(f"e{n}", user, kinds[rng.randrange(4)] if k else EventType.VIEW, t, item_id=f"i{n % 5000}",
                      category=f"c{n % 40}", price=10.0), score=False)
    populate_s = time.perf_counter() - populate
    fired_during_ingest = rows
    pending = len(p.timers)
    rows = 0
    busy = 0.0
    steps = int(a.hours * 60)
    worst = 0.0
    for step in range(1, steps + 1):
        c = time.perf_counter()
        while p.advance(t0_event + 3600.0 + step * 60.0, 1000) == 1000:
            pass
        dt = time.perf_counter() - c
        busy += dt
        worst = max(worst, dt)
    return {"users": a.users, "events": len(events), "hours": a.hours, "populate_eps": len(events) / populate_s,
            "pending_after_ingest": pending, "fired_during_ingest": fired_during_ingest, "fired": rows,
            "fired_per_user": rows / a.users, "fired_per_event_second": rows / (a.hours * 3600.0),
            "us_per_firing": busy / max(rows, 1) * 1e6, "worst_minute_s": worst,
            "pending_after": len(p.timers)}


def _message_kind(message: Any) -> str:
    """What learns from a message to the trainer (``Trainer.feed``): the row name of the costs table."""
    from server.models.trainer import Labelled

    kind = type(message).__name__
    if isinstance(message, Labelled):
        return {"propensity": "learn propensity", "item": "learn item model",
                "recommend": "learn recommend ranker"}[message.model]
    return {"UserVector": "learn segments (KMeans)", "EventVector": "learn risk (HalfSpaceTrees)",
            "ItemStats": "learn item statistics + co-visits"}[kind]


def cmd_costs(a: argparse.Namespace) -> dict[str, Any]:
    import random
    import tracemalloc

    from server.models.trainer import ItemStats, Trainer, TrainerConfig

    events = stream.load(a.events)
    now = time.time()
    p = new_pipeline()
    learn_s: dict[str, float] = {}
    learn_n: dict[str, int] = {}
    item_stats: list[ItemStats] = []
    feed = p.trainer.feed

    def timed_feed(message: Any) -> None:
        t0 = time.perf_counter()
        feed(message)
        kind = _message_kind(message)
        learn_s[kind] = learn_s.get(kind, 0.0) + time.perf_counter() - t0
        learn_n[kind] = learn_n.get(kind, 0) + 1
        if type(message) is ItemStats:
            item_stats.append(message)

    p.trainer.feed = timed_feed  # type: ignore[method-assign]
    gc.collect()
    accepted = 0
    t0 = time.perf_counter()
    for e in events:
        if p.check(e, now) is None:
            p.apply(e)  # scoring on, as for Track
            accepted += 1
    wall = time.perf_counter() - t0
    stages = {}
    for fam in p.metrics.registry.collect():
        if fam.name == "portrait_stage_duration_seconds":
            for smp in fam.samples:
                if smp.name.endswith("_sum") and smp.value:
                    stages[smp.labels["stage"]] = smp.value / accepted * 1e6
    per_event = {k: v / accepted * 1e6 for k, v in learn_s.items()}
    per_message = {k: learn_s[k] / learn_n[k] * 1e6 for k in learn_s}
    # the worker's stages include the learning they hand to the trainer (in one process, feed() learns at once);
    # two stages hold one model's scoring and its learning only, so their difference is that model's scoring
    worker_side = {
        "risk score (HalfSpaceTrees)": stages.get("risk", 0.0) - per_event.get("learn risk (HalfSpaceTrees)", 0.0),
        "segment predict (KMeans)": stages.get("models", 0.0) - per_event.get("learn segments (KMeans)", 0.0),
        "all stages without learning": sum(stages.values()) - sum(per_event.values()),
    }
    users = [u for u, prof in p.profiles.items() if prof.last_event is not None]
    rng = random.Random(1)
    sample = rng.sample(users, min(500, len(users)))
    items = sorted({(e.item_id, e.category, float(e.price or 0.0)) for e in events[:20_000] if e.item_id})
    calls: dict[str, float] = {}
    c = time.perf_counter()
    for u in sample:
        p.score(u, rng.sample(items, 10))
    calls["Score, 10 candidates"] = (time.perf_counter() - c) / len(sample) * 1e6
    c = time.perf_counter()
    for u in sample:
        p.recommend(u, 10)
    calls["Recommend, k=10"] = (time.perf_counter() - c) / len(sample) * 1e6
    c = time.perf_counter()
    for u in sample:
        p.row(u)
    calls["row build (one materialization)"] = (time.perf_counter() - c) / len(sample) * 1e6
    # item-side state, per distinct item: a fresh trainer fed the same item statistics under tracemalloc
    fresh = Trainer(TrainerConfig())
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for m in item_stats:
        fresh.feed(m)
    gc.collect()
    item_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    n_items = len({m.item for m in item_stats})
    return {"events": len(events), "accepted": accepted, "events_per_s": accepted / wall,
            "us_per_event_total": wall / accepted * 1e6, "stages_us": stages, "learn_us_per_event": per_event,
            "learn_us_per_message": per_message, "messages_per_event": {k: n / accepted for k, n in learn_n.items()},
            "worker_us_per_event": worker_side, "call_us": calls, "items": n_items,
            "item_state_bytes_per_item": item_bytes / max(n_items, 1)}


FILE_LOG = "log (file segments; not in the projection): encode + append + fsync per 500"
STREAM_LOG = "log: encode + XADD to 64 Redis Streams, appendfsync always, per 500"


RAY_CALL = "front end -> worker: Ray actor call, 500 events per call (pickled both ways)"


def ray_call_us(events: list[Event], batch: int) -> float:
    """µs per event of handing events to a worker actor on a local Ray: ``ray.get(actor.take.remote(batch))``,
    one call at a time, the actor only counting them (what the scaled-out front end adds per event; the
    worker's own work is measured apart). Ray with usage stats off, no dashboard, 2 CPUs."""
    from bench.workers import local_ray

    with local_ray(2):  # sets Ray's environment before Ray is imported
        import ray

        @ray.remote
        class Sink:
            def take(self, items: list[Event]) -> int:
                return len(items)

        sink = Sink.remote()  # type: ignore[attr-defined]
        batches = [events[i:i + batch] for i in range(0, len(events), batch)]
        ray.get(sink.take.remote(batches[0]))  # the actor's process is up
        t0 = time.perf_counter()
        n = sum(ray.get(sink.take.remote(b)) for b in batches)
        return (time.perf_counter() - t0) / n * 1e6


def cmd_components(a: argparse.Namespace) -> dict[str, Any]:
    import asyncio
    import tempfile
    from pathlib import Path

    from bench.client import protos
    from server._gen.portrait.v1 import portrait_pb2 as pb
    from server.api import convert
    from server.log import codec
    from server.log.eventlog import EventLog
    from server.models.trainer import ItemStats, Trainer, TrainerConfig

    batch = 500
    events = stream.load(a.events)
    now = time.time()
    out: dict[str, float] = {}
    # front end: what TrackBatch does before the worker (gRPC's own transport is not in here)
    msgs = protos(events)
    payloads = [pb.TrackBatchRequest(events=msgs[i:i + batch]).SerializeToString() for i in range(0, len(msgs), batch)]
    gc.collect()
    t0 = time.perf_counter()
    for b in payloads:
        [convert.event_from_proto(m) for m in pb.TrackBatchRequest.FromString(b).events]
    out["front end: decode + convert"] = (time.perf_counter() - t0) / len(events) * 1e6
    # the worker without learning: every message for the trainer is kept for the next measurement
    p = new_pipeline()
    sent: list[Any] = []
    p.trainer.feed = sent.append  # type: ignore[method-assign]
    gc.collect()
    accepted = 0
    applied: list[str] = []
    t0 = time.perf_counter()
    for e in events:
        if p.check(e, now) is None:
            p.apply(e)
            accepted += 1
            applied.append(e.user_id)
    out["worker: validate + dedupe + apply + score (no learning)"] = (time.perf_counter() - t0) / accepted * 1e6
    # with workers the trainer learns every model but the item statistics, which every worker learns from every
    # worker's events (server.models.shared): two costs, measured apart
    touches = [m for m in sent if type(m) is ItemStats]
    trainer = Trainer(TrainerConfig())
    gc.collect()
    t0 = time.perf_counter()
    for m in sent:
        if type(m) is not ItemStats:
            trainer.feed(m)
    out["trainer: learn the shared models (not item statistics)"] = (time.perf_counter() - t0) / accepted * 1e6
    stats = Trainer(TrainerConfig())
    gc.collect()
    t0 = time.perf_counter()
    for m in touches:
        Trainer.learn(stats, m)
    out["item statistics: every worker learns every event's"] = (time.perf_counter() - t0) / accepted * 1e6
    # the log: each accepted event encoded and appended, one fsynced commit per batch
    with tempfile.TemporaryDirectory() as d:
        log = EventLog(Path(d) / "log")
        log.open()

        async def append_all() -> float:
            t = time.perf_counter()
            for i in range(0, len(events), batch):
                for e in events[i:i + batch]:
                    log.append(codec.event_to_bytes(e))
                await log.commit()
            return time.perf_counter() - t

        out[FILE_LOG] = asyncio.run(append_all()) / len(events) * 1e6
        log.close()
    # the scaled-out design's log: one Redis Stream per partition, in a Redis fsyncing before it replies
    with tempfile.TemporaryDirectory() as d:
        from server.domain.partition import partition_of
        from server.log.streams import StreamLog
        from server.store.embedded_redis import EmbeddedRedis

        log_redis = EmbeddedRedis(Path(d) / "redis", port=0, appendfsync="always")
        log_redis.start()
        try:
            streams = StreamLog(log_redis.url, 64)
            streams.open()

            async def xadd_all() -> float:
                t = time.perf_counter()
                for i in range(0, len(events), batch):
                    for e in events[i:i + batch]:
                        streams.append(codec.event_to_bytes(e), partition_of(e.user_id, 64))
                    await streams.commit()
                return time.perf_counter() - t

            out[STREAM_LOG] = asyncio.run(xadd_all()) / len(events) * 1e6
            streams.close()
        finally:
            log_redis.stop()
    out[RAY_CALL] = ray_call_us(events, batch)
    # rows: one build per applied event (an upper bound: the server coalesces a user's rows within a flush)
    sample = applied[:: max(1, len(applied) // 5000)]
    gc.collect()
    t0 = time.perf_counter()
    rows = [p.row(u) for u in sample]
    out["worker: row build"] = (time.perf_counter() - t0) / len(sample) * 1e6
    # online write through Feast into a Redis of its own (the server's writer child does this part)
    with tempfile.TemporaryDirectory() as d:
        from server.config import redis_url_to_feast
        from server.store.embedded_redis import EmbeddedRedis
        from server.store.feast import apply_definitions, set_feast_env
        from server.store.writer import FeastRowWriter

        redis = EmbeddedRedis(Path(d) / "redis", port=0)
        redis.start()
        try:
            set_feast_env(Path(d), redis_url_to_feast(redis.url))
            writer = FeastRowWriter(apply_definitions(Path(a.feature_repo), Path(d)))
            writer.write(rows[:batch])  # warm (connection, registry)
            t0 = time.perf_counter()
            for i in range(0, len(rows), batch):
                writer.write(rows[i:i + batch])
            out["online write: Feast -> Redis, 500 rows per call"] = (time.perf_counter() - t0) / len(rows) * 1e6
        finally:
            redis.stop()
    return {"events": len(events), "accepted": accepted, "rows": len(rows), "us_per_event": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lim = sub.add_parser("limit")
    lim.add_argument("--events", required=True)
    lim.add_argument("--rounds", type=int, default=3)
    lim.add_argument("--cprofile", default="", help="also run one round under cProfile, stats to this file")
    mem = sub.add_parser("memory")
    mem.add_argument("--users", type=int, required=True)
    mem.add_argument("--days", type=int, default=2)
    mem.add_argument("--seed", type=int, default=1)
    sc = sub.add_parser("scaling")
    sc.add_argument("--events", required=True)
    sc.add_argument("--population", type=int, required=True)
    sc.add_argument("--rounds", type=int, default=1)
    sc.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after populating (diagnostic)")
    tm = sub.add_parser("timers")
    tm.add_argument("--users", type=int, default=100_000)
    tm.add_argument("--hours", type=float, default=48.0)
    tm.add_argument("--seed", type=int, default=1)
    co = sub.add_parser("costs")
    co.add_argument("--events", required=True)
    cp = sub.add_parser("components")
    cp.add_argument("--events", required=True)
    cp.add_argument("--feature-repo", default="feature_repo")
    a = ap.parse_args(argv)
    fn = {"limit": cmd_limit, "memory": cmd_memory, "scaling": cmd_scaling, "timers": cmd_timers,
          "costs": cmd_costs, "components": cmd_components}[a.cmd]
    print(json.dumps(fn(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
