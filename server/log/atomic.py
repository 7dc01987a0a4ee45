"""Atomic file writes: a file is replaced whole or not at all, also across a crash or a power loss.

The bytes go to a temporary file beside the target (a fresh name, ``.<name>.<pid>-<random>.tmp``, so
concurrent writers never clash), which is fsynced, renamed over the target (atomic on POSIX) and the
directory fsynced (so the rename itself is durable). Readers see the old file or the new one, never a
torn one; a crash may leave a ``*.tmp`` file behind (``compaction.remove_temp_files`` deletes those). On
an error the temporary file is removed and the target left as it was.

>>> import tempfile
>>> from pathlib import Path
>>> p = Path(tempfile.mkdtemp()) / "state.json"
>>> write_atomic(p, b'{"rows_done": 1}')
>>> with atomic_file(p) as fh:    # writers that stream (parquet, CSV) get a binary file
...     _ = fh.write(b'{"rows_done": 2}')
>>> p.read_bytes(), [q.name for q in p.parent.iterdir()]
(b'{"rows_done": 2}', ['state.json'])
>>> write_atomic(p.with_name("key"), b"secret", mode=0o600); oct(p.with_name("key").stat().st_mode & 0o777)
'0o600'
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory ``path`` (a rename, a new or deleted file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str | Path, path: str | Path) -> None:
    """Rename the written and fsynced ``tmp`` over ``path`` (same directory), then fsync the directory."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextmanager
def atomic_file(path: str | Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content to; on a normal exit it is fsynced and replaces
    ``path`` atomically, on an exception it is deleted. ``mode``: the new file's permission bits (less
    the umask), as for ``os.open``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes, mode: int = 0o666) -> None:
    """Replace ``path`` by ``data`` atomically and durably (``mode`` as for ``atomic_file``)."""
    with atomic_file(path, mode) as fh:
        fh.write(data)
