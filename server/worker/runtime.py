"""One partition worker with everything it owns, built from the settings and run: the ``PartitionWorker``,
its materializer (online rows through Feast, offline parquet parts), its log and checkpoints (``Durability``),
its trainer process (``PORTRAIT_TRAINER=process``) and its online writer child, and the ``ProfileCore`` the
front end delegates to.

``PORTRAIT_WORKERS=1``: the server process builds one (``server.app``), state in the data dir itself.
``PORTRAIT_WORKERS=N>1``: each Ray actor of ``server.cluster.actors`` builds one, state in
``<data dir>/workers/<i>/`` (its log and checkpoints), rows in the shared online store and offline directory
(parts named by worker: they never clash).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from server.config import Settings
from server.domain.pseudonym import Pseudonymizer
from server.log.compaction import load_salt
from server.log.eventlog import EventLog
from server.log.streams import StreamLog, owner_id
from server.metrics import Metrics
from server.models.remote import RemoteTrainer, TrainerProcess
from server.models.shared import TrainerLink
from server.models.trainer import TrainerConfig
from server.store.feast import OfflineLog, OnlineStore, feast_env, offline_dir
from server.store.writer import WriterProcess
from server.worker.core import ProfileCore
from server.worker.durability import Durability, RecoveryReport
from server.worker.materialize import Materializer, RowSink
from server.worker.partition import PartitionWorker, WorkerConfig

log = logging.getLogger("portrait")

QUALITY_EVERY = 15  # gauge refreshes between exact AUC/log-loss recomputations (8.6 % of a stream run)


def event_log(settings: Settings, data_dir: Path, embedded_url: str | None = None, prefix: str | None = None,
              state_dir: Path | None = None) -> EventLog | StreamLog:
    """The event log of ``data_dir`` per ``PORTRAIT_LOG_STORE`` (not opened yet): segment files, or one Redis
    Stream per partition in the Redis of ``PORTRAIT_REDIS_URL`` (else ``embedded_url``). The one place the server
    and ``portrait replay-log`` choose, so both read the same log. ``state_dir`` (default ``data_dir``) holds a
    worker's own log files; ``prefix`` (default ``PORTRAIT_LOG_PREFIX``) its streams' key prefix."""
    state = Path(state_dir) if state_dir is not None else Path(data_dir)
    if settings.log_store == "file":
        return EventLog(state / "log", segment_bytes=settings.log_segment_bytes, fsync=settings.fsync)
    url = settings.redis_url or embedded_url
    if not url:
        raise ValueError("PORTRAIT_LOG_STORE=redis needs PORTRAIT_REDIS_URL or the embedded Redis")
    return StreamLog(url, settings.partitions, prefix=prefix or settings.log_prefix, cluster=settings.redis_cluster,
                     owner=owner_id(state), wait_replicas=settings.log_wait_replicas)


def worker_config(s: Settings) -> WorkerConfig:
    """The partition worker's (and its in-process trainer's) part of the settings."""
    return WorkerConfig(
        propensity_horizon_s=s.propensity_horizon_s, decision_interval_s=s.decision_interval_s,
        allowed_lateness_s=s.allowed_lateness_s, max_pending_labels=s.max_pending_labels,
        dedupe_capacity=s.dedupe_capacity,
        item_horizon_s=s.item_horizon_s, item_decision_interval_s=s.item_decision_interval_s,
        max_pending_item_labels=s.max_pending_item_labels, item_decision_sample=s.item_decision_sample,
        item_history=s.item_history, item_counts=s.item_counts, risk_threshold=s.risk_threshold,
        labels_per_event=s.labels_per_event, timers_per_event=s.timers_per_event,
        erasure_salt=load_salt(s.data_dir),
        trainer=TrainerConfig(segments=s.segments, quality_window=s.quality_window, max_items=s.max_items),
    )


class WorkerRuntime:
    """Builds (``start``), runs (``tick``, the periodic tasks) and stops one partition worker.

    ``data_dir``: the deployment's data dir (offline parts, Feast's registry, the erasure salt);
    ``state_dir``: this worker's log and checkpoints (the data dir itself with one worker);
    ``feast_redis``/``redis_type``: the online store; ``embedded_url``: the embedded Redis (for a Redis log);
    ``log_prefix``: this worker's stream key prefix; ``tag``: in its offline parts' names.
    """

    def __init__(self, settings: Settings, metrics: Metrics, data_dir: Path, state_dir: Path, feast_redis: str,
                 redis_type: str, embedded_url: str | None = None, log_prefix: str | None = None, tag: str = "",
                 ids: Pseudonymizer | None = None, fork_checkpoints: bool | None = None,
                 shared_trainer: tuple[Any, Any, int] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.data_dir = Path(data_dir)
        self.state_dir = Path(state_dir)
        self.feast_redis = feast_redis
        self.redis_type = redis_type
        self.embedded_url = embedded_url
        self.log_prefix = log_prefix
        self.tag = tag
        self.ids = ids
        self.fork = settings.checkpoint_fork if fork_checkpoints is None else fork_checkpoints
        # several workers: (the trainer actor, a TrainerStream, this worker's index) -- server.cluster.trainer
        self.shared_trainer = shared_trainer
        self.core: ProfileCore | None = None
        self.durability: Durability | None = None
        self.recovery: RecoveryReport | None = None
        self.trainer_process: TrainerProcess | TrainerLink | None = None
        self._writer: WriterProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ticks = 0

    async def spawn_writer(self) -> None:
        """Start the online writer child (``PORTRAIT_ONLINE_WRITER=process``) early: it imports Feast on the
        other core while this process does the rest of the start."""
        s = self.settings
        if s.online_writer == "process" and self._writer is None:
            self._writer = WriterProcess(s.feature_repo, env=feast_env(self.data_dir, self.feast_redis,
                                                                       self.redis_type),
                                         timeout_s=s.online_write_timeout_s)
            await self._writer.spawn()

    async def start(self, writer_store: Any, reader_store: Any) -> ProfileCore:
        """Build the worker on two Feast stores (rows written through one, read through the other), recover its
        state from the newest checkpoint + the log after it, start its trainer process; returns the core.
        The periodic tasks start with ``run``."""
        s = self.settings
        await self.spawn_writer()
        writer = OnlineStore(writer_store)
        online_write: RowSink = writer.write
        if self._writer is not None:
            await self._writer.open()  # the first write waits until the child has opened the store
            online_write = self._writer.write
        offline = OfflineLog(self.data_dir, tag=self.tag)
        config = worker_config(s)
        shared = self.shared_trainer is not None
        remote = (RemoteTrainer(config.trainer, s.model_publish_s, share_item_stats=shared)
                  if s.trainer == "process" or shared else None)
        worker = PartitionWorker(config, self.metrics, remote)

        async def log_durable() -> None:
            await durability.commit()

        materializer = Materializer(
            worker.row, online_write, offline.append, self.metrics, delete=writer.delete, before_write=log_durable,
            flush_interval_s=s.flush_interval_s, flush_max_rows=s.flush_max_rows,
            offline_roll_s=s.offline_roll_s, offline_roll_rows=s.offline_roll_rows,
            max_backoff_s=s.retry_max_backoff_s, later_rows_per_flush=s.timer_rows_per_flush,
        )
        worker.on_timer = materializer.mark_later  # time alone changed a profile: write it again, after events
        # while a flush's worth of such rows still waits, events fire no more timers (firing costs the loop
        # and its rows could not be written sooner); idle ticks still fire every due timer
        worker.timers_held = lambda: materializer.later_depth >= s.timer_rows_per_flush
        durability = Durability(self.state_dir, worker, materializer, checkpoint_interval_s=s.checkpoint_interval_s,
                                log_retention_s=s.log_retention_s, fork_checkpoints=self.fork,
                                log_=event_log(s, self.data_dir, self.embedded_url, self.log_prefix, self.state_dir),
                                partitions=s.partitions, offline_tag=self.tag)
        self.recovery = await asyncio.to_thread(durability.recover)
        self.durability = durability
        if remote is not None and self.shared_trainer is not None:  # after the recovery, as below
            actor, stream, index = self.shared_trainer
            self.trainer_process = TrainerLink(remote, stream, index, actor, s.model_publish_s)
            await self.trainer_process.start()
        elif remote is not None:  # after the recovery: the child starts from the models + the replay's messages
            self.trainer_process = TrainerProcess(remote)
            await self.trainer_process.start()
            log.info("the shared models learn in a trainer process (pid %d), published every %.2f s",
                     self.trainer_process.pid, s.model_publish_s)
        self.core = ProfileCore(worker, materializer, OnlineStore(reader_store), durability,
                                max_log_backlog_bytes=s.max_log_backlog_bytes, ids=self.ids,
                                max_trainer_backlog=s.max_trainer_backlog,
                                offline_dir=offline_dir(self.data_dir), erase_timeout_s=s.erase_timeout_s,
                                # the embedded Redis keeps its files in the data dir: rewrite them too
                                rewrite_online=writer.rewrite_persistence if self.embedded_url else None)
        return self.core

    def run(self) -> None:
        """Start writing rows, checkpointing and compacting (on the running loop)."""
        assert self.core is not None and self.durability is not None
        self.core.materializer.start()
        self._tasks.append(asyncio.create_task(self.durability.run(), name="checkpoints"))
        self._tasks.append(asyncio.create_task(self._compact_periodically(), name="compaction"))

    async def tick(self) -> bool:
        """Once a second: fire the timers time has passed, refresh the gauges (model quality every
        ``QUALITY_EVERY`` ticks); returns whether online writes succeed."""
        core, durability = self.core, self.durability
        assert core is not None and durability is not None
        await core.advance_time(self.settings.watermark_idle_s)
        core.worker.refresh_gauges(quality=self._ticks % QUALITY_EVERY == 0)
        self._ticks += 1
        self.metrics.queue_depth.labels(queue="log").set(durability.log.pending_bytes)
        self.metrics.queue_depth.labels(queue="trainer").set(core.worker.trainer.backlog())
        healthy = core.materializer.online_healthy
        self.metrics.online_store_up.set(1 if healthy else 0)
        return healthy

    async def _compact_periodically(self) -> None:
        assert self.core is not None
        while True:
            await asyncio.sleep(self.settings.compact_interval_s)
            if self.core.worker.erasures.pending:
                try:
                    await self.core.compact()
                except Exception:
                    log.exception("compaction failed; erased users stay pending for the next one")

    async def stop(self, grace_s: float) -> None:
        """Flush pending rows, let the trainer publish what it learnt, final checkpoint, stop the children."""
        for t in self._tasks:
            t.cancel()
        if self.core:
            try:
                await asyncio.wait_for(self.core.materializer.stop(), timeout=max(grace_s, 1.0))
            except TimeoutError:
                log.error("gave up flushing %d pending profile rows after %.1f s (they are in the log "
                          "and the checkpoint, and will be written after the next start)",
                          self.core.materializer.depth, grace_s)
        if self.trainer_process:  # its last models in before the final checkpoint (what it has not learnt is kept)
            await self.trainer_process.drain(timeout_s=max(grace_s, 1.0))
            await self.trainer_process.close()
        if self.durability:
            await self.durability.close()
        if self._writer:
            await self._writer.close()
