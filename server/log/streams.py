"""The event log on Redis Streams: one stream per partition, the source of truth for accepted changes.

``PORTRAIT_LOG=redis`` picks it instead of the segment files of ``server.log.eventlog``; it offers the same
interface (``open``, ``append``, ``commit``, ``read_from``, ``first_offset``, ``retain``, ``close``), so the
worker's durability, recovery and ``portrait replay-log`` do not know which one holds their records.

Layout (``prefix`` defaults to ``portrait:log``):

- ``<prefix>:<p>`` for partition ``p`` = ``partition_of(stored user id, P)``: a stream whose entries hold one
  record each (field ``r``). Record ``n`` of the log has the entry ID ``<n>-1``: offsets are global (the one
  writer allocates them), each partition's stream reads in order, and a merge by ID gives back the order the
  records were applied in, so a replay is exact. A stream's ``last-generated-id`` survives ``XDEL`` and
  ``XTRIM``, so an offset is never handed out twice.
- ``<prefix>:meta``: a hash with the number of partitions (a start with another refuses), the owner (the data
  directory's id: a Redis holding another store's log is refused, never replayed into this one) and
  ``trimmed`` (records below it were deleted by retention).

The streams carry no hash tag: no operation touches two of them, so on a Redis Cluster they spread over the
masters by key slot. Retention is ``XTRIM MINID`` after checkpoints; compaction of erased users rebuilds each
stream without their entries and then rewrites Redis' files (``BGREWRITEAOF``, ``BGSAVE``), so no file of Redis
still holds them (``XDEL`` alone would leave their bytes in the file: see ``StreamLog.compact``).

Durable means Redis replied to the pipeline that carried the records: with ``appendfsync always`` (the
embedded Redis runs so when it holds the log) Redis fsyncs its append-only file before it replies. With
``wait_replicas`` > 0, each batch also waits (``WAIT``) until that many replicas acknowledged it.

>>> log = StreamLog("redis://127.0.0.1:1/0", partitions=4)   # nothing is connected before open()
>>> log.key(3)
'portrait:log:3'
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from server.domain.erasure import Erasures
from server.log.eventlog import OpenInfo
from server.log.groupcommit import GroupCommit
from server.log.partitions import PartitionsChanged

log = logging.getLogger(__name__)

FIELD = b"r"
PAGE = 5000  # entries per XRANGE page while reading
RETRIES = 8  # attempts of one batch while Redis is unreachable (0.05 s doubling: ~12 s in all)
OWNER_FILE = "log-owner"

#: Rebuild the stream KEYS[1] without the entries whose IDs are ARGV, keeping every other entry's ID and the
#: stream's last-generated ID (so offsets are never handed out twice); returns how many entries went (-1: no
#: such stream). Atomic: no append lands in between.
REBUILD = """
redis.replicate_commands()
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return -1 end
local info = redis.call('XINFO', 'STREAM', key)
local last_id
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last_id = info[i + 1] end
end
local doomed = {}
for _, id in ipairs(ARGV) do doomed[id] = true end
local entries = redis.call('XRANGE', key, '-', '+')
redis.call('DEL', key)
local kept = 0
for _, e in ipairs(entries) do
  if not doomed[e[1]] then
    redis.call('XADD', key, e[1], unpack(e[2]))
    kept = kept + 1
  end
end
if kept == 0 then
  redis.call('XADD', key, last_id, 'r', '')
  redis.call('XDEL', key, last_id)
else
  redis.call('XSETID', key, last_id)
end
return #entries - kept
"""


class LogOwnedElsewhere(ValueError):
    """The Redis named for the log holds the log of another data directory."""


def owner_id(data_dir: Path) -> str:
    """The data directory's log owner id (``OWNER_FILE``), created on first use."""
    path = Path(data_dir) / OWNER_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        from server.log.atomic import write_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, uuid.uuid4().hex.encode())
        return path.read_text().strip()


def _offset(entry_id: bytes | str) -> int:
    return int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-", 1)[0])


class StreamLog:
    """The partitioned event log in Redis (or a Redis Cluster) at ``url``."""

    def __init__(self, url: str, partitions: int, prefix: str = "portrait:log", cluster: bool = False,
                 owner: str = "", wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.url = url
        self.partitions = partitions
        self.prefix = prefix
        self.cluster = cluster
        self.owner = owner
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._client: Any = None
        self._next = 0
        self._durable = 0
        self._buf: list[tuple[int, int, bytes]] = []
        self._pending = 0
        self._group = GroupCommit(self._flush_once, "streamlog-flush")
        self._marks: deque[tuple[float, int]] = deque(maxlen=10_000)  # (wall time, next offset then)
        self.retries = 0  # batches sent again because Redis was unreachable

    # -- names and connection ------------------------------------------------------------------
    def key(self, partition: int) -> str:
        """The stream of one partition."""
        return f"{self.prefix}:{partition}"

    @property
    def meta_key(self) -> str:
        return f"{self.prefix}:meta"

    def _redis(self) -> Any:
        if self._client is None:
            kw: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}
            self._client = (RedisCluster.from_url(self.url, **kw) if self.cluster
                            else redis.Redis.from_url(self.url, **kw))
        return self._client

    # -- opening -----------------------------------------------------------------------------
    def open(self) -> OpenInfo:
        """Check the partitions and owner recorded in Redis (recording them on first use) and find the next
        offset: one past the highest entry ID ever generated in any partition's stream."""
        r = self._redis()
        meta = {k.decode(): v.decode() for k, v in r.hgetall(self.meta_key).items()}
        if "partitions" in meta and int(meta["partitions"]) != self.partitions:
            raise PartitionsChanged(
                f"the event log in Redis ({self.prefix}) was created with PORTRAIT_PARTITIONS={meta['partitions']}; "
                f"this start asks for {self.partitions}. Re-partitioning is not supported: start with "
                f"PORTRAIT_PARTITIONS={meta['partitions']}, or replay the events into a new store")
        if self.owner and meta.get("owner", self.owner) != self.owner:
            raise LogOwnedElsewhere(
                f"the Redis at {redis_address(self.url)} holds the event log ({self.prefix}) of another data "
                f"directory (owner {meta['owner']}, this one is {self.owner}); refusing to mix them. Use another "
                "PORTRAIT_LOG_PREFIX (or database), or point PORTRAIT_DATA_DIR at that log's data directory")
        if "partitions" not in meta:
            r.hsetnx(self.meta_key, "partitions", self.partitions)
            if self.owner:
                r.hsetnx(self.meta_key, "owner", self.owner)
        pipe = r.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xinfo_stream(self.key(p))
        last, streams = -1, 0
        for info in pipe.execute(raise_on_error=False):
            if isinstance(info, Exception):  # no such key: the partition has no record yet
                continue
            streams += 1
            last = max(last, _offset(info["last-generated-id"]))
        self._next = self._durable = last + 1
        self._marks.append((time.time(), self._next))
        return OpenInfo(self._next, streams, 0)

    def skip_to(self, offset: int) -> None:
        """Hand out offsets from ``offset`` on (a checkpoint covers the log up to it, and the streams hold less:
        new records must not take offsets the checkpoint counts as applied)."""
        self._next = self._durable = max(self._next, offset)

    # -- writing (event loop) ----------------------------------------------------------------
    @property
    def next_offset(self) -> int:
        """Offset the next appended record will get."""
        return self._next

    @property
    def durable_offset(self) -> int:
        """Records below this offset are in Redis (and, per its configuration, on its disk)."""
        return self._durable

    @property
    def pending_bytes(self) -> int:
        """Appended bytes not yet acknowledged by Redis."""
        return self._pending

    def append(self, payload: bytes, partition: int = 0) -> int:
        """Append one record of ``partition`` (in memory); returns its offset. Durable after ``commit``."""
        if self._group.failed:
            raise RuntimeError("event log failed earlier; refusing writes") from self._group.failed
        offset = self._next
        self._next += 1
        self._buf.append((offset, partition, payload))
        self._pending += len(payload)
        return offset

    async def commit(self) -> None:
        """Return once every record appended so far is in Redis (one pipeline per batch of concurrent
        callers: group commit)."""
        await self._group.until(self._next, self._durable)

    async def _flush_once(self) -> int | None:
        """Send everything appended in one pipeline; the offset durable now (None: nothing was appended)."""
        if not self._buf:
            return None
        batch, upto = self._buf, self._next
        self._buf = []
        try:
            await asyncio.to_thread(self._write, batch)
        except BaseException as exc:  # Redis gone for good: every waiter fails, further writes are refused
            log.critical("event log write to Redis failed: %s", exc)
            raise
        self._pending -= sum(len(p) for _, _, p in batch)
        self._durable = upto
        return upto

    def _write(self, batch: list[tuple[int, int, bytes]]) -> None:  # worker thread
        """XADD every record with its offset as ID. Retried while Redis is unreachable: an entry a lost reply
        had already added is refused as "equal or smaller" on the retry, which is fine (it is there)."""
        r = self._redis()
        delay = 0.05
        for attempt in range(RETRIES):
            try:
                pipe = r.pipeline(transaction=False)
                for offset, partition, payload in batch:
                    pipe.xadd(self.key(partition), {FIELD: payload}, id=f"{offset}-1")
                for res in pipe.execute(raise_on_error=False):
                    if isinstance(res, redis.ResponseError) and "equal or smaller" not in str(res):
                        raise res
                    if isinstance(res, Exception) and not isinstance(res, redis.ResponseError):
                        raise res
                if self.wait_replicas:
                    acked = self._wait(r)
                    if acked < self.wait_replicas:
                        raise RuntimeError(f"only {acked} of {self.wait_replicas} replicas acknowledged the log "
                                           f"within {self.wait_timeout_ms} ms")
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt == RETRIES - 1:
                    raise
                self.retries += 1
                log.warning("event log: Redis unreachable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay *= 2

    def _wait(self, r: Any) -> int:
        if self.cluster:  # every master that took a record of this batch: the smallest count decides
            counts = r.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms,
                                       target_nodes=RedisCluster.PRIMARIES)
            return min(counts.values()) if isinstance(counts, dict) else int(counts)
        return int(r.wait(self.wait_replicas, self.wait_timeout_ms))

    async def roll(self, filler: bytes) -> int:
        """Nothing to roll (compaction deletes entries one by one); the next offset."""
        return self._next

    def close(self) -> None:
        """Drop the connection (call after a final ``commit``)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- reading, retention, compaction (blocking: threads) -----------------------------------------
    def _partition(self, partition: int, offset: int) -> Iterator[tuple[int, bytes]]:
        r, start = self._redis(), f"{offset}-0"
        while True:
            page = r.xrange(self.key(partition), min=start, max="+", count=PAGE)
            for entry_id, fields in page:
                yield _offset(entry_id), fields[FIELD]
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0].decode()

    def read_from(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, payload)`` of every record at or after ``offset``, in offset order (a merge of the
        partitions' streams)."""
        parts = [self._partition(p, offset) for p in range(self.partitions)]
        yield from heapq.merge(*parts, key=lambda rec: rec[0])

    def read_partition(self, partition: int, offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, payload)`` of one partition's records at or after ``offset``."""
        return self._partition(partition, offset)

    def first_offset(self) -> int:
        """Records below this offset were deleted by retention."""
        got = self._redis().hget(self.meta_key, "trimmed")
        return int(got) if got is not None else 0

    def retain(self, offset: int, retention_s: float) -> int:
        """Delete the records below ``offset`` (the oldest kept checkpoint) except those appended within
        ``retention_s`` (kept for ``portrait replay-log``; negative: keep all); returns how many went. Records
        appended after a moment are known from the next offsets this process noted at its start and at each
        call (so after a restart, older records count as appended at the restart)."""
        now = time.time()
        self._marks.append((now, self._next))
        if retention_s < 0:
            return 0
        keep_from = offset
        if retention_s > 0:
            cutoff = now - retention_s
            before = [o for t, o in self._marks if t < cutoff]
            keep_from = min(offset, before[-1] if before else self.first_offset())
        if keep_from <= self.first_offset():
            return 0
        r = self._redis()
        pipe = r.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xtrim(self.key(p), minid=str(keep_from), approximate=False)
        gone = sum(int(n) for n in pipe.execute())
        r.hset(self.meta_key, "trimmed", keep_from)
        return gone

    def compact(self, erasures: Erasures, user_of: Callable[[bytes], str | None]) -> int:
        """Remove every doomed record (``Erasures.doomed_record``) and every trace of it, then rewrite Redis'
        files; returns how many streams were rebuilt.

        ``XDEL`` and ``XTRIM`` are not enough: they only flag entries as deleted inside a stream's listpack node,
        whose bytes stay in memory, in ``DUMP`` and in the RDB preamble of a rewritten AOF until every entry of
        the node is gone (seen with redis-server 6.2: a deleted payload still in the rewritten file). So every
        stream is rebuilt atomically by a script (``REBUILD``) from its live entries minus the doomed ones, with
        the same IDs and the same last-generated ID — entries retention trimmed earlier may have been an erased
        user's too. Appends go on before and after each rebuild."""
        r = self._redis()
        rebuild = r.register_script(REBUILD)
        rebuilt = 0
        for p in range(self.partitions):
            doomed = []
            for offset, payload in self._partition(p, 0):
                user = user_of(payload)
                if user is not None and erasures.doomed_record(user, offset):
                    doomed.append(f"{offset}-1")
            rebuilt += int(rebuild(keys=[self.key(p)], args=doomed)) >= 0
        if rebuilt:
            self.rewrite_files()
        return rebuilt

    def rewrite_files(self, timeout_s: float = 120.0) -> None:
        """On every master: ``BGREWRITEAOF`` after one already running has finished (a rewrite forked before the
        rebuild copies the old entries into its new file), then ``BGSAVE`` if it keeps RDB snapshots; returns
        once both have finished."""
        r = self._redis()
        servers = [r.get_redis_connection(n) for n in r.get_primaries()] if self.cluster else [r]
        for server in servers:
            persistence = server.info("persistence")
            if int(persistence.get("aof_enabled", 0)):
                _wait_rewrite(server, timeout_s)
                server.bgrewriteaof()
                _wait_rewrite(server, timeout_s)
            try:
                snapshots = bool(server.config_get("save").get("save"))
            except redis.ResponseError:  # CONFIG refused (a managed Redis): its snapshots are its operator's
                snapshots = False
            if snapshots:
                _wait_until(server, "rdb_bgsave_in_progress", timeout_s)
                server.bgsave()
                _wait_until(server, "rdb_bgsave_in_progress", timeout_s)


def _wait_rewrite(server: Any, timeout_s: float) -> None:
    _wait_until(server, "aof_rewrite_in_progress", timeout_s)
    _wait_until(server, "aof_rewrite_scheduled", timeout_s)


def _wait_until(server: Any, flag: str, timeout_s: float) -> None:
    """Until the ``INFO persistence`` field ``flag`` is 0."""
    deadline = time.monotonic() + timeout_s
    while int(server.info("persistence").get(flag, 0)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis' {flag} did not end within {timeout_s} s")
        time.sleep(0.05)


def redis_address(url: str) -> str:
    """``host:port`` of a Redis URL, without credentials (for messages).

    >>> redis_address("redis://:secret@cache:6380/2")
    'cache:6380'
    """
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return f"{u.hostname}:{u.port or 6379}"
