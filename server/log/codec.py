"""The event log's record codec: a domain ``Event`` <-> its protobuf form and bytes.

With ``server.api``, the only hand-written code that touches ``server/_gen``.

>>> from server.domain.events import Event, EventType
>>> e = Event("e1", "u1", EventType.VIEW, 1_700_000_000.5, item_id="sku-1", price=9.5)
>>> event_from_bytes(event_to_bytes(e)) == e
True
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from server._gen.portrait.v1 import portrait_pb2 as pb
from server.domain.events import Event


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


def event_to_bytes(e: Event) -> bytes:
    """A domain Event as compact bytes (the event log's record body)."""
    return bytes(event_to_proto(e).SerializeToString())


def event_from_bytes(b: bytes) -> Event:
    """Inverse of ``event_to_bytes``."""
    m = pb.Event()
    m.ParseFromString(b)
    return event_from_proto(m)
