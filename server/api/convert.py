"""Proto <-> domain conversion for the API (events themselves convert in ``server.log.codec``, shared with the
event log's records)."""

from __future__ import annotations

from typing import Any

from server._gen.portrait.v1 import portrait_pb2 as pb
from server.cluster.status import ProcessStatus
from server.domain.events import BatchResult
from server.log.codec import event_from_proto as event_from_proto
from server.log.codec import event_to_proto as event_to_proto
from server.log.codec import timestamp
from server.store.schema import FEATURES, FLOAT

_NUMBERS = tuple(c.name for c in FEATURES if c.kind is FLOAT and c.name != "purchase_propensity")
"""The float features a Profile carries in its ``features`` map (the propensity has its own field)."""


def batch_response(r: BatchResult) -> pb.TrackBatchResponse:
    """BatchResult -> TrackBatchResponse."""
    return pb.TrackBatchResponse(
        accepted=r.accepted,
        duplicates=r.duplicates,
        rejected=[pb.EventError(index=i, event_id=eid, field=err.field, message=err.message)
                  for i, eid, err in r.rejected],
        suppressed=r.suppressed,
        rejected_count=r.rejected_count,
    )


def profile_to_proto(row: dict[str, Any]) -> pb.Profile:
    """A feature row as read from the online store -> Profile."""
    features = {k: float(row[k]) for k in _NUMBERS if row.get(k) is not None}
    updated = row.get("updated_at_ts") or 0.0
    return pb.Profile(
        user_id=row["user_id"],
        version=int(row["profile_version"]),
        updated_at=timestamp(updated),
        as_of=timestamp(row.get("as_of_ts") or updated),
        features=features,
        top_categories=list(row.get("top_categories") or []),
        purchase_propensity=float(row.get("purchase_propensity") or 0.0),
        segment=int(row["segment"]) if row.get("segment") is not None else -1,
        tags=list(row.get("tags") or []),
        attributes=pb.UserAttributes(age=int(row.get("age") or 0), gender=row.get("gender") or "",
                                     region=row.get("region") or ""),
    )


def candidates_from_proto(m: pb.ScoreRequest) -> list[tuple[str, str, float]]:
    """ScoreRequest candidates -> (item_id, category, price) tuples."""
    return [(c.item_id, c.category, c.price) for c in m.candidates]


def score_response(ranked: list[tuple[str, float]]) -> pb.ScoreResponse:
    """(item_id, probability) pairs, best first -> ScoreResponse."""
    return pb.ScoreResponse(items=[pb.ScoredItem(item_id=i, probability=p) for i, p in ranked])


def workers_response(partitions: int, processes: list[ProcessStatus]) -> pb.WorkersResponse:
    """``rpc Workers``' answer from the runner's report."""
    return pb.WorkersResponse(partitions=partitions, processes=[
        pb.ProcessStatus(role=p.role, pid=p.pid, host=p.host, model_versions=p.model_versions,
                         partitions=[pb.PartitionStatus(partition=s.partition, applied_offset=s.applied_offset,
                                                        lag=s.lag) for s in p.partitions])
        for p in processes])
