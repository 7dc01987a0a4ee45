"""``portrait replay-log``: rebuild every profile from the retained event log, offline.

Loads the newest valid checkpoint (unless ``--from-start``), replays the log after it
through the same worker code the server runs, writes every profile to the online and
offline stores, and leaves a fresh checkpoint so the next ``serve`` starts from it.
Run it with the server stopped (it owns the data directory while it runs).

Rebuilt rows are stamped with the rebuild time (not the profiles' as-of time), so that
Feast's Redis writer — which skips rows not newer than the stored one — replaces them.

With ``PORTRAIT_WORKERS`` = N > 1 each worker's state is rebuilt in turn, in this process (no Ray): its
checkpoint and log (``<data dir>/workers/<i>/``, streams under ``<prefix>:w<i>``), its rows, its offline parts
(``...-w<i>-...``). The shared models stay the trainer's: each worker's trainer side is rebuilt as the server
holds it (``RemoteTrainer``), so the new checkpoint keeps the numbering of the messages it sent the trainer and
the ones it has not sent yet. ``--from-start`` is refused then: the numbers of messages rebuilt from the log's
start cannot be matched with the ones the trainer learnt (the log may not reach back to the first).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from server.config import Settings
from server.log import checkpoint
from server.log.partitions import PartitionsChanged, ensure_partitions
from server.log.streams import LogOwnedElsewhere
from server.metrics import Metrics
from server.models.remote import RemoteTrainer
from server.store.embedded_redis import online_redis
from server.store.feast import OfflineLog, OnlineStore, apply_definitions, set_feast_env
from server.worker import snapshot
from server.worker.durability import restore
from server.worker.partition import PartitionWorker

log = logging.getLogger(__name__)
CHUNK = 2000


def rebuild(settings: Settings, from_start: bool = False) -> int:
    """Rebuild and write every profile (of every worker); returns a process exit code."""
    from server.cluster.actors import state_dir, worker_tag

    data_dir = Path(settings.data_dir).resolve()
    workers = settings.workers
    if workers > 1 and from_start:
        log.error("refusing to rebuild from the start with PORTRAIT_WORKERS=%d: the shared trainer numbers each "
                  "worker's messages, and messages rebuilt from the log's start cannot be matched with the ones it "
                  "learnt; run replay-log without --from-start (each worker from its newest checkpoint)", workers)
        return 2
    try:
        ensure_partitions(data_dir, settings.partitions, workers)
    except PartitionsChanged as exc:
        log.error("refusing to rebuild: %s", exc)
        return 2
    feast_redis, embedded = online_redis(settings.configured_feast_redis(), data_dir, settings.embedded_redis_port,
                                         cluster=settings.redis_cluster, holds_log=settings.log_store == "redis")
    try:
        set_feast_env(data_dir, feast_redis, settings.feast_redis_type())
        store = apply_definitions(settings.feature_repo, data_dir)
        url = embedded.url if embedded else None
        if workers == 1:
            return _rebuild_one(settings, data_dir, data_dir, store, url, from_start)
        for i in range(workers):
            code = _rebuild_one(settings, data_dir, state_dir(data_dir, i), store, url, False,
                                prefix=f"{settings.log_prefix}:{worker_tag(i)}", tag=worker_tag(i), shared=True)
            if code:
                return code
        return 0
    finally:
        if embedded:
            embedded.stop()


def _rebuild_one(settings: Settings, data_dir: Path, state: Path, store: Any, embedded_url: str | None,
                 from_start: bool, prefix: str | None = None, tag: str = "", shared: bool = False) -> int:
    """Rebuild one worker's state (``state``: its log and checkpoints) and write its rows; an exit code."""
    from server.worker.runtime import event_log, worker_config

    config = worker_config(settings)
    trainer = RemoteTrainer(config.trainer, settings.model_publish_s, share_item_stats=True) if shared else None
    worker = PartitionWorker(config, Metrics(CollectorRegistry()), trainer)
    events = event_log(settings, data_dir, embedded_url, prefix, state)
    try:
        events.open()
    except (PartitionsChanged, LogOwnedElsewhere) as exc:
        log.error("refusing to rebuild: %s", exc)
        return 2
    t0 = time.perf_counter()
    done = restore(worker, events, state / "checkpoints", from_start=from_start)
    start, replayed = done.start, done.replayed
    log.info("%sreplayed %d records in %.1f s", f"worker {tag}: " if tag else "", replayed, time.perf_counter() - t0)
    now_us = int(time.time() * 1_000_000)
    users = list(worker.profiles)
    for u in users:
        worker.row_ts[u] = max(worker.row_ts.get(u, 0), now_us)
    online, offline = OnlineStore(store), OfflineLog(data_dir, tag=tag)
    for i in range(0, len(users), CHUNK):
        rows = [worker.row(u) for u in users[i:i + CHUNK]]
        online.write(rows)
        offline.append(rows)
    body = snapshot.dumps(snapshot.take(worker, events.next_offset))
    checkpoint.write_checkpoint(state / "checkpoints", events.next_offset, body)
    events.close()
    print(f"{f'worker {tag}: ' if tag else ''}rebuilt {len(users)} profiles from {replayed} log records "
          f"(from offset {start})")
    return 0
