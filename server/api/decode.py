"""Names what is wrong with request bytes that protobuf refuses to decode.

gRPC hands the servicer only decoded messages; when decoding fails, the interceptor
(``server.api.interceptors``) answers INVALID_ARGUMENT with the field this module finds by walking the
wire format: a string field whose bytes are not valid UTF-8, or else a malformed message.

>>> from server._gen.portrait.v1 import portrait_pb2 as pb
>>> good = pb.TrackBatchRequest(events=[pb.Event(user_id="a"), pb.Event(user_id="b", category="c")])
>>> bad = good.SerializeToString().replace(b"c", b"\\xff")
>>> decode_problem(pb.TrackBatchRequest.DESCRIPTOR, bad)
('events[1].category', 'events[1].category is not valid UTF-8')
>>> decode_problem(pb.TrackBatchRequest.DESCRIPTOR, b"\\x0a\\x05ab")
('', 'the request is not a valid portrait.v1.TrackBatchRequest message')
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_MAX_DEPTH = 32


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _bad_utf8(desc: Descriptor, data: bytes, prefix: str, depth: int) -> str | None:
    """The path of the first string field under ``desc`` that is not UTF-8 (None: none found).
    Raises ValueError where the bytes are not well-formed wire format."""
    if depth > _MAX_DEPTH:
        raise ValueError("too deep")
    seen: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
            continue
        if wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            continue
        if wire_type != 2:
            raise ValueError(f"wire type {wire_type}")
        size, pos = _varint(data, pos)
        if pos + size > len(data):
            raise ValueError("truncated field")
        chunk, pos = data[pos:pos + size], pos + size
        f = desc.fields_by_number.get(number)
        if f is None:
            continue
        name = prefix + f.name
        if f.is_repeated and not (f.message_type and f.message_type.GetOptions().map_entry):
            name += f"[{seen.get(number, 0)}]"
            seen[number] = seen.get(number, 0) + 1
        if f.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return name
        elif f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None:
            found = _bad_utf8(f.message_type, chunk, name + ".", depth + 1)
            if found is not None:
                return found
    return None


def decode_problem(desc: Descriptor, data: bytes) -> tuple[str, str]:
    """(field path or "", a sentence for the caller) for bytes that failed to decode as ``desc``."""
    try:
        field = _bad_utf8(desc, data, "", 0)
    except ValueError:
        field = None
    if field is not None:
        return field, f"{field} is not valid UTF-8"
    return "", f"the request is not a valid {desc.full_name} message"
