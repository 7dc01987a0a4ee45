"""What each process of a deployment reports: its role, the partitions it owns, how far it has applied the
log, and the model versions it holds (``rpc Workers``, ``portrait workers``).

In one process (``PORTRAIT_WORKERS=1``, today's only runner) the same pid plays every role: the front end,
the worker that owns every partition, and the trainer. That worker applies each event before the event is
acknowledged, from the one log, so every partition's applied offset is the log's and nothing lags; it
scores with the trainer's live models, so its model versions are the trainer's.

>>> from server.models.trainer import Trainer, TrainerConfig
>>> procs = in_process(Trainer(TrainerConfig()), log_offset=42, partitions=4, pid=7, host="h")
>>> [(p.role, p.pid, len(p.partitions)) for p in procs]
[('frontend', 7, 0), ('worker', 7, 4), ('trainer', 7, 0)]
>>> procs[1].partitions[3], procs[2].model_versions["propensity"]
(PartitionStatus(partition=3, applied_offset=42, lag=0), 0)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

ROLES = ("frontend", "worker", "trainer")


@dataclass(frozen=True)
class PartitionStatus:
    """How far a partition's owner has applied the log: records below ``applied_offset``; ``lag`` records
    acknowledged and not applied yet."""

    partition: int
    applied_offset: int
    lag: int


@dataclass(frozen=True)
class ProcessStatus:
    """One process in one role (``ROLES``)."""

    role: str
    pid: int
    host: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    model_versions: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``portrait workers --json`` prints."""
        return {"role": self.role, "pid": self.pid, "host": self.host,
                "partitions": [vars(p) for p in self.partitions], "model_versions": dict(self.model_versions)}


def in_process(trainer: Any, log_offset: int, partitions: int, pid: int | None = None,
               host: str | None = None, trainer_pid: int | None = None) -> list[ProcessStatus]:
    """The one-process deployment: front end, the worker owning all ``partitions``, the trainer (``trainer``:
    anything with ``versions``, a dict model -> version; ``trainer_pid``: its child process with
    ``PORTRAIT_TRAINER=process``, else this process)."""
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname() if host is None else host
    versions = dict(trainer.versions)
    owned = [PartitionStatus(p, log_offset, 0) for p in range(partitions)]
    return [ProcessStatus("frontend", pid, host), ProcessStatus("worker", pid, host, owned, versions),
            ProcessStatus("trainer", pid if trainer_pid is None else trainer_pid, host, [], versions)]


def ray_processes(statuses: list[dict[str, Any]], trainer: dict[str, Any] | None, pid: int | None = None,
                  host: str | None = None) -> list[ProcessStatus]:
    """Several workers (``PORTRAIT_WORKERS>1``): this front end, every worker actor that answered
    (``WorkerActor.status``: the model versions it scores with) and the shared trainer actor, if it answered
    (the versions it has learnt). A worker applies before it acknowledges, so its partitions lag 0;
    ``applied_offset`` is its own log's.

    >>> st = {"pid": 11, "host": "h", "partitions": [0, 2], "applied_offset": 5, "model_versions": {"risk": 3}}
    >>> tr = {"pid": 12, "host": "h", "model_versions": {"risk": 4}}
    >>> [(p.role, p.pid, [q.partition for q in p.partitions]) for p in ray_processes([st], tr, pid=7, host="h")]
    [('frontend', 7, []), ('worker', 11, [0, 2]), ('trainer', 12, [])]
    """
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname() if host is None else host
    out = [ProcessStatus("frontend", pid, host)]
    for st in statuses:
        versions = dict(st["model_versions"])
        owned = [PartitionStatus(p, st["applied_offset"], 0) for p in st["partitions"]]
        out.append(ProcessStatus("worker", st["pid"], st["host"], owned, versions))
    if trainer is not None:
        out.append(ProcessStatus("trainer", trainer["pid"], trainer["host"], [], dict(trainer["model_versions"])))
    return out
