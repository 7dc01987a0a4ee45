"""The event log on Redis Streams (``server.log.streams``) against a real Redis, and a real 3-master Redis
Cluster started here (redis-server's cluster mode)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from server.domain.erasure import Erasures
from server.domain.partition import partition_of
from server.log.partitions import PartitionsChanged
from server.log.streams import LogOwnedElsewhere, StreamLog
from server.store.embedded_redis import EmbeddedRedis
from tests.integration.test_redis_cluster import Cluster, cluster  # noqa: F401 (the module fixture)

P = 8


def prefix() -> str:
    return f"test:log:{uuid.uuid4().hex[:10]}"


def records(n: int, users: int = 40) -> list[tuple[str, bytes]]:
    return [(f"user-{i % users}", f"record {i} of user-{i % users}".encode()) for i in range(n)]


async def fill(log: StreamLog, recs: list[tuple[str, bytes]], batch: int = 7) -> list[int]:
    offsets = []
    for i, (user, payload) in enumerate(recs):
        offsets.append(log.append(payload, partition_of(user, log.partitions)))
        if i % batch == batch - 1:
            await log.commit()
    await log.commit()
    return offsets


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone (AOF, appendfsync always, as the embedded one holding a log)."""
    r = EmbeddedRedis(tmp_path / "r", port=0, appendfsync="always")
    r.start()
    yield r
    r.stop()


async def test_records_go_to_their_partitions_stream_and_read_back_in_offset_order(redis_url: str) -> None:
    log = StreamLog(redis_url, P, prefix=prefix(), owner="a")
    assert log.open().next_offset == 0
    recs = records(300)
    offsets = await fill(log, recs)
    assert offsets == list(range(300)) and log.durable_offset == 300 and log.pending_bytes == 0
    assert [(o, p) for o, p in log.read_from(0)] == [(i, p) for i, (_, p) in enumerate(recs)]
    assert [o for o, _ in log.read_from(250)] == list(range(250, 300))
    r = redis.Redis.from_url(redis_url)
    per_partition = Counter(partition_of(u, P) for u, _ in recs)
    assert {p: r.xlen(log.key(p)) for p in range(P)} == {p: per_partition[p] for p in range(P)}
    for p in range(P):  # each stream holds exactly its users' records, in order
        got = [payload for _, payload in log.read_partition(p)]
        assert got == [payload for u, payload in recs if partition_of(u, P) == p]
    log.close()
    again = StreamLog(redis_url, P, prefix=log.prefix, owner="a")
    assert again.open().next_offset == 300
    assert again.append(b"next") == 300
    again.close()


async def test_a_reopened_log_never_hands_out_an_offset_twice_even_after_its_newest_entries_are_deleted(
        redis_url: str) -> None:
    log = StreamLog(redis_url, P, prefix=prefix())
    log.open()
    await fill(log, records(50))
    r = redis.Redis.from_url(redis_url)
    for p in range(P):  # delete every entry (what compaction and retention do to some)
        r.xtrim(log.key(p), minid="1000000")
    log.close()
    again = StreamLog(redis_url, P, prefix=log.prefix)
    assert again.open().next_offset == 50
    again.close()


async def test_a_start_with_other_partitions_or_another_data_dirs_log_is_refused(redis_url: str) -> None:
    log = StreamLog(redis_url, P, prefix=prefix(), owner="store-a")
    log.open()
    await fill(log, records(10))
    log.close()
    with pytest.raises(PartitionsChanged, match=f"PORTRAIT_PARTITIONS={P}; this start asks for 4"):
        StreamLog(redis_url, 4, prefix=log.prefix, owner="store-a").open()
    with pytest.raises(LogOwnedElsewhere, match="another data directory"):
        StreamLog(redis_url, P, prefix=log.prefix, owner="store-b").open()


async def test_retention_trims_what_a_checkpoint_covers_unless_kept(redis_url: str) -> None:
    log = StreamLog(redis_url, P, prefix=prefix())
    log.open()
    await fill(log, records(100))
    assert log.retain(60, -1) == 0 and log.first_offset() == 0  # keep all
    assert log.retain(60, 3600) == 0  # everything was appended within the hour
    assert [o for o, _ in log.read_from(0)][:1] == [0]
    assert log.retain(60, 0) == 60
    assert log.first_offset() == 60
    assert [o for o, _ in log.read_from(0)] == list(range(60, 100))
    log.close()


async def test_compaction_deletes_an_erased_users_records_from_the_streams_and_the_append_only_file(
        own_redis: EmbeddedRedis) -> None:
    redis.Redis.from_url(own_redis.url).config_set("rdbcompression", "no")  # payload bytes readable in the file
    log = StreamLog(own_redis.url, P, prefix=prefix())
    log.open()
    secret = "erased-user-7f3a"
    recs = records(200) + [(secret, f"{secret} bought sku-{i}".encode()) for i in range(20)] + records(30)
    await fill(log, recs)
    assert log.retain(210, 0) == 210  # half the user's records trimmed (XTRIM leaves their bytes behind)
    erasures = Erasures(b"salt")
    erasures.add(erasures.digest(secret), offset=log.next_offset)
    later = log.append(f"{secret} after the erasure".encode(), partition_of(secret, P))
    await log.commit()

    def user_of(payload: bytes) -> str:
        return payload.decode().split(" ")[0] if payload.startswith(secret.encode()) else \
            payload.decode().rsplit(" ", 1)[1]

    assert log.compact(erasures, user_of) == len({partition_of(u, P) for u, _ in recs})  # every stream rebuilt
    kept = [(o, p) for o, p in log.read_from(0)]
    assert not any(p.startswith(secret.encode()) and o != later for o, p in kept)
    assert (later, f"{secret} after the erasure".encode()) in kept  # after the erasure: not doomed
    assert len(kept) == 31  # 251 appended, 210 trimmed, 10 doomed
    aof = b"".join(p.read_bytes() for p in own_redis.dir.rglob("*.aof"))
    assert b"bought sku" not in aof and b"after the erasure" in aof  # XDEL alone leaves "bought sku" in it
    log.close()
    again = StreamLog(own_redis.url, P, prefix=log.prefix)  # the rebuilt stream keeps its last-generated ID
    assert again.open().next_offset == later + 1
    again.close()


async def test_an_acknowledged_record_survives_a_kill_9_of_redis(own_redis: EmbeddedRedis) -> None:
    log = StreamLog(own_redis.url, P, prefix=prefix())
    log.open()
    await fill(log, records(500), batch=50)
    log.close()
    pid = int((own_redis.dir / "redis.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # no shutdown: only what appendfsync always put on disk survives
    assert own_redis._proc is not None
    own_redis._proc.wait()
    own_redis.start()
    again = StreamLog(own_redis.url, P, prefix=log.prefix)
    assert again.open().next_offset == 500
    assert [p for _, p in again.read_from(0)] == [p for _, p in records(500)]
    again.close()


async def test_a_batch_waits_out_a_redis_restart_and_is_written_once(own_redis: EmbeddedRedis) -> None:
    log = StreamLog(own_redis.url, P, prefix=prefix())
    log.open()
    await fill(log, records(20))
    own_redis.stop()
    for u, p in records(30)[20:]:
        log.append(p, partition_of(u, P))
    commit = asyncio.create_task(log.commit())
    while log.retries == 0:  # the flush has met a refused connection
        await asyncio.sleep(0.01)
    assert not commit.done()
    await asyncio.to_thread(own_redis.start)
    await asyncio.wait_for(commit, 30)
    assert [p for _, p in log.read_from(0)] == [p for _, p in records(30)]
    log.close()


async def test_streams_spread_over_the_masters_of_a_redis_cluster_and_read_back_in_order(
        cluster: Cluster) -> None:  # noqa: F811
    log = StreamLog(cluster.seed_url, 16, prefix=prefix(), cluster=True, owner="c")
    log.open()
    recs = records(400, users=100)
    await fill(log, recs, batch=64)
    assert [p for _, p in log.read_from(0)] == [p for _, p in recs]
    masters = {cluster.owner(log.key(p).encode()) for p in range(16)}
    assert masters == set(cluster.ports)  # no hash tag: the streams are spread over every master
    assert log.retain(100, 0) == 100 and next(o for o, _ in log.read_from(0)) == 100
    log.close()
    again = StreamLog(cluster.seed_url, 16, prefix=log.prefix, cluster=True, owner="c")
    assert again.open().next_offset == 400
    again.close()


async def test_wait_replicas_acknowledges_once_a_replica_holds_the_batch_and_fails_short_of_it(
        own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """``PORTRAIT_LOG_WAIT_REPLICAS``: a real replica (redis-server --replicaof) of the log's Redis."""
    import subprocess

    from server.store.embedded_redis import _executable, _free_port, die_with_parent

    port = _free_port("127.0.0.1")
    (tmp_path / "replica").mkdir()
    proc = subprocess.Popen([_executable(), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp_path / "replica"), "--replicaof", "127.0.0.1", str(own_redis.port),
                             "--save", "", "--daemonize", "no"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent)
    replica = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(400):  # until the replica has synced (a condition, polled)
            try:
                if replica.info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replica did not sync")
        log = StreamLog(own_redis.url, P, prefix=prefix(), wait_replicas=1)
        log.open()
        await fill(log, records(100), batch=25)
        assert replica.xlen(log.key(partition_of("user-0", P))) > 0  # the replica holds them when acknowledged
        log.close()
        strict = StreamLog(own_redis.url, P, prefix=log.prefix, wait_replicas=2, wait_timeout_ms=200)
        strict.open()
        strict.append(b"one more", 0)
        with pytest.raises(RuntimeError, match="event log write failed: only 1 of 2 replicas"):
            await strict.commit()
        with pytest.raises(RuntimeError, match="refusing writes"):  # the failure sticks: the server exits 70
            strict.append(b"and another", 0)
        strict.close()
    finally:
        replica.close()
        proc.terminate()
        proc.wait(10)
