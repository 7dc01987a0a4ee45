"""Reads what Feast wrote to Redis, without importing Feast (its import takes seconds).

Feast's Redis online store keeps one hash per entity, keyed by the serialized entity key
(``entity_key_serialization_version: 3``) followed by the project name; the hash holds
every feature of the row plus ``_ts:user_profile``, written in one HSET. So "the row of
user X is readable" is "the key of X exists" — the same row ``get_online_features`` reads
(``redis_key`` is checked against Feast's own function in the benchmark's first run).

``python -m bench.poller fresh --redis-url URL --prefix P --count N ...`` subscribes to Redis'
keyspace notifications of HSET and prints the wall-clock time the row of each of the users
``<P>n0 .. <P>n<N-1>`` (sent by the ``fresh`` client on a fixed schedule) was first written.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from typing import Any

PROJECT = "portrait"
_STRING = 2  # feast ValueType.STRING


def redis_key(user_id: str, join_key: str = "user_id", project: str = PROJECT) -> bytes:
    """Feast's Redis key of one user (``_redis_key`` with serialization version 3)."""
    k = join_key.encode()
    v = user_id.encode()
    return b"".join((struct.pack("<I", 1), struct.pack("<I", _STRING), struct.pack("<I", len(k)), k,
                     struct.pack("<I", _STRING), struct.pack("<I", len(v)), v, project.encode()))


def feast_redis_key(user_id: str) -> bytes:
    """The same key computed by Feast itself (for the consistency check; imports Feast)."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return bytes(_redis_key(PROJECT, EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)]),
                            entity_key_serialization_version=3))


def memory_per_user(redis_url: str, users: list[str]) -> dict[str, Any]:
    """MEMORY USAGE (bytes) of the Feast hashes of ``users`` (those that exist)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        with r.pipeline(transaction=False) as pipe:
            for u in users:
                pipe.memory_usage(redis_key(u), samples=0)
            sizes = [s for s in pipe.execute() if s]
    finally:
        r.close()
    return {"sampled": len(users), "found": len(sizes),
            "bytes_per_user": sum(sizes) / len(sizes) if sizes else float("nan")}


def delete_tagged(redis_url: str, tag: str) -> int:
    """Delete every Feast row whose user id contains ``tag`` (SCAN MATCH; ``tag`` has no glob characters)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    n = 0
    try:
        batch = []
        for key in r.scan_iter(match=f"*{tag}*".encode(), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n += int(r.delete(*batch))  # type: ignore[arg-type]
                batch = []
        if batch:
            n += int(r.delete(*batch))  # type: ignore[arg-type]
    finally:
        r.close()
    return n


def cmd_fresh(a: argparse.Namespace) -> dict[str, Any]:
    """Record when each expected user's row is written: Redis keyspace notifications of HSET (push, so the
    measurement takes almost no CPU from the server measured; polling hundreds of keys every few ms did)."""
    import redis

    r = redis.Redis.from_url(a.redis_url)
    db = int(r.connection_pool.connection_kwargs.get("db", 0))
    index = {redis_key(f"{a.prefix}n{i}"): i for i in range(a.count)}
    seen: list[float | None] = [None] * a.count
    before = str(dict(r.config_get("notify-keyspace-events")).get("notify-keyspace-events", ""))  # type: ignore[arg-type]
    r.config_set("notify-keyspace-events", "".join(sorted(set(before) | {"E", "h"})))
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(f"__keyevent@{db}__:hset")
    deadline = a.start_at + a.count / a.batch * a.interval + a.timeout
    messages = 0
    remaining = a.count
    print(json.dumps({"ready": True}), file=sys.stderr, flush=True)
    try:
        while remaining and time.time() < deadline:
            msg = ps.get_message(timeout=0.05)
            if msg is None:
                continue
            t = time.time()
            messages += 1
            i = index.get(msg["data"])
            if i is not None and seen[i] is None:
                seen[i] = t
                remaining -= 1
    finally:
        ps.close()
        r.config_set("notify-keyspace-events", before)
        r.close()
    return {"seen": seen, "notifications": messages, "missing": sum(1 for s in seen if s is None),
            "gave_up_at": time.time()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.poller")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fresh")
    f.add_argument("--redis-url", required=True)
    f.add_argument("--prefix", required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--batch", type=int, default=20)
    f.add_argument("--interval", type=float, default=0.01)
    f.add_argument("--start-at", type=float, required=True)
    f.add_argument("--timeout", type=float, default=30.0, help="give up this long after the last send")
    a = ap.parse_args(argv)
    print(json.dumps(cmd_fresh(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
