"""``portrait replay-log``: rebuild every profile from the retained event log, offline.

Loads the newest valid checkpoint (unless ``--from-start``), replays the log after it
through the same worker code the server runs, writes every profile to the online and
offline stores, and leaves a fresh checkpoint so the next ``serve`` starts from it.
Run it with the server stopped (it owns the data directory while it runs).

Rebuilt rows are stamped with the rebuild time (not the profiles' as-of time), so that
Feast's Redis writer — which skips rows not newer than the stored one — replaces them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from server.config import Settings
from server.log import checkpoint
from server.log.partitions import PartitionsChanged, ensure_partitions
from server.log.streams import LogOwnedElsewhere
from server.metrics import Metrics
from server.store.embedded_redis import online_redis
from server.store.feast import OfflineLog, OnlineStore, apply_definitions, set_feast_env
from server.worker import snapshot
from server.worker.durability import restore
from server.worker.partition import PartitionWorker

log = logging.getLogger(__name__)
CHUNK = 2000

def rebuild(settings: Settings, from_start: bool = False) -> int:
    """Rebuild and write every profile; returns a process exit code."""
    from server.worker.runtime import event_log, worker_config

    data_dir = Path(settings.data_dir).resolve()
    if settings.workers > 1:
        log.error("refusing to rebuild: replay-log reads one worker's log; with PORTRAIT_WORKERS>1 each worker "
                  "replays its own log at its start (restart the server) — a per-worker replay-log is not built yet")
        return 2
    try:
        ensure_partitions(data_dir, settings.partitions)
    except PartitionsChanged as exc:
        log.error("refusing to rebuild: %s", exc)
        return 2
    feast_redis, embedded = online_redis(settings.configured_feast_redis(), data_dir, settings.embedded_redis_port,
                                         cluster=settings.redis_cluster, holds_log=settings.log_store == "redis")
    try:
        set_feast_env(data_dir, feast_redis, settings.feast_redis_type())
        store = apply_definitions(settings.feature_repo, data_dir)
        worker = PartitionWorker(worker_config(settings), Metrics(CollectorRegistry()))
        events = event_log(settings, data_dir, embedded.url if embedded else None)
        try:
            events.open()
        except (PartitionsChanged, LogOwnedElsewhere) as exc:
            log.error("refusing to rebuild: %s", exc)
            return 2
        t0 = time.perf_counter()
        done = restore(worker, events, data_dir / "checkpoints", from_start=from_start)
        start, replayed = done.start, done.replayed
        log.info("replayed %d records in %.1f s", replayed, time.perf_counter() - t0)
        now_us = int(time.time() * 1_000_000)
        users = list(worker.profiles)
        for u in users:
            worker.row_ts[u] = max(worker.row_ts.get(u, 0), now_us)
        online, offline = OnlineStore(store), OfflineLog(data_dir)
        for i in range(0, len(users), CHUNK):
            rows = [worker.row(u) for u in users[i:i + CHUNK]]
            online.write(rows)
            offline.append(rows)
        body = snapshot.dumps(snapshot.take(worker, events.next_offset))
        checkpoint.write_checkpoint(data_dir / "checkpoints", events.next_offset, body)
        events.close()
        print(f"rebuilt {len(users)} profiles from {replayed} log records (from offset {start})")
        return 0
    finally:
        if embedded:
            embedded.stop()
