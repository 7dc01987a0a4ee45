"""The number of partitions of a data store: fixed when the store is first used, recorded in it, checked at
every later start.

Users are assigned to partitions by ``server.domain.partition.partition_of(user_id, P)``; a store written
with one ``P`` cannot be read with another (a user's state and events would be looked for in the wrong
partition). Re-partitioning an existing store is not supported: start a new data dir and replay the events
into it (``portrait replay``). The record is ``$PORTRAIT_DATA_DIR/partitions.json``, written atomically:
``{"partitions": P, "hash": "crc32"}``.

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> ensure_partitions(d, 64)   # first use: recorded
64
>>> ensure_partitions(d, 64)   # the same: fine
64
>>> try:
...     ensure_partitions(d, 32)
... except PartitionsChanged as exc:
...     print(str(exc).split("; ")[1].split(". ")[0])
this start asks for 32
"""

from __future__ import annotations

import json
from pathlib import Path

from server.domain.partition import HASH
from server.log.atomic import write_atomic

FILE = "partitions.json"


class PartitionsChanged(ValueError):
    """A start asked for another number of partitions (or hash) than the data store was created with."""


def recorded_partitions(data_dir: Path) -> int | None:
    """The number recorded in ``data_dir``, or None if the store has none yet."""
    path = Path(data_dir) / FILE
    if not path.exists():
        return None
    return int(json.loads(path.read_text())["partitions"])


def ensure_partitions(data_dir: Path, partitions: int, workers: int = 1) -> int:
    """Record ``partitions`` (and ``workers``, ``PORTRAIT_WORKERS``) in a store that has no record yet; raise
    ``PartitionsChanged`` if it has others.

    A data dir written before partitions were recorded (one process, every user in it) takes the number of
    this start: nothing in it depends on the count yet. A record without ``workers`` was written by one worker.
    The worker count is fixed like the partitions: each worker's state (log, checkpoints) covers the partitions
    it owned, and moving partitions between workers is not built yet."""
    path = Path(data_dir) / FILE
    if path.exists():
        rec = json.loads(path.read_text())
        if int(rec.get("workers", 1)) != workers and int(rec["partitions"]) == partitions:
            raise PartitionsChanged(
                f"the data dir {Path(data_dir).resolve()} was written by PORTRAIT_WORKERS={rec.get('workers', 1)}; "
                f"this start asks for {workers}. Moving partitions between workers is not supported yet: start "
                f"with PORTRAIT_WORKERS={rec.get('workers', 1)}, or replay the events into a new data dir")
        if int(rec["partitions"]) != partitions or rec.get("hash", HASH) != HASH:
            raise PartitionsChanged(
                f"the data dir {Path(data_dir).resolve()} was created with PORTRAIT_PARTITIONS={rec['partitions']} "
                f"(hash {rec.get('hash', HASH)}); this start asks for {partitions}. Re-partitioning is not supported: "
                f"start with PORTRAIT_PARTITIONS={rec['partitions']}, or replay the events into a new data dir "
                "(portrait replay)")
        return partitions
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"partitions": partitions, "hash": HASH, "workers": workers}).encode())
    return partitions
