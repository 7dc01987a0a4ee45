"""Checkpoints: the whole in-memory state at a log offset, written atomically.

A checkpoint file is ``<magic><u64 offset><u64 length><u32 crc32><body>``,
written to a temporary name, fsynced, renamed and the directory fsynced, so a
reader sees either the whole file or none. On start the newest checkpoint whose
checksum verifies is loaded; a corrupt or truncated one is skipped (and logged),
falling back to the one before it.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> _ = write_checkpoint(d, 42, b"state")
>>> load_latest(d)[:2]
(42, b'state')
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from server.domain.units import HOUR
from server.log.atomic import replace

log = logging.getLogger(__name__)

MAGIC = b"PRTCKPT1"
HEADER = struct.Struct("<QQI")
PREFIX, SUFFIX = "ckpt-", ".bin"


def checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(offset, path) of every checkpoint file, newest first."""
    out = []
    for p in Path(directory).glob(f"{PREFIX}*{SUFFIX}"):
        try:
            out.append((int(p.name[len(PREFIX):-len(SUFFIX)]), p))
        except ValueError:
            continue
    return sorted(out, reverse=True)


def write_checkpoint(directory: str | Path, offset: int, body: bytes) -> Path:
    """Atomically write a checkpoint of ``body`` taken at log ``offset``."""
    tmp = temp_path(directory, offset)
    write_temp(tmp, offset, body)
    return publish(tmp, directory, offset)


def temp_path(directory: str | Path, offset: int) -> Path:
    """A fresh temporary name for a checkpoint at ``offset`` (unique: writers never clash)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{PREFIX}{offset:020d}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def write_temp(tmp: Path, offset: int, body: bytes) -> None:
    """Write and fsync a checkpoint's bytes under its temporary name (not yet a checkpoint)."""
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + HEADER.pack(offset, len(body), zlib.crc32(body)))
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())


def publish(tmp: Path, directory: str | Path, offset: int) -> Path:
    """Rename a written temporary file to the checkpoint of ``offset`` (atomic, directory fsynced)."""
    d = Path(directory)
    final = d / f"{PREFIX}{offset:020d}{SUFFIX}"
    replace(tmp, final)
    return final


def read_checkpoint(path: Path) -> tuple[int, bytes]:
    """(offset, body) of one checkpoint; ValueError if it is truncated or corrupt."""
    data = path.read_bytes()
    head = len(MAGIC) + HEADER.size
    if len(data) < head or not data.startswith(MAGIC):
        raise ValueError("bad header")
    offset, length, crc = HEADER.unpack_from(data, len(MAGIC))
    body = data[head:]
    if len(body) != length:
        raise ValueError(f"truncated: {len(body)} of {length} bytes")
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    return offset, body


def load_latest(directory: str | Path) -> tuple[int, bytes, Path] | None:
    """The newest valid checkpoint as (offset, body, path), skipping corrupt ones; None if there is none."""
    for _, path in checkpoints(directory):
        try:
            offset, body = read_checkpoint(path)
        except (OSError, ValueError) as exc:
            log.warning("checkpoint %s is unusable (%s); trying the previous one", path.name, exc)
            continue
        return offset, body, path
    return None


def prune(directory: str | Path, keep: int = 2) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and stale temp files)."""
    d = Path(directory)
    removed = [p for _, p in checkpoints(d)[keep:]]
    stale = time.time() - HOUR  # a temp file this old belongs to no running writer
    removed += [p for p in d.glob(f"{PREFIX}*.tmp") if p.stat().st_mtime < stale]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


#: Where modules of checkpointed classes lived before the re-house by layer: a checkpoint written by the
#: earlier code names them, and loads with these moves applied (``loads``).
MOVED_MODULES = {
    "server.profile": "server.domain.profile", "server.windows": "server.domain.windows",
    "server.labels": "server.domain.labels", "server.dedupe": "server.domain.dedupe",
    "server.erasure": "server.domain.erasure", "server.events": "server.domain.events",
    "server.names": "server.domain.names", "server.models": "server.models.user",
    "server.ranking": "server.models.ranking", "server.itemlabels": "server.models.itemlabels",
    "server.itemstats": "server.models.itemstats", "server.risk": "server.models.risk",
    "server.quality": "server.models.quality",
}


class Removed:
    """An object of a class that no longer exists (format 0's ``Ranker`` and ``Risk``, split since between the
    partition worker and the trainer): its attributes only, for a converter to read (``vars``)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


#: Classes a format-0 checkpoint may hold that are gone (read as ``Removed``).
REMOVED_CLASSES = frozenset({
    ("server.models.ranking", "Ranker"), ("server.ranking", "Ranker"),
    ("server.models.risk", "Risk"), ("server.risk", "Risk"),
})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in REMOVED_CLASSES:
            return Removed
        return super().find_class(MOVED_MODULES.get(module, module), name)


def loads(body: bytes) -> Any:
    """A checkpoint body's state, also from a checkpoint written before the modules moved.

    >>> import pickle
    >>> from server.domain.labels import Decision
    >>> old = pickle.dumps(Decision(1.0, [0.5], 0.2), protocol=2).replace(b"server.domain.labels", b"server.labels")
    >>> b"server.labels" in old, type(loads(old)).__module__
    (True, 'server.domain.labels')
    """
    return _Unpickler(io.BytesIO(body)).load()
