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

from server.config import Settings, redis_url_to_feast
from server.log import checkpoint
from server.log.eventlog import EventLog
from server.metrics import Metrics
from server.store.embedded_redis import EmbeddedRedis
from server.store.feast import OfflineLog, OnlineStore, apply_definitions, set_feast_env
from server.worker import snapshot
from server.worker.durability import apply_record
from server.worker.partition import PartitionWorker

log = logging.getLogger(__name__)
CHUNK = 2000

def rebuild(settings: Settings, from_start: bool = False) -> int:
    """Rebuild and write every profile; returns a process exit code."""
    from server.app import worker_config

    data_dir = Path(settings.data_dir).resolve()
    embedded = None
    if settings.redis_url or settings.feast_redis:
        feast_redis = settings.feast_redis_connection()
    else:
        embedded = EmbeddedRedis(data_dir, settings.embedded_redis_port)
        embedded.start()
        feast_redis = redis_url_to_feast(embedded.url)
    try:
        set_feast_env(data_dir, feast_redis)
        store = apply_definitions(settings.feature_repo, data_dir)
        worker = PartitionWorker(worker_config(settings), Metrics(CollectorRegistry()))
        events = EventLog(data_dir / "log")
        events.open()
        start = 0
        found = None if from_start else checkpoint.load_latest(data_dir / "checkpoints")
        if found:
            start, body, path = found
            snapshot.restore(worker, snapshot.loads(body, start))
            log.info("starting from checkpoint %s (log offset %d)", path.name, start)
        if events.first_offset() > start:
            log.warning("the retained log starts at offset %d, after %d: profiles will miss records %d..%d "
                        "(set PORTRAIT_LOG_RETENTION_S=-1 to keep the whole log)",
                        events.first_offset(), start, start, events.first_offset() - 1)
        t0 = time.perf_counter()
        replayed = 0
        for _, payload in events.read_from(start):
            apply_record(worker, payload)
            replayed += 1
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
