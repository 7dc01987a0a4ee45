"""Durability: every accepted change goes to the event log before it is acknowledged;
checkpoints of the whole state let a restart load the newest one and replay the log after it.

Record kinds in the log: ``E`` + an event (protobuf bytes), ``A`` + JSON attributes.
The pipeline applies a change and the log records it in the same synchronous step,
so the log order is the apply order and a replay reproduces the state exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import checkpoint, convert
from server.eventlog import EventLog
from server.events import Event
from server.materialize import Materializer
from server.pipeline import Pipeline

log = logging.getLogger(__name__)

EVENT, ATTRIBUTES = b"E", b"A"


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up recovery did."""

    checkpoint_offset: int | None
    replayed: int
    next_offset: int
    truncated_bytes: int
    seconds: float


def apply_record(pipeline: Pipeline, payload: bytes) -> str | None:
    """Apply one log record to ``pipeline``; return the user it changed (None if nothing changed)."""
    kind, body = payload[:1], payload[1:]
    if kind == EVENT:
        e = convert.event_from_bytes(body)
        return None if pipeline.apply(e, score=False).duplicate else e.user_id
    if kind == ATTRIBUTES:
        a = json.loads(body)
        pipeline.update_attributes(a["user_id"], a["age"], a["gender"], a["region"])
        return str(a["user_id"])
    raise ValueError(f"unknown log record kind {kind!r}")


class Durability:
    """Owns the event log and the checkpoints of one data directory."""

    def __init__(self, data_dir: Path, pipeline: Pipeline, materializer: Materializer,
                 fsync: str = "always", segment_bytes: int = 64 * 1024 * 1024,
                 checkpoint_interval_s: float = 60.0, log_retention_s: float = 0.0) -> None:
        self.pipeline = pipeline
        self.materializer = materializer
        self.checkpoint_interval_s = checkpoint_interval_s
        self.log_retention_s = log_retention_s
        self.checkpoint_dir = Path(data_dir) / "checkpoints"
        self.log = EventLog(Path(data_dir) / "log", segment_bytes=segment_bytes, fsync=fsync)
        self.checkpoint_seconds = 0.0
        self._checkpointed_at = self.log.next_offset
        self._checkpointing = asyncio.Lock()

    # -- start-up -----------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Load the newest valid checkpoint, replay the log after it, queue changed users for writing."""
        t0 = time.perf_counter()
        opened = self.log.open()
        found = checkpoint.load_latest(self.checkpoint_dir)
        start = 0
        if found:
            start, body, path = found
            state = pickle.loads(body)
            self.pipeline.load_state(state["pipeline"])
            self.materializer.restore(state["dirty"], state["offline_rows"])
            log.info("loaded checkpoint %s (log offset %d, %d users)", path.name, start,
                     len(self.pipeline.profiles))
        first = self.log.first_offset()
        if start < first:
            log.warning("the log starts at offset %d but the checkpoint is at %d: records %d..%d are gone; "
                        "profiles miss them", first, start, start, first - 1)
        replayed = 0
        for _, payload in self.log.read_from(start):
            user = apply_record(self.pipeline, payload)
            if user is not None:
                self.materializer.mark_quiet(user)
            replayed += 1
        self._checkpointed_at = start
        report = RecoveryReport(start if found else None, replayed, opened.next_offset, opened.truncated_bytes,
                                time.perf_counter() - t0)
        if found or replayed:
            log.info("recovered: checkpoint offset %s, replayed %d log records in %.2f s%s",
                     report.checkpoint_offset, replayed, report.seconds,
                     f", cut a torn log tail of {opened.truncated_bytes} bytes" if opened.truncated_bytes else "")
        return report

    # -- the write path (event loop) ------------------------------------------------------------
    def log_event(self, e: Event) -> None:
        """Record an applied event (durable after ``commit``)."""
        self.log.append(EVENT + convert.event_to_bytes(e))

    def log_attributes(self, user_id: str, age: int, gender: str, region: str) -> None:
        """Record an applied attribute update."""
        body = json.dumps({"user_id": user_id, "age": age, "gender": gender, "region": region})
        self.log.append(ATTRIBUTES + body.encode())

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
    async def checkpoint(self) -> Path:
        """Snapshot the state (synchronously: a consistent cut), make the log durable up to it,
        write the checkpoint, then delete log segments it makes unnecessary."""
        async with self._checkpointing:  # one at a time: the periodic task and close() may overlap
            return await self._checkpoint()

    async def _checkpoint(self) -> Path:
        t0 = time.perf_counter()
        offset = self.log.next_offset
        dirty, offline_rows = self.materializer.snapshot()
        body = pickle.dumps({"pipeline": self.pipeline.state(), "dirty": dirty, "offline_rows": offline_rows},
                            protocol=pickle.HIGHEST_PROTOCOL)
        await self.log.commit()
        path = await asyncio.to_thread(checkpoint.write_checkpoint, self.checkpoint_dir, offset, body)
        await asyncio.to_thread(checkpoint.prune, self.checkpoint_dir)
        self._checkpointed_at = offset
        kept = checkpoint.checkpoints(self.checkpoint_dir)
        self._retain(min(o for o, _ in kept) if kept else 0)  # the log from the oldest kept checkpoint on
        self.checkpoint_seconds = time.perf_counter() - t0
        log.info("checkpoint at log offset %d: %d bytes in %.2f s", offset, len(body), self.checkpoint_seconds)
        return path

    def _retain(self, offset: int) -> None:
        """Delete segments wholly below ``offset`` (the oldest kept checkpoint, so a corrupt newest
        checkpoint can fall back to the previous one and replay from there), except those written to within
        ``log_retention_s`` (kept for ``portrait replay-log``); a negative retention keeps all."""
        if self.log_retention_s < 0:
            return
        cutoff = time.time() - self.log_retention_s
        keep_from = offset
        for first, path in self.log.segments():  # oldest first
            if path.stat().st_mtime >= cutoff:
                keep_from = min(keep_from, first)
                break
        for path in self.log.delete_before(keep_from):
            log.info("deleted log segment %s (covered by a checkpoint)", path.name)

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
            await self.checkpoint()
        await self.log.commit()
        self.log.close()

    def state_summary(self) -> dict[str, Any]:
        """Numbers for logs/metrics."""
        return {"next_offset": self.log.next_offset, "durable_offset": self.log.durable_offset,
                "pending_bytes": self.log.pending_bytes}
