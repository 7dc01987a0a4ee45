"""Durability: every accepted change goes to the event log before it is acknowledged;
checkpoints of the whole state let a restart load the newest one and replay the log after it.

Record kinds in the log: ``E`` + an event (protobuf bytes), ``A`` + JSON attributes,
``D`` + JSON ``{"digest", "at"}`` (an erasure; ``server.domain.erasure``), ``U`` + a digest (suppression
lifted), ``X`` (a record compaction removed: offsets stay), ``N`` (no-op: closes a segment).
The partition worker applies a change and the log records it in the same synchronous step,
so the log order is the apply order and a replay reproduces the state exactly.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import fdlimit
from server.domain.erasure import Erasures
from server.domain.events import Event
from server.domain.partition import partition_of
from server.log import checkpoint, codec, compaction
from server.log.eventlog import EventLog
from server.log.streams import StreamLog
from server.logs import OncePerCause, cause_of
from server.worker import snapshot
from server.worker.materialize import Materializer
from server.worker.partition import PartitionWorker

log = logging.getLogger(__name__)

EVENT, ATTRIBUTES, ERASE, UNSUPPRESS, TOMBSTONE, NOOP = b"E", b"A", b"D", b"U", b"X", b"N"


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up recovery did."""

    checkpoint_offset: int | None
    replayed: int
    next_offset: int
    truncated_bytes: int
    seconds: float


def apply_record(worker: PartitionWorker, payload: bytes, offset: int = -1,
                 on_erase: Callable[[str], Any] | None = None) -> str | None:
    """Apply one log record to ``worker``; return the user it changed (None if nothing changed).
    ``on_erase`` gets the stored id of a user an erasure record dropped."""
    kind, body = payload[:1], payload[1:]
    if kind == EVENT:
        e = codec.event_from_bytes(body)
        worker.offset = offset
        out = worker.apply(e, score=False)
        return None if out.duplicate or out.suppressed else e.user_id
    if kind == ATTRIBUTES:
        a = json.loads(body)
        worker.update_attributes(a["user_id"], a["age"], a["gender"], a["region"])
        return str(a["user_id"])
    if kind == ERASE:
        d = json.loads(body)
        user = worker.erase_digest(d["digest"], offset, d["at"])
        if user is not None and on_erase is not None:
            on_erase(user)
        return None
    if kind == UNSUPPRESS:
        u = json.loads(body)
        worker.unsuppress(u["digest"], u["at"])
        return None
    if kind in (TOMBSTONE, NOOP):
        return None
    raise ValueError(f"unknown log record kind {kind!r}")


def record_user(payload: bytes) -> str | None:
    """The stored user id a record holds (events and attribute updates), for compaction."""
    kind, body = payload[:1], payload[1:]
    if kind == EVENT:
        return codec.event_from_bytes(body).user_id
    if kind == ATTRIBUTES:
        return str(json.loads(body)["user_id"])
    return None


@dataclass(frozen=True)
class Restored:
    """What ``restore`` loaded: the checkpoint's snapshot (None without one), where the log replay started,
    and how many records it applied."""

    snapshot: snapshot.Snapshot | None
    path: Path | None
    start: int
    replayed: int


def restore(worker: PartitionWorker, log_: EventLog | StreamLog, checkpoint_dir: Path, from_start: bool = False,
            on_user: Callable[[str], Any] | None = None, on_erase: Callable[[str], Any] | None = None,
            on_snapshot: Callable[[snapshot.Snapshot], Any] | None = None) -> Restored:
    """The one recovery path: load the newest valid checkpoint into ``worker`` (unless ``from_start``), then
    replay the log after it. ``on_snapshot`` gets the loaded snapshot before the replay, ``on_user`` each user a
    replayed record changed, ``on_erase`` each user an erasure record dropped. Used by the server's start-up
    and by ``portrait replay-log``."""
    found = None if from_start else checkpoint.load_latest(checkpoint_dir)
    snap, path, start = None, None, 0
    if found:
        start, body, path = found
        snap = snapshot.loads(body, start)
        snapshot.restore(worker, snap)
        if on_snapshot is not None:
            on_snapshot(snap)
        log.info("loaded checkpoint %s (log offset %d, %d users%s)", path.name, start, len(worker.profiles),
                 f"; converted from format {snap.converted_from}" if snap.converted_from is not None else "")
    first = log_.first_offset()
    if start < first:
        log.warning("the log starts at offset %d but the replay starts at %d: records %d..%d are gone; profiles "
                    "miss them (PORTRAIT_LOG_RETENTION_S=-1 keeps the whole log)", first, start, start, first - 1)
    replayed = 0
    for offset, payload in log_.read_from(start):
        user = apply_record(worker, payload, offset, on_erase)
        if user is not None and on_user is not None:
            on_user(user)
        replayed += 1
    return Restored(snap, path, start, replayed)


class Durability:
    """Owns the event log and the checkpoints of one data directory."""

    def __init__(self, data_dir: Path, worker: PartitionWorker, materializer: Materializer,
                 fsync: str = "always", segment_bytes: int = 64 * 1024 * 1024,
                 checkpoint_interval_s: float = 60.0, log_retention_s: float = 0.0,
                 fork_checkpoints: bool = True, log_: EventLog | StreamLog | None = None, partitions: int = 1,
                 offline_tag: str = "") -> None:
        self.worker = worker
        # with several workers each compacts only its own offline parts (its users' rows are only there) and
        # its own temp files: the others' are being written meanwhile
        self.offline_parts = f"part-*-{offline_tag}-*.parquet" if offline_tag else "*.parquet"
        self.offline_temps = f".part-*-{offline_tag}-*.tmp" if offline_tag else "*.tmp"
        self.partitions = partitions
        self.materializer = materializer
        self.checkpoint_interval_s = checkpoint_interval_s
        self.log_retention_s = log_retention_s
        self.checkpoint_dir = Path(data_dir) / "checkpoints"
        self.log = log_ if log_ is not None else EventLog(Path(data_dir) / "log", segment_bytes=segment_bytes,
                                                          fsync=fsync)
        self.checkpoint_seconds = 0.0
        self.fork = fork_checkpoints and hasattr(os, "fork")
        self._fork_skipped = OncePerCause(log)
        self._checkpointed_at = self.log.next_offset
        self._checkpointing = asyncio.Lock()

    # -- start-up -----------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Load the newest valid checkpoint, replay the log after it, queue changed users for writing."""
        t0 = time.perf_counter()
        opened = self.log.open()
        materializer = self.materializer

        def restored(snap: snapshot.Snapshot) -> None:  # before the replay: rows the checkpoint had not written
            materializer.restore(snap.dirty, snap.offline_rows, snap.deletes)

        done = restore(self.worker, self.log, self.checkpoint_dir, on_user=materializer.mark_quiet,
                       on_erase=materializer.forget, on_snapshot=restored)
        replayed, start = done.replayed, done.start
        if done.snapshot or replayed:
            self.worker.guard_row_times()
        if start > self.log.next_offset and isinstance(self.log, StreamLog):
            log.error("the checkpoint covers the log up to offset %d but the log in Redis ends at %d: Redis lost "
                      "records (no append-only file, or flushed); new records go on after the checkpoint",
                      start, self.log.next_offset)
            self.log.skip_to(start)
        self._checkpointed_at = start
        report = RecoveryReport(start if done.snapshot else None, replayed, opened.next_offset,
                                opened.truncated_bytes, time.perf_counter() - t0)
        if done.snapshot or replayed:
            log.info("recovered: checkpoint offset %s, replayed %d log records in %.2f s%s",
                     report.checkpoint_offset, replayed, report.seconds,
                     f", cut a torn log tail of {opened.truncated_bytes} bytes" if opened.truncated_bytes else "")
        return report

    # -- the write path (event loop) ------------------------------------------------------------
    def log_event(self, e: Event) -> None:
        """Record an applied event (durable after ``commit``), in its user's partition."""
        self.log.append(EVENT + codec.event_to_bytes(e), partition_of(e.user_id, self.partitions))

    def log_attributes(self, user_id: str, age: int, gender: str, region: str) -> None:
        """Record an applied attribute update."""
        body = json.dumps({"user_id": user_id, "age": age, "gender": gender, "region": region})
        self.log.append(ATTRIBUTES + body.encode(), partition_of(user_id, self.partitions))

    def log_erasure(self, digest: str, at: float, user_id: str = "") -> int:
        """Record an erasure (by digest only; ``user_id``, the stored id, picks the partition: the one that holds
        the user's events); returns its log offset."""
        return self.log.append(ERASE + json.dumps({"digest": digest, "at": at}).encode(),
                               partition_of(user_id, self.partitions))

    def log_unsuppress(self, digest: str, at: float, user_id: str = "") -> None:
        """Record that a suppression was lifted."""
        self.log.append(UNSUPPRESS + json.dumps({"digest": digest, "at": at}).encode(),
                        partition_of(user_id, self.partitions))

    async def commit(self) -> None:
        """Return once everything recorded so far is durable.

        If the log cannot be written (disk full, I/O error) the process stops at once (exit 70):
        memory already holds changes the log does not, so the only consistent state is the log's;
        a supervisor restarts the server, which recovers every acknowledged change from it.
        """
        try:
            await self.log.commit()
        except RuntimeError:
            log.critical("event log write failed: stopping now so a restart recovers from the log")
            logging.shutdown()
            os._exit(70)

    # -- checkpoints -------------------------------------------------------------------------------
    async def checkpoint(self, fork: bool | None = None) -> Path:
        """Snapshot the state (synchronously: a consistent cut), make the log durable up to it,
        write the checkpoint, then delete log segments it makes unnecessary."""
        async with self._checkpointing:  # one at a time: the periodic task and close() may overlap
            return await self._checkpoint(fork)

    def _body(self, offset: int, dirty: list[str], offline_rows: list[Any], deletes: list[str]) -> bytes:
        return snapshot.dumps(snapshot.take(self.worker, offset, dirty, offline_rows, deletes))

    async def _checkpoint(self, fork: bool | None = None) -> Path:
        t0 = time.perf_counter()
        offset = self.log.next_offset
        dirty, offline_rows = self.materializer.snapshot()
        deletes = self.materializer.pending_deletes()
        tmp = checkpoint.temp_path(self.checkpoint_dir, offset)
        forked = self.fork if fork is None else fork
        if forked and fdlimit.free_fds() < fdlimit.FORK_HEADROOM:  # gRPC's fork handlers abort without them
            self._fork_skipped.failed("EMFILE", "checkpoint written without a fork: fewer than %d file "
                                      "descriptors free", fdlimit.FORK_HEADROOM)
            forked = False
        if forked:
            try:
                await self._write_forked(tmp, offset, dirty, offline_rows, deletes)
            except OSError as exc:  # fork itself failed (memory, process limit): write it here instead
                self._fork_skipped.failed(cause_of(exc), "checkpoint fork failed (%s): written in-process",
                                          cause_of(exc))
                forked = False
            else:
                self._fork_skipped.recovered("checkpoints fork again")
        if not forked:  # pickled here: the event loop waits (seconds with millions of users)
            body = self._body(offset, dirty, offline_rows, deletes)
            await asyncio.to_thread(checkpoint.write_temp, tmp, offset, body)
        await self.log.commit()  # never publish a state the log does not hold up to its offset
        path = await asyncio.to_thread(checkpoint.publish, tmp, self.checkpoint_dir, offset)
        await asyncio.to_thread(checkpoint.prune, self.checkpoint_dir)
        self._checkpointed_at = offset
        kept = checkpoint.checkpoints(self.checkpoint_dir)
        # the log from the oldest kept checkpoint on (so a corrupt newest one can fall back to the previous)
        await asyncio.to_thread(self.log.retain, min(o for o, _ in kept) if kept else 0, self.log_retention_s)
        self.checkpoint_seconds = time.perf_counter() - t0
        log.info("checkpoint at log offset %d: %d bytes in %.2f s", offset, path.stat().st_size,
                 self.checkpoint_seconds)
        return path

    async def _write_forked(self, tmp: Path, offset: int, dirty: list[str], offline_rows: list[Any],
                            deletes: list[str]) -> None:
        """Pickle and write the state in a forked child: a copy-on-write snapshot of this instant, so the
        event loop goes on serving while it is written (as Redis' BGSAVE). The child touches no lock,
        thread or socket of the parent and leaves with ``os._exit``.

        No garbage collection in the child: a collection there walks objects that other threads of the parent
        (gRPC, the metrics server) were using at the fork. Seen: the child died of SIGSEGV (exit -11) in 2 of 3
        ``evaluate --through-server`` runs with a per-user layout of three arrays; 0 of 2 with the collector
        off in the child. ``gc.freeze()`` before the fork also keeps the parent's collections from touching
        (and so copying) the pages the child is still reading. It is what the server does every
        ``gc_freeze_interval_s`` anyway; no unfreeze after (that would hand every long-lived object back to full
        collections, 150 ms each at 42k users)."""
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the child
            gc.disable()
            code = 1
            try:
                checkpoint.write_temp(tmp, offset, self._body(offset, dirty, offline_rows, deletes))
                code = 0
            finally:
                os._exit(code)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"the checkpoint child exited with {code}")

    async def run(self) -> None:
        """Checkpoint every ``checkpoint_interval_s`` while the log grows."""
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            if self.log.next_offset != self._checkpointed_at:
                try:
                    await self.checkpoint()
                except Exception:
                    log.exception("checkpoint failed; the log still holds everything")

    async def close(self) -> None:
        """Final checkpoint, then close the log."""
        if self.log.next_offset != self._checkpointed_at:
            await self.checkpoint(fork=False)  # nothing left to serve: no need for a child
        await self.log.commit()
        self.log.close()

    # -- compaction ------------------------------------------------------------------------------
    async def compact(self, offline_dir: Path, rewrite_online: Callable[[], Any] | None = None
                      ) -> compaction.CompactionReport:
        """Rewrite every stored file holding a user erased since the last compaction (see
        ``server.log.compaction``): roll the log, write a fresh checkpoint (the in-memory state is already
        clean), then rewrite closed log segments, older checkpoints and offline parquet parts, and
        (``rewrite_online``) the online store's own files. Erasures whose online row is not deleted yet
        wait for the next compaction."""
        async with self._checkpointing:
            t0 = time.perf_counter()
            erasures = self.worker.erasures
            waiting = {erasures.digest(u) for u in self.materializer.pending_deletes()}
            todo = {d: v for d, v in erasures.pending.items() if d not in waiting}
            if not todo:
                return compaction.CompactionReport()
            frozen = erasures.subset(todo)
            await self.log.roll(NOOP)
            await self._checkpoint()
            report = compaction.CompactionReport(erased_users=len(todo))
            if isinstance(self.log, StreamLog):  # entries deleted (XDEL), then Redis' append-only file rewritten
                report.log_segments = await asyncio.to_thread(self.log.compact, frozen, record_user)
            else:  # closed segments rewritten with tombstones
                report.log_segments = await asyncio.to_thread(compaction.compact_log, self.log, frozen, record_user,
                                                              TOMBSTONE)
            report.checkpoints = await asyncio.to_thread(
                compaction.compact_checkpoints, self.checkpoint_dir, frozen, lambda s: self._erase_state(s, frozen))
            compaction.remove_temp_files(self.checkpoint_dir)
            async with self.materializer.offline_lock:
                report.offline_files = await asyncio.to_thread(compaction.compact_offline, offline_dir, frozen,
                                                               self.offline_parts)
                compaction.remove_temp_files(offline_dir, self.offline_temps)
            if rewrite_online is not None:
                await asyncio.to_thread(rewrite_online)
            for d, v in todo.items():  # done, unless erased again meanwhile
                if erasures.pending.get(d) == v:
                    del erasures.pending[d]
            report.seconds = time.perf_counter() - t0
            log.info("compaction: %d erased users; rewrote %d log segments, %d checkpoints, %d offline files "
                     "in %.2f s", report.erased_users, report.log_segments, report.checkpoints,
                     report.offline_files, report.seconds)
            return report

    def _erase_state(self, body: dict[str, Any], erasures: Erasures, offset: int | None = None) -> dict[str, Any]:
        """A checkpoint's body without the users of ``erasures`` (worker thread; a scratch worker). Written
        back in the current format."""
        from prometheus_client import CollectorRegistry

        from server.metrics import Metrics

        snap = snapshot.from_dict(body, offset)
        scratch = PartitionWorker(self.worker.config, Metrics(CollectorRegistry()))
        snapshot.restore(scratch, snap)
        for d, (at_offset, at, _) in erasures.pending.items():
            scratch.erase_digest(d, at_offset, at)
        gone = erasures.pending
        keep = [u for u in snap.dirty if erasures.digest(u) not in gone]
        rows = [r for r in snap.offline_rows if erasures.digest(r["user_id"]) not in gone]
        deletes = [u for u in snap.deletes if erasures.digest(u) not in gone]
        return snapshot.to_dict(snapshot.take(scratch, snap.offset, keep, rows, deletes))
