"""Compaction: rewrite stored files without the users erased since the last compaction.

Three kinds of files can hold an erased user: offline parquet parts (profile rows), event-log
segments (their events and attribute updates) and checkpoints (the whole state). Each file that
holds one is rewritten atomically (``server.log.atomic``), so a crash leaves either the old or the
new file, never a torn one. Log records are replaced by tombstones (offsets stay, so checkpoints still
point at the right records). What to remove is decided by ``Erasures.doomed_record`` / ``doomed_row``
(the user's digest, never its id, keyed with the data directory's secret: ``load_salt``).

The functions block (file I/O, parquet, pickle): the server runs them in a worker thread.
"""

from __future__ import annotations

import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from server.domain.erasure import Erasures
from server.log import checkpoint
from server.log.atomic import atomic_file, fsync_dir, write_atomic
from server.log.eventlog import HEADER, EventLog, records

SALT_FILE = "erasure.key"


def load_salt(data_dir: Path) -> bytes:
    """The data directory's erasure secret (``SALT_FILE``), created (0600, 32 random bytes) on first use."""
    path = Path(data_dir) / SALT_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, os.urandom(32), mode=0o600)
        return path.read_bytes()


@dataclass
class CompactionReport:
    """What one compaction rewrote."""

    offline_files: int = 0
    log_segments: int = 0
    checkpoints: int = 0
    erased_users: int = 0
    seconds: float = 0.0


def remove_temp_files(directory: Path, pattern: str = "*.tmp") -> int:
    """Delete leftover temp files matching ``pattern`` (a crash mid-write may leave one holding anybody); call
    only while no writer of those files runs."""
    gone = list(Path(directory).glob(pattern))
    for p in gone:
        p.unlink(missing_ok=True)
    return len(gone)


def compact_offline(directory: Path, erasures: Erasures, pattern: str = "*.parquet") -> int:
    """Rewrite (or delete, when nothing else is left) every parquet part (matching ``pattern``) holding a doomed
    row."""
    changed = 0
    for path in sorted(Path(directory).glob(pattern)):
        users = pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist()
        if not any(erasures.digest(u) in erasures.pending for u in set(users)):
            continue
        table = pq.read_table(path)
        created = table.column("created_timestamp").cast("int64").to_pylist()
        keep = [not erasures.doomed_row(u, c / 1e6) for u, c in zip(users, created, strict=True)]
        if all(keep):
            continue
        if not any(keep):
            path.unlink()
            fsync_dir(path.parent)
        else:
            with atomic_file(path) as fh:
                pq.write_table(table.filter(pa.array(keep)), fh)
        changed += 1
    return changed


def compact_segment(path: Path, first_offset: int, erasures: Erasures,
                    user_of: Callable[[bytes], str | None], tombstone: bytes) -> bool:
    """Replace the doomed records of one *closed* log segment by ``tombstone`` records; True if rewritten."""
    data = path.read_bytes()
    out = bytearray()
    changed = False
    for off, start, end, payload in records(data, first_offset):
        user = user_of(payload)
        if user is not None and erasures.doomed_record(user, off):
            out += HEADER.pack(len(tombstone), zlib.crc32(tombstone)) + tombstone
            changed = True
        else:
            out += data[start:end]
    if changed:
        write_atomic(path, bytes(out))
    return changed


def compact_log(log: EventLog, erasures: Erasures, user_of: Callable[[bytes], str | None],
                tombstone: bytes) -> int:
    """Compact every segment but the newest (call ``EventLog.roll`` first so that it holds nothing doomed)."""
    segs = log.segments()
    return sum(compact_segment(path, first, erasures, user_of, tombstone) for first, path in segs[:-1])


def compact_checkpoints(directory: Path, erasures: Erasures, erase: Callable[[dict[str, Any]], dict[str, Any]],
                        keep_newest: bool = True) -> int:
    """Rewrite every checkpoint taken before a pending erasure (its offset <= the erasure's) through ``erase``
    (a state dict -> the same without the doomed users); the newest is skipped when ``keep_newest``
    (the caller has just written it from the already-erased state)."""
    newest_erasure = max((p[0] for p in erasures.pending.values()), default=-1)
    found = checkpoint.checkpoints(directory)  # newest first
    if keep_newest:
        found = found[1:]
    changed = 0
    for offset, path in found:
        if offset > newest_erasure:
            continue
        try:
            _, body = checkpoint.read_checkpoint(path)
        except ValueError:  # damaged: useless as a fallback and maybe holding the user
            path.unlink()
            changed += 1
            continue
        state = erase(checkpoint.loads(body))
        checkpoint.write_checkpoint(directory, offset, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        changed += 1
    return changed
