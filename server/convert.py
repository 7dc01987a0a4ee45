"""Proto <-> domain conversion, in one place (with servicer.py, the only hand-written users of ``_gen``)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from server._gen.portrait.v1 import portrait_pb2 as pb
from server.events import BatchResult, Event, FieldError
from server.features import FLOAT_COLUMNS


def event_from_proto(m: pb.Event) -> Event:
    """A domain Event; an unset ``event_time`` becomes None (rejected by validation)."""
    return Event(
        event_id=m.event_id,
        user_id=m.user_id,
        type=int(m.type),
        event_time=m.event_time.seconds + m.event_time.nanos / 1e9 if m.HasField("event_time") else None,
        item_id=m.item_id,
        category=m.category,
        price=m.price,
        quantity=m.quantity,
        session_id=m.session_id,
        query=m.query,
        context=dict(m.context),
    )


def event_to_proto(e: Event) -> pb.Event:
    """The proto form of a domain Event (used by the client and the CLI)."""
    m = pb.Event(event_id=e.event_id, user_id=e.user_id, type=int(e.type), item_id=e.item_id,  # type: ignore[arg-type]
                 category=e.category, price=e.price, quantity=e.quantity, session_id=e.session_id,
                 query=e.query, context=e.context)
    if e.event_time is not None:
        m.event_time.CopyFrom(timestamp(e.event_time))
    return m


def timestamp(t: float) -> Timestamp:
    """Unix seconds -> protobuf Timestamp."""
    seconds, nanos = divmod(round(t * 1e9), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


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


def batch_from_response(m: pb.TrackBatchResponse) -> BatchResult:
    """TrackBatchResponse -> BatchResult (client side)."""
    return BatchResult(m.accepted, m.duplicates,
                       [(x.index, x.event_id, FieldError(x.field, x.message)) for x in m.rejected], m.suppressed,
                       max(m.rejected_count, len(m.rejected)))


def profile_to_proto(row: dict[str, Any]) -> pb.Profile:
    """A feature row as read from the online store -> Profile."""
    features = {k: float(row[k]) for k in FLOAT_COLUMNS if row.get(k) is not None}
    features.pop("purchase_propensity", None)
    updated = row.get("updated_at_ts") or 0.0
    return pb.Profile(
        user_id=row["user_id"],
        version=int(row["profile_version"]),
        updated_at=timestamp(updated),
        features=features,
        top_categories=list(row.get("top_categories") or []),
        purchase_propensity=float(row.get("purchase_propensity") or 0.0),
        segment=int(row["segment"]) if row.get("segment") is not None else -1,
        tags=list(row.get("tags") or []),
        attributes=pb.UserAttributes(age=int(row.get("age") or 0), gender=row.get("gender") or "",
                                     region=row.get("region") or ""),
    )


def event_to_bytes(e: Event) -> bytes:
    """A domain Event as compact bytes (the event log's record body)."""
    return bytes(event_to_proto(e).SerializeToString())


def event_from_bytes(b: bytes) -> Event:
    """Inverse of ``event_to_bytes``."""
    m = pb.Event()
    m.ParseFromString(b)
    return event_from_proto(m)


def candidates_from_proto(m: pb.ScoreRequest) -> list[tuple[str, str, float]]:
    """ScoreRequest candidates -> (item_id, category, price) tuples."""
    return [(c.item_id, c.category, c.price) for c in m.candidates]


def score_response(ranked: list[tuple[str, float]]) -> pb.ScoreResponse:
    """(item_id, probability) pairs, best first -> ScoreResponse."""
    return pb.ScoreResponse(items=[pb.ScoredItem(item_id=i, probability=p) for i, p in ranked])
