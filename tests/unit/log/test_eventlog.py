"""The event log: group commit, segments, checksums, torn tails, retention."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.log.eventlog import HEADER, EventLog


def _log(path: Path, **kw: object) -> EventLog:
    log = EventLog(path, **kw)  # type: ignore[arg-type]
    log.open()
    return log


async def test_records_are_durable_after_commit_and_read_back_in_order(tmp_path: Path) -> None:
    log = _log(tmp_path)
    offsets = [log.append(f"r{i}".encode()) for i in range(100)]
    assert offsets == list(range(100))
    assert log.durable_offset == 0
    await log.commit()
    assert log.durable_offset == 100
    log.close()
    again = EventLog(tmp_path)
    assert again.open().next_offset == 100
    assert [p for _, p in again.read_from(95)] == [f"r{i}".encode() for i in range(95, 100)]
    again.close()


async def test_concurrent_commits_share_flushes(tmp_path: Path) -> None:
    log = _log(tmp_path)
    writes = 0
    original = log._write

    def counting(*a: object) -> None:
        nonlocal writes
        writes += 1
        original(*a)  # type: ignore[arg-type]

    log._write = counting  # type: ignore[method-assign]

    async def writer(i: int) -> None:
        log.append(str(i).encode())
        await log.commit()

    await asyncio.gather(*(writer(i) for i in range(200)))
    assert log.durable_offset == 200
    assert writes < 200  # group commit: far fewer write+fsync rounds than commits
    log.close()


async def test_segments_roll_and_reads_span_them(tmp_path: Path) -> None:
    log = _log(tmp_path, segment_bytes=1024)
    for i in range(300):
        log.append(b"x" * 20 + str(i).encode())
        if i % 10 == 9:
            await log.commit()
    await log.commit()
    segs = log.segments()
    assert len(segs) > 3
    assert [first for first, _ in segs] == sorted(first for first, _ in segs)
    got = list(log.read_from(123))
    assert [o for o, _ in got] == list(range(123, 300))
    assert got[0][1].endswith(b"123")
    log.close()


async def test_torn_tail_is_cut_on_open_and_appends_continue(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for i in range(10):
        log.append(f"ok{i}".encode())
    await log.commit()
    log.close()
    seg = log.segments()[-1][1]
    size = seg.stat().st_size
    with seg.open("ab") as fh:  # a crash mid-record: header promising 100 bytes, 5 written
        fh.write(HEADER.pack(100, 0) + b"hello")
    reopened = EventLog(tmp_path)
    info = reopened.open()
    assert (info.next_offset, info.truncated_bytes) == (10, HEADER.size + 5)
    assert seg.stat().st_size == size
    reopened.append(b"after")
    await reopened.commit()
    assert [p for _, p in reopened.read_from(9)] == [b"ok9", b"after"]
    reopened.close()


async def test_corrupt_record_stops_the_scan_there(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for i in range(5):
        log.append(f"rec{i}".encode())
    await log.commit()
    log.close()
    seg = log.segments()[-1][1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the last record's payload: its checksum fails
    seg.write_bytes(bytes(data))
    reopened = EventLog(tmp_path)
    assert reopened.open().next_offset == 4
    assert [p for _, p in reopened.read_from(0)] == [f"rec{i}".encode() for i in range(4)]
    reopened.close()


async def test_delete_before_keeps_the_current_segment_and_later_records(tmp_path: Path) -> None:
    log = _log(tmp_path, segment_bytes=256)
    for _ in range(100):
        log.append(b"y" * 30)
        await log.commit()
    firsts = [f for f, _ in log.segments()]
    deleted = log.delete_before(firsts[2])
    assert len(deleted) == 2
    assert log.first_offset() == firsts[2]
    assert next(o for o, _ in log.read_from(0)) == firsts[2]
    assert len(log.delete_before(10**9)) == len(firsts) - 3  # never the current segment
    log.close()


async def test_interval_policy_acks_after_write_and_fsyncs_later(tmp_path: Path) -> None:
    log = _log(tmp_path, fsync="interval", fsync_interval_s=0.01)
    log.append(b"a")
    await log.commit()
    assert log.durable_offset == 1
    assert [p for _, p in log.read_from(0)] == [b"a"]  # in the file already
    log.close()


def test_bad_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        EventLog(tmp_path, fsync="sometimes")
