"""Partition workers as Ray actors on this machine: events/s for 1, 2 and 4 workers (issue #16's bench rows).

What runs: the bench stream (``--events``) in 500-event batches, split by partition (crc32 of the user id mod
64, ``server.domain.partition``); worker *i* of *N* owns the partitions ``p % N == i`` and is a Ray actor holding
a ``PartitionWorker`` (validate, dedupe, apply, score; the messages for the trainer are kept, not learnt: the
trainer is one process apart, measured on its own in the components phase). The driver plays the front end: it
sends each worker its share of every batch, at most two calls in flight per worker, and waits for all.

What does not run: gRPC, the log, rows and the online write (their costs are the components phase's rows).
So this measures how the worker part scales over actors on this machine's cores, with Ray's calls and pickling
in it — not the whole server. Ray: local, started and stopped here, usage stats off, no dashboard; actors
ask for no CPU so that 4 of them share 2 cores (that is the measurement).

    python -m bench.workers --events FILE [--workers 1,2,4]   # JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import stream
from server.domain.events import Event
from server.domain.partition import partition_of

PARTITIONS = 64
BATCH = 500
IN_FLIGHT = 2  # calls outstanding per worker: the next batch is on its way while one is applied


@contextmanager
def local_ray(cpus: int) -> Iterator[None]:
    """A local Ray for the bench, stopped on exit: usage stats off, no dashboard, its logs not on ours."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


class PartitionWorkerActor:
    """One worker: a ``PartitionWorker`` over the partitions it is sent (the driver routes by partition)."""

    def __init__(self) -> None:
        from bench.inproc import new_pipeline

        self.worker = new_pipeline()
        self.messages = 0
        self.worker.trainer.feed = self._keep  # type: ignore[method-assign]
        self.now = time.time()

    def _keep(self, message: Any) -> None:
        self.messages += 1

    def apply(self, events: list[Event]) -> int:
        """Validate and apply ``events`` in order; the number accepted."""
        w, now, accepted = self.worker, self.now, 0
        for e in events:
            if w.check(e, now) is None:
                w.apply(e)
                accepted += 1
        return accepted

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "users": len(self.worker.profiles), "trainer_messages": self.messages,
                "cpu_s": time.process_time()}


def run(events: list[Event], n: int) -> dict[str, Any]:
    """Events/s through ``n`` worker actors (fresh ones), wall time from the first call to the last answer."""
    import ray

    remote = ray.remote(num_cpus=0)(PartitionWorkerActor)
    actors = [remote.remote() for _ in range(n)]  # type: ignore[attr-defined]
    ray.get([a.stats.remote() for a in actors])  # started, modules imported
    owner = [partition_of(e.user_id, PARTITIONS) % n for e in events]
    shares: list[list[list[Event]]] = [[] for _ in range(n)]
    for i in range(0, len(events), BATCH):
        split: list[list[Event]] = [[] for _ in range(n)]
        for e, o in zip(events[i:i + BATCH], owner[i:i + BATCH]):
            split[o].append(e)
        for w in range(n):
            if split[w]:
                shares[w].append(split[w])
    cpu0 = [s["cpu_s"] for s in ray.get([a.stats.remote() for a in actors])]
    driver0 = time.process_time()
    t0 = time.perf_counter()
    pending: list[deque[Any]] = [deque() for _ in range(n)]
    accepted, nxt = 0, [0] * n
    while any(nxt[w] < len(shares[w]) or pending[w] for w in range(n)):
        for w in range(n):  # keep every worker busy, in batch order
            while nxt[w] < len(shares[w]) and len(pending[w]) < IN_FLIGHT:
                pending[w].append(actors[w].apply.remote(shares[w][nxt[w]]))
                nxt[w] += 1
        ready, _ = ray.wait([q[0] for q in pending if q], num_returns=1)
        for w in range(n):
            if pending[w] and pending[w][0] in ready:
                accepted += ray.get(pending[w].popleft())
    wall = time.perf_counter() - t0
    driver_cpu = time.process_time() - driver0
    stats = ray.get([a.stats.remote() for a in actors])
    for a in actors:
        ray.kill(a)
    return {"workers": n, "events": len(events), "accepted": accepted, "wall_s": wall,
            "events_per_s": accepted / wall, "driver_cpu_s": driver_cpu,
            "worker_cpu_s": [s["cpu_s"] - c for s, c in zip(stats, cpu0)],
            "users_per_worker": [s["users"] for s in stats], "pids": [s["pid"] for s in stats]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.workers")
    ap.add_argument("--events", required=True)
    ap.add_argument("--workers", default="1,2,4")
    a = ap.parse_args(argv)
    events = stream.load(a.events)
    with local_ray(os.cpu_count() or 1):
        rows = [run(events, int(n)) for n in a.workers.split(",")]
    json.dump({"cores": os.cpu_count(), "batch": BATCH, "partitions": PARTITIONS, "rows": rows}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
