"""The append-only event log: what makes an acknowledgement durable.

Records are appended in memory by the single writer and made durable by
``commit()``: one ``write`` + ``fsync`` for everything appended so far (group
commit — concurrent callers share it). Files are segments named by the offset
of their first record (``00000000000000000000.log``); a segment is rolled once
it exceeds ``segment_bytes``. Each record is ``<u32 length><u32 crc32><payload>``;
on open, a torn or corrupt tail of the newest segment (a crash mid-write) is
detected by its length/checksum and cut off, never replayed as garbage.

Offsets count records from 0 over the whole log.

>>> import tempfile, asyncio
>>> log = EventLog(tempfile.mkdtemp())
>>> log.open().next_offset
0
>>> log.append(b"a"), log.append(b"b")
(0, 1)
>>> asyncio.run(log.commit())
>>> [(o, p) for o, p in log.read_from(1)]
[(1, b'b')]
>>> log.close()
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from server.log.atomic import fsync_dir
from server.log.groupcommit import GroupCommit

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024
SUFFIX = ".log"


@dataclass(frozen=True)
class OpenInfo:
    """What ``open`` found: the next offset, and how many bytes of a torn tail were cut."""

    next_offset: int
    segments: int
    truncated_bytes: int


def _segment_name(first_offset: int) -> str:
    return f"{first_offset:020d}{SUFFIX}"


def records(data: bytes, first_offset: int = 0) -> Iterator[tuple[int, int, int, bytes]]:
    """``(offset, start, end, payload)`` of every valid record of one segment's bytes, stopping at the first
    torn or corrupt one (``data[start:end]`` is the whole record, header included)."""
    pos, off = 0, first_offset
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        payload = data[pos + HEADER.size:end]
        if length > MAX_RECORD or end > len(data) or zlib.crc32(payload) != crc:
            return
        yield off, pos, end, payload
        pos, off = end, off + 1


def _scan(path: Path) -> tuple[int, int]:
    """(valid records, valid byte length) of one segment file."""
    count = size = 0
    for _, _, end, _ in records(path.read_bytes()):
        count, size = count + 1, end
    return count, size


class EventLog:
    """Segmented, checksummed, group-committed append-only log in ``directory``."""

    def __init__(self, directory: str | Path, segment_bytes: int = 64 * 1024 * 1024, fsync: str = "always",
                 fsync_interval_s: float = 0.05) -> None:
        if fsync not in ("always", "interval"):
            raise ValueError("fsync must be 'always' or 'interval'")
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self._fd: int | None = None
        self._segment_size = 0
        self._next = 0  # offset of the next appended record
        self._written = 0  # records handed to the OS
        self._durable = 0  # records known to be on disk (fsynced)
        self._buf = bytearray()
        self._fsync_task: asyncio.Task[None] | None = None
        self._group = GroupCommit(self._flush_once, "eventlog-flush")
        self._roll_from: int | None = None

    # -- opening -----------------------------------------------------------------------------
    def segments(self) -> list[tuple[int, Path]]:
        """(first offset, path) of every segment, oldest first."""
        out = []
        for p in self.dir.glob(f"*{SUFFIX}"):
            try:
                out.append((int(p.stem), p))
            except ValueError:
                continue
        return sorted(out)

    def open(self) -> OpenInfo:
        """Find the end of the log, cutting a torn tail off the newest segment."""
        self.dir.mkdir(parents=True, exist_ok=True)
        segs = self.segments()
        truncated = 0
        if not segs:
            first, path = 0, self.dir / _segment_name(0)
            path.touch()
            count = size = 0
        else:
            first, path = segs[-1]
            count, size = _scan(path)
            actual = path.stat().st_size
            if actual > size:
                truncated = actual - size
                log.warning("event log: cut a torn/corrupt tail of %d bytes off %s after %d valid records",
                            truncated, path.name, count)
                with open(path, "r+b") as fh:
                    fh.truncate(size)
                    os.fsync(fh.fileno())
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._segment_size = size
        self._next = self._written = self._durable = first + count
        return OpenInfo(self._next, max(1, len(segs)), truncated)

    # -- writing (event loop) ----------------------------------------------------------------
    @property
    def next_offset(self) -> int:
        """Offset the next appended record will get (= records appended so far)."""
        return self._next

    @property
    def durable_offset(self) -> int:
        """Records below this offset are durable (per the fsync policy)."""
        return self._written if self.fsync == "interval" else self._durable

    @property
    def pending_bytes(self) -> int:
        """Appended bytes not yet handed to the OS."""
        return len(self._buf)

    def append(self, payload: bytes, partition: int = 0) -> int:
        """Append one record (in memory); returns its offset. Durable after ``commit``. One file log holds every
        partition: ``partition`` is not kept (``server.log.streams`` keeps one stream per partition)."""
        if self._group.failed:
            raise RuntimeError("event log failed earlier; refusing writes") from self._group.failed
        self._buf += HEADER.pack(len(payload), zlib.crc32(payload))
        self._buf += payload
        offset = self._next
        self._next += 1
        return offset

    async def commit(self) -> None:
        """Return once every record appended so far is durable (``always``: fsynced;
        ``interval``: written to the OS, fsynced within ``fsync_interval_s``)."""
        await self._group.until(self._next, self.durable_offset)

    async def _flush_once(self) -> int | None:
        """Write (and with ``always`` fsync) everything appended; the offset durable now (None: nothing was)."""
        if not self._buf:
            return None
        data, upto = bytes(self._buf), self._next
        self._buf.clear()
        try:
            await asyncio.to_thread(self._write, data, self._written, self.fsync == "always")
        except BaseException as exc:  # disk full / I/O error: every waiter fails, further writes are refused
            log.critical("event log write failed: %s", exc)
            raise
        self._written = upto
        if self.fsync == "always":
            self._durable = upto
        elif self._fsync_task is None:
            self._fsync_task = asyncio.create_task(self._fsync_later(), name="eventlog-fsync")
        return self.durable_offset

    async def _fsync_later(self) -> None:
        await asyncio.sleep(self.fsync_interval_s)
        upto = self._written
        fd = self._fd
        if fd is not None:
            await asyncio.to_thread(os.fsync, fd)
        self._durable = max(self._durable, upto)
        self._fsync_task = None

    def _write(self, data: bytes, first_offset: int, fsync: bool) -> None:  # worker thread
        assert self._fd is not None
        roll = self._roll_from is not None and first_offset >= self._roll_from
        if self._segment_size and (roll or self._segment_size + len(data) > self.segment_bytes):
            self._roll_from = None
            os.fsync(self._fd)
            os.close(self._fd)
            path = self.dir / _segment_name(first_offset)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._segment_size = 0
            fsync_dir(self.dir)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._segment_size += len(data)
        if fsync:
            os.fsync(self._fd)

    async def roll(self, filler: bytes) -> int:
        """Start a new segment such that every record appended before this call lies in older segments
        (which then never change: compaction may rewrite them). Appends ``filler`` records (a no-op kind
        of the caller's) until a write opens the new segment; returns its first offset."""
        target = self._next
        while True:
            self._roll_from = self._next
            self.append(filler)
            await self.commit()
            first = self.segments()[-1][0]
            if first >= target:
                return first

    def close(self) -> None:
        """Close the current segment (call after a final ``commit``)."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # -- reading and retention -----------------------------------------------------------------
    def read_from(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, payload)`` of every valid durable record at or after ``offset``."""
        segs = self.segments()
        for i, (first, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= offset:
                continue
            for off, _, _, payload in records(path.read_bytes(), first):
                if off >= offset:
                    yield off, payload

    def first_offset(self) -> int:
        """Offset of the oldest retained record."""
        segs = self.segments()
        return segs[0][0] if segs else 0

    def retain(self, offset: int, retention_s: float) -> int:
        """Delete segments wholly below ``offset`` (the oldest kept checkpoint), except those written to within
        ``retention_s`` (kept for ``portrait replay-log``; negative: keep all); returns how many went."""
        if retention_s < 0:
            return 0
        cutoff = time.time() - retention_s
        keep_from = offset
        for first, path in self.segments():  # oldest first
            if path.stat().st_mtime >= cutoff:
                keep_from = min(keep_from, first)
                break
        deleted = self.delete_before(keep_from)
        for path in deleted:
            log.info("deleted log segment %s (covered by a checkpoint)", path.name)
        return len(deleted)

    def delete_before(self, offset: int) -> list[Path]:
        """Delete whole segments whose records all lie below ``offset`` (never the current one)."""
        segs = self.segments()
        deleted = []
        for i, (_, path) in enumerate(segs[:-1]):
            if segs[i + 1][0] <= offset:
                path.unlink()
                deleted.append(path)
        return deleted
