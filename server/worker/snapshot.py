"""Checkpoint bodies: the partition worker's and the trainer's state apart, each with the log offset it
covers, in a versioned layout (``FORMAT``).

A body (pickled by ``dumps``; ``server.log.checkpoint`` frames it with a checksum) is::

    {"format": 1, "offset": N,
     "worker":  {"offset": N, "partitions": "all", "state": PartitionWorker.state()},
     "trainer": {"offset": N, "version": V, "state": Trainer.state()},
     "materializer": {"dirty": [...], "offline_rows": [...], "deletes": [...]}}

Each state is a dict of named parts (profiles, dedupe ids with their users, pending decisions, ... /
models, statistics, quality), never a pickle of a class's private attributes: a part whose layout
changes bumps its format and gets a converter here. Format 0 — the single pipeline's attributes under
``"pipeline"``, written before the worker/trainer split — is converted on load (``loads``), so an
existing data dir starts as it is; the next checkpoint is written in format 1.

>>> from prometheus_client import CollectorRegistry
>>> from server.domain.events import Event, EventType
>>> from server.metrics import Metrics
>>> from server.worker.partition import PartitionWorker, WorkerConfig
>>> w = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
>>> _ = w.apply(Event("e1", "u1", EventType.VIEW, 1e9, item_id="i1"))
>>> s = loads(dumps(take(w, offset=1)))
>>> fresh = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
>>> restore(fresh, s)
>>> s.offset, fresh.row("u1")["views_1h"], "e1" in fresh.dedupe, fresh.trainer.version == w.trainer.version
(1, 1.0, True, True)
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.log import checkpoint
from server.models.risk import RiskDetector, UserRisk

if TYPE_CHECKING:
    from server.worker.partition import PartitionWorker

FORMAT = 1


@dataclass
class Snapshot:
    """One checkpoint's content."""

    offset: int
    worker: dict[str, Any]
    trainer: dict[str, Any]
    dirty: list[str] = field(default_factory=list)
    offline_rows: list[Any] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    converted_from: int | None = None
    """The format it was read in, when that was an older one."""


def take(worker: PartitionWorker, offset: int, dirty: list[str] | None = None,
         offline_rows: list[Any] | None = None, deletes: list[str] | None = None) -> Snapshot:
    """The worker's and its trainer's state at log ``offset`` (references: dump it before anything changes)."""
    return Snapshot(offset, worker.state(), worker.trainer.state(), dirty or [], offline_rows or [], deletes or [])


def restore(worker: PartitionWorker, snapshot: Snapshot) -> None:
    """Load a snapshot into a worker and its trainer."""
    worker.load_state(snapshot.worker)
    worker.trainer.load_state(snapshot.trainer)


def to_dict(s: Snapshot) -> dict[str, Any]:
    """The body's layout (see the module docstring)."""
    return {
        "format": FORMAT, "offset": s.offset,
        "worker": {"offset": s.offset, "partitions": "all", "state": s.worker},
        "trainer": {"offset": s.offset, "version": s.trainer["version"], "state": s.trainer},
        "materializer": {"dirty": s.dirty, "offline_rows": s.offline_rows, "deletes": s.deletes},
    }


def from_dict(d: dict[str, Any], offset: int | None = None) -> Snapshot:
    """A body's dict in any known format as a ``Snapshot`` (format 0 needs the file's ``offset``)."""
    fmt = d.get("format", 0)
    if fmt == FORMAT:
        m = d["materializer"]
        return Snapshot(d["offset"] if offset is None else offset, d["worker"]["state"], d["trainer"]["state"],
                        m["dirty"], m["offline_rows"], m["deletes"])
    if fmt == 0 and "pipeline" in d:
        worker, trainer = _from_format_0(d["pipeline"])
        return Snapshot(-1 if offset is None else offset, worker, trainer, d.get("dirty", []),
                        d.get("offline_rows", []), d.get("deletes", []), converted_from=0)
    raise ValueError(f"unknown checkpoint format {fmt!r} (this version reads 0 and {FORMAT})")


def dumps(s: Snapshot) -> bytes:
    """A checkpoint body."""
    return pickle.dumps(to_dict(s), protocol=pickle.HIGHEST_PROTOCOL)


def loads(body: bytes, offset: int | None = None) -> Snapshot:
    """A checkpoint body's snapshot (older formats converted)."""
    return from_dict(checkpoint.loads(body), offset)


def _from_format_0(p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the single pipeline's attributes (format 0) into worker and trainer state."""
    from server.worker.partition import STATE_FORMAT

    ranker, risk = vars(p["ranker"]), vars(p["risk"])  # classes gone since: read as plain attributes
    users = UserRisk(risk["threshold"], risk["half_life_s"])
    users._users = risk["_users"]
    detector = RiskDetector(risk["n_trees"], risk["height"], risk["window_size"], risk["seed"])
    detector._model = risk["_model"]
    owner = {id(profile): user for user, profile in p["profiles"].items()}
    worker = {
        "format": STATE_FORMAT, "profiles": p["profiles"],
        "dedupe": [(k, owner.get(id(v))) for k, v in p["dedupe"].owners()],
        "labels": p["labels"], "item_history": ranker["history"], "item_labels": ranker["labels"],
        "risk": users, "segment_sizes": p["segment_sizes"], "row_ts": p["_row_ts"], "erasures": p["erasures"],
        "watermark": (-math.inf, -math.inf),  # none kept: the next event sets it (the wall clock, when idle)
    }
    trainer = {
        "propensity": p["propensity"], "propensity_quality": p["quality"], "item_model": ranker["model"],
        "item_quality": ranker["quality"], "segmenter": p["segmenter"], "risk": detector,
        "items": ranker["items"], "categories": ranker["categories"], "version": 0,
    }
    return worker, trainer
