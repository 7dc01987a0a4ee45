"""Unit tests of server.log.compaction on real files: log segments keep their offsets, parquet parts keep
other users' rows, and nothing doomed survives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow.parquet as pq

from server.domain.erasure import Erasures
from server.domain.events import Event, EventType
from server.log import compaction
from server.log.codec import event_to_bytes
from server.log.eventlog import EventLog
from server.store.feast import OfflineLog, offline_dir
from server.worker.durability import EVENT, NOOP, TOMBSTONE, record_user


def _event(user: str, n: int) -> bytes:
    return EVENT + event_to_bytes(Event(f"{user}-{n}", user, EventType.VIEW, 1_700_000_000.0 + n, item_id="i"))


def test_log_compaction_tombstones_records_before_the_erasure_and_keeps_offsets(tmp_path: Path) -> None:
    async def write() -> EventLog:
        log = EventLog(tmp_path / "log", segment_bytes=200)
        log.open()
        for n in range(10):
            log.append(_event("victim" if n % 2 else "other", n))
            await log.commit()
        await log.roll(NOOP)
        log.append(_event("victim", 99))  # after the erasure (e.g. the suppression was lifted): kept
        await log.commit()
        return log

    log = asyncio.run(write())
    er = Erasures(b"salt")
    er.add(er.digest("victim"), offset=10)
    assert len(log.segments()) > 2
    changed = compaction.compact_log(log, er, record_user, TOMBSTONE)
    assert changed >= 1
    records = list(log.read_from(0))
    assert [o for o, _ in records] == list(range(len(records)))  # every offset still there
    users = [record_user(p) for _, p in records]
    assert users.count("victim") == 1 and users.count("other") == 5 and records[-1][1] == _event("victim", 99)
    assert all(p == TOMBSTONE for (o, p) in records[:10] if o % 2)
    assert not any(b"victim" in p.read_bytes() for _, p in log.segments()[:-1])
    assert compaction.compact_log(log, er, record_user, TOMBSTONE) == 0  # idempotent
    log.close()


def test_offline_compaction_rewrites_or_removes_parts_and_keeps_other_rows(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from server.metrics import Metrics
    from server.worker.partition import PartitionWorker, WorkerConfig

    p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    for user in ("victim", "other"):
        p.apply(Event(f"{user}-e", user, EventType.VIEW, 1_700_000_000.0, item_id="i"))
    out = OfflineLog(tmp_path)
    mixed = out.append([p.row("victim"), p.row("other")])
    alone = out.append([p.row("victim")])
    untouched = out.append([p.row("other")])
    before = untouched.stat().st_mtime_ns
    er = Erasures()
    er.add(er.digest("victim"), offset=0)
    assert compaction.compact_offline(offline_dir(tmp_path), er) == 2
    assert not alone.exists() and untouched.stat().st_mtime_ns == before
    assert pq.read_table(mixed).column("user_id").to_pylist() == ["other"]
    assert not any(b"victim" in f.read_bytes() for f in offline_dir(tmp_path).iterdir())
    er.unsuppress(er.digest("victim"), at=1e18)  # lifted far in the future: rows written before it still go
    assert compaction.compact_offline(offline_dir(tmp_path), er) == 0
