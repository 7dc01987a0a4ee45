"""Settings: one pydantic-settings class, read from ``PORTRAIT_*`` environment variables.

Built once at start (``Settings()``) and passed down; nothing reads the
environment at import time.

>>> Settings(redis_url="redis://cache:6380/2", feast_redis=None).feast_redis_connection()
'cache:6380,db=2'
>>> s = Settings(redis_url="redis://node-a:7000", redis_cluster=True, feast_redis=None)
>>> s.feast_redis_connection(), s.feast_redis_type()
('node-a:7000', 'redis_cluster')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlparse

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the Portrait server (env var = ``PORTRAIT_`` + upper-case name)."""

    model_config = SettingsConfigDict(env_prefix="PORTRAIT_", use_attribute_docstrings=True, extra="ignore")

    grpc_port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port (ProfileService, health, reflection). 0 picks a free port."""
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Prometheus /metrics HTTP port. 0 picks a free port."""
    ui_port: int = Field(default=8080, ge=0, le=65535)
    """The explorer's web pages (profiles, segments, models). 0 = off. Same bind as gRPC; on a non-loopback
    bind it needs API keys (the read role's key) or client certificates, never an open page."""
    health_port: int = Field(default=0, ge=0, le=65535)
    """A plaintext port serving only ``grpc.health.v1`` (the same statuses as the gRPC port), for probes that
    cannot speak TLS — Kubernetes' native gRPC probes. 0 = off. Nothing else is served on it."""
    ui_history_interval_s: float = Field(default=60.0, gt=0)
    """The explorer samples events/s and model quality this often for its charts (the last 1440 samples)."""
    bind: str = "127.0.0.1"
    """Address the gRPC, metrics and explorer servers listen on (0.0.0.0 in containers)."""
    redis_url: str | None = None
    """Redis for the online store, ``redis[s]://[user:pass@]host:port/db[?ssl_ca_certs=PEM]``. Unset: embedded."""
    redis_cluster: bool = False
    """redis_url names one node of a Redis Cluster (any master or replica; the others and the slots are
    discovered from it). Online rows are spread over the masters by key slot (Feast ``redis_type:
    redis_cluster``); reads, writes and erasure deletes follow the slots. Needs redis_url (the embedded Redis
    is one server), database 0 only (a cluster has no other). Each node must be reachable at the address it
    announces (``cluster-announce-ip`` behind NAT or in containers)."""
    feast_redis: str | None = None
    """Feast's own ``host:port,db=N`` form of the Redis connection (cluster: ``host:port[,host:port...]``, no
    db); derived from redis_url when unset."""
    embedded_redis_port: int = Field(default=6390, ge=0, le=65535)
    """Port of the embedded redis-server (only when redis_url is unset). 0 picks a free port."""
    data_dir: Path = Path("var")
    """Data directory: offline parquet files, the Feast registry, the embedded Redis' files."""
    partitions: int = Field(default=64, ge=1, le=16_384)
    """Partitions users are split into (a stable CRC-32 of the stored user id, modulo this): the unit of
    ownership when workers scale out. Fixed when a data dir is first used and recorded in it
    (``partitions.json``); a later start with another number refuses to start. Re-partitioning is not
    supported: replay the events into a new data dir."""
    workers: int = Field(default=1, ge=1, le=1024)
    """Partition workers. 1: one worker inside the server process (no Ray). N > 1: N Ray actors, worker i owning
    the partitions p with p % N == i, each with its own log and checkpoints under ``<data_dir>/workers/<i>/``,
    and one trainer actor learning the shared models from all of them (README "Scaling out"), on a local Ray the
    server starts and stops, or on the cluster at ray_address. Fixed when a data dir is first used (recorded
    beside the partitions)."""
    ray_address: str | None = None
    """A running Ray cluster to place the workers on (``ray://host:10001`` or ``host:6379``); unset: a local Ray
    (usage stats off, no dashboard), started and stopped by the server. Only with workers > 1."""
    worker_cpus: float = Field(default=0.0, ge=0)
    """CPUs each worker actor asks Ray for. 0: any node may host it, the front end's too (a local Ray: the
    workers share this machine's cores). On a cluster, 1 with the front end's node started with
    ``--num-cpus=0`` places every worker on a worker node (deploy/compose.ray.yaml, deploy/k8s-ray/)."""
    worker_call_timeout_s: float = Field(default=30.0, gt=0)
    """A call to a worker actor not answered in this long fails with UNAVAILABLE (the worker is restarting or
    stuck; the client retries; acknowledged events are in the worker's log)."""
    feature_repo: Path = Path("feature_repo")
    """The Feast feature repository (feature_store.yaml + definitions); applied at start."""
    flush_interval_s: float = Field(default=0.02, gt=0)
    """Online writes start this often (seconds); a write that takes longer is followed at once by the next."""
    flush_max_rows: int = Field(default=2000, ge=1)
    """Flush early when this many users have pending rows."""
    timer_rows_per_flush: int = Field(default=16, ge=1)
    """Rows that time alone changed (timers) written per flush beside the event-driven ones (all of a flush when
    no event waits): a burst of expiries never delays an event's row; `portrait_queue_depth{queue="timers"}`."""
    offline_roll_s: float = Field(default=10.0, gt=0)
    """A new offline parquet file is started at least this often (seconds) while rows arrive."""
    offline_roll_rows: int = Field(default=50_000, ge=1)
    """... or when this many rows are buffered for the offline store."""
    online_writer: Literal["process", "thread"] = "process"
    """Where online rows are written: ``process`` = a child process (Feast's conversion and the Redis
    round trips run on another core, not under the server's GIL); ``thread`` = a thread of the server."""
    trainer: Literal["inprocess", "process"] = "inprocess"
    """Where the shared models learn: ``inprocess`` = in the server's event loop, after every message (scores
    use the newest model; replays and ``portrait evaluate`` are exact); ``process`` = a child process of its
    own (``server.models.remote``): the loop keeps scoring and item statistics, the child learns and
    publishes its models every ``model_publish_s`` (scores use a model up to that old:
    ``portrait_model_staleness_seconds``)."""
    model_publish_s: float = Field(default=0.5, gt=0)
    """With ``trainer=process``: the trainer process publishes its models at least this often (seconds) while
    it learns."""
    online_write_timeout_s: float = Field(default=60.0, gt=0)
    """A write the child process has not finished by then is abandoned: the child is killed and
    restarted, and the rows are retried."""
    retry_max_backoff_s: float = Field(default=5.0, gt=0)
    """Longest pause between retries of a failed store write (backoff doubles from 50 ms)."""
    propensity_horizon_s: float = Field(default=3600.0, gt=0)
    """Purchase-propensity horizon H: 'will the user purchase within H after this event?'."""
    decision_interval_s: float = Field(default=300.0, ge=0)
    """At most one labelled propensity decision per user per this many seconds (bounds pending labels)."""
    allowed_lateness_s: float = Field(default=60.0, ge=0)
    """Watermark = max event time seen - this; a decision turns negative when the watermark passes t + H."""
    labels_per_event: int = Field(default=16, ge=1)
    """Overdue decisions resolved and learnt per event and model, at most (a jump of event time is spread
    over the next events instead of stalling one)."""
    timers_per_event: int = Field(default=16, ge=1)
    """Profiles recomputed per event, at most, because time alone changed them (a window tile left, a tag
    started or stopped holding): a burst of expiries is spread over the next events and idle ticks."""
    watermark_idle_s: float = Field(default=5.0, gt=0)
    """With no event for this long, the wall clock moves the watermark (now minus the allowed lateness), so
    that windows and tags stay true on an idle stream; while events arrive only event time moves it."""
    max_pending_labels: int = Field(default=1_000_000, ge=1)
    """Hard cap on pending decisions in memory; beyond it new decisions are not recorded."""
    item_horizon_s: float = Field(default=86_400.0, gt=0)
    """Item model horizon H_item: 'will the user buy this item within H_item after touching it?'."""
    item_decision_interval_s: float = Field(default=3600.0, ge=0)
    """At most one item decision per (user, item, action class) per this many seconds."""
    max_pending_item_labels: int = Field(default=500_000, ge=1)
    """Hard cap on pending item decisions (~650 bytes each); beyond it new ones are not recorded."""
    item_decision_sample: float = Field(default=1.0, gt=0, le=1)
    """Share of (user, item) pairs whose decisions are recorded (deterministic); lower it at high traffic."""
    item_history: int = Field(default=20, ge=1)
    """Recently touched items remembered per user (history features of the item model)."""
    item_counts: int = Field(default=128, ge=1)
    """Distinct items per user whose touch counts the item model reads (the most recently touched; 36 bytes
    each: <= 4.7 KB per user at 128, 2.4 KB mean on taobao-dev)."""
    max_items: int = Field(default=200_000, ge=1)
    """Items with popularity/conversion statistics in memory (least recently seen dropped first)."""
    risk_threshold: float = Field(default=0.94, ge=0, le=1)
    """A user whose decayed risk score is at least this gets the `suspicious` tag."""
    segments: int = Field(default=8, ge=2, le=64)
    """Number of KMeans user segments (ids 0..k-1)."""
    dedupe_capacity: int = Field(default=1_000_000, ge=1)
    """Remember this many most recent event_ids for duplicate detection."""
    quality_window: int = Field(default=10_000, ge=10)
    """Resolved labels per model in the rolling AUC / log-loss gauges."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest gRPC message accepted; larger ones get RESOURCE_EXHAUSTED."""
    fsync: Literal["always", "interval"] = "always"
    """Event-log durability: ``always`` fsyncs before every acknowledgement (group commit: one fsync per
    batch of concurrent writes); ``interval`` acknowledges once written to the OS and fsyncs within
    fsync_interval_s (survives a process crash, may lose that interval on a power loss)."""
    fsync_interval_s: float = Field(default=0.05, gt=0)
    """With fsync=interval: longest time between a write and its fsync."""
    log_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Event-log segment size; a new segment file starts beyond it."""
    gc_freeze_interval_s: float = Field(default=10.0, ge=0)
    """Every this many seconds, move the objects alive then out of the cyclic garbage collector's reach
    (``gc.freeze``): its full collections walk every object, 150 ms at 42k users and growing with them.
    Objects freed later are still freed (reference counting); only garbage *cycles* among them stay. 0 = only
    once, after start-up."""
    checkpoint_fork: bool = True
    """Write periodic checkpoints from a forked child (a copy-on-write snapshot; the server keeps serving
    while it is pickled, at the cost of pages copied meanwhile). False: pickle in the event loop, which
    then pauses (1.6 s for 58 MB of state)."""
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    """Seconds between checkpoints of the in-memory state (while events arrive); also taken at shutdown."""
    log_store: Literal["file", "redis"] = "file"
    """Where the event log (the source of truth for accepted events and erasures) lives: ``file``, checksummed
    segment files under ``<data_dir>/log``; ``redis``, one Redis Stream per partition in the Redis of
    redis_url (``<log_prefix>:<partition>``; on a Redis Cluster the streams spread over the masters), or in the
    embedded Redis, which then runs with ``appendfsync always``. An external Redis must run with
    ``appendonly yes`` and ``appendfsync always`` for an acknowledgement to survive its crash
    (``log_wait_replicas`` for a replica's copy). Switching an existing store from one to the other is not
    supported (replay the events into a new data dir)."""
    log_prefix: str = Field(default="portrait:log", min_length=1, max_length=100)
    """Key prefix of the event-log streams (``log_store=redis``): one Redis can hold the logs of several
    stores under different prefixes; a log of another data dir under this prefix is refused at start."""
    log_wait_replicas: int = Field(default=0, ge=0)
    """``log_store=redis``: acknowledge a batch only once this many replicas hold it (Redis ``WAIT``; on a
    cluster, the replicas of every master); a batch not acknowledged within a second fails the write."""
    log_retention_s: float = 0.0
    """Keep log segments this long after a checkpoint covers them (for `portrait replay-log`); -1 keeps all."""
    max_log_backlog_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Backpressure: writes get RESOURCE_EXHAUSTED while more than this is appended but not yet on disk."""
    max_trainer_backlog: int = Field(default=1_000_000, ge=1)
    """Backpressure with ``trainer=process``: writes get RESOURCE_EXHAUSTED while more than this many messages
    wait for the trainer process (kept in memory until its models cover them; ~0.5 KB each)."""
    max_inflight_rpcs: int = Field(default=256, ge=1)
    """Backpressure: unary RPCs beyond this many in flight get RESOURCE_EXHAUSTED (health checks excepted)."""
    max_inflight_streams: int = Field(default=64, ge=1)
    """A separate budget for client streams (TrackStream): more open at once get RESOURCE_EXHAUSTED, so
    streams never take the place of unary calls."""
    stream_idle_s: float = Field(default=30.0, ge=0)
    """A client stream that sends no message for this long is ended (DEADLINE_EXCEEDED; what it sent before is
    kept). 0 = never."""
    max_connections: int = Field(default=0, ge=0)
    """Cap on concurrent client connections of the gRPC port; beyond it new connections are closed at once.
    0 = the open-file limit minus reserved_fds. A larger value is lowered to that."""
    reserved_fds: int = Field(default=1024, ge=64)
    """File descriptors kept for the server's own files (log, checkpoints, parquet, Redis, writer, metrics)
    out of the open-file limit, which is raised to its hard maximum at start."""
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    """A connection that has not completed its TLS handshake and HTTP/2 preface after this long is closed."""
    connection_idle_s: float = Field(default=300.0, ge=0)
    """A connection without any RPC for this long is closed (GOAWAY; gRPC clients reconnect when needed).
    0 = never."""
    rpc_timeout_s: float = Field(default=30.0, gt=0)
    """Server-side time limit of a unary RPC, whatever deadline the client sets; beyond it DEADLINE_EXCEEDED."""
    stream_timeout_s: float = Field(default=600.0, ge=0)
    """Server-side time limit of a client-streaming RPC (TrackStream); 0 = none."""
    keepalive_time_s: float = Field(default=60.0, gt=0)
    """The server pings a connection idle this long; unanswered within keepalive_timeout_s, it is dropped."""
    keepalive_timeout_s: float = Field(default=20.0, gt=0)
    """How long the server waits for the answer to its keepalive ping."""
    min_ping_interval_s: float = Field(default=10.0, ge=0)
    """Clients may ping at most this often while no data flows; each faster ping is a strike."""
    max_ping_strikes: int = Field(default=2, ge=0)
    """Strikes tolerated before the connection is closed (GOAWAY too_many_pings); 0 = unlimited."""
    permit_idle_pings: bool = True
    """Accept client keepalive pings on connections without an RPC (at the min_ping_interval_s rate)."""
    max_connection_age_s: float = Field(default=3600.0, ge=0)
    """Connections are closed (GOAWAY) after this long: clients rebalance, see renewed certificates. 0 = never."""
    max_connection_age_grace_s: float = Field(default=600.0, ge=0)
    """After max_connection_age_s, in-flight RPCs get this long to finish before the connection is cut."""
    tls_cert: Path | None = None
    """PEM certificate chain of the gRPC port (with tls_key): TLS on. Re-read when the file changes."""
    tls_key: Path | None = None
    """PEM private key (unencrypted) of tls_cert. Re-read when the file changes."""
    tls_client_ca: Path | None = None
    """PEM CA certificate(s): clients must present a certificate issued by them (mutual TLS)."""
    allow_insecure: bool = False
    """Allow a non-loopback bind without TLS or without authentication (e.g. behind a mesh doing mTLS)."""
    pseudonym_key_file: Path | None = None
    """File of `VERSION:HEX_SECRET` lines (last = active): user ids are stored as keyed HMAC pseudonyms."""
    compact_interval_s: float = Field(default=86_400.0, gt=0)
    """Compaction (stored files rewritten without erased users) runs this often while erasures wait."""
    erase_timeout_s: float = Field(default=10.0, gt=0)
    """DeleteUser waits this long for the online row's deletion (then UNAVAILABLE; the erasure still completes)."""
    api_keys: Path | None = None
    """File of `ROLE:SHA256_HEX` lines (ingest, read, admin); RPCs but health need `authorization: Bearer KEY`."""
    reflection: bool | None = None
    """gRPC server reflection. Unset: on without API keys, off with them (then it needs a valid key)."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On SIGTERM: time to finish in-flight RPCs and flush pending rows before exiting."""
    log_level: str = "INFO"
    """Python logging level."""
    log_json: bool = False
    """Log one JSON object per line (ts, level, logger, message, exc_info, extra fields) instead of plain text."""

    @model_validator(mode="after")
    def _cluster_needs_a_url(self) -> Settings:
        """A cluster is never embedded, and has database 0 only: refuse at start, not at the first write."""
        if self.redis_cluster:
            if not self.redis_url:
                raise ValueError("PORTRAIT_REDIS_CLUSTER=true needs PORTRAIT_REDIS_URL naming one node of the Redis "
                                 "Cluster, e.g. redis://10.0.0.5:7000/0 (the embedded Redis is a single server, "
                                 "not a cluster)")
            if self.feast_redis:
                if any(p.strip().startswith("db=") for p in self.feast_redis.split(",")):
                    raise ValueError("PORTRAIT_REDIS_CLUSTER=true: PORTRAIT_FEAST_REDIS must not carry db=... "
                                     "(a Redis Cluster has database 0 only; Feast's cluster client refuses db)")
            else:
                redis_url_to_feast(self.redis_url, cluster=True)  # a bad URL (e.g. /3) refuses now
        if self.log_store == "redis" and self.feast_redis and not self.redis_url:
            raise ValueError("PORTRAIT_LOG_STORE=redis with PORTRAIT_FEAST_REDIS needs PORTRAIT_REDIS_URL too: the URL "
                             "of the Redis that holds the log streams")
        return self

    def feast_redis_type(self) -> Literal["redis", "redis_cluster"]:
        """Feast's ``redis_type`` of the online store (``feature_store.yaml`` reads it from
        ``PORTRAIT_FEAST_REDIS_TYPE``)."""
        return "redis_cluster" if self.redis_cluster else "redis"

    def configured_feast_redis(self) -> str | None:
        """``feast_redis_connection()``, or None when no Redis is configured (the embedded one is used)."""
        return self.feast_redis_connection() if self.feast_redis or self.redis_url else None

    def feast_redis_connection(self) -> str:
        """The Redis connection in Feast's form, from ``feast_redis`` or else ``redis_url``."""
        if self.feast_redis:
            return self.feast_redis
        if not self.redis_url:
            raise ValueError("neither PORTRAIT_FEAST_REDIS nor PORTRAIT_REDIS_URL is set")
        return redis_url_to_feast(self.redis_url, cluster=self.redis_cluster)


def redis_url_to_feast(url: str, cluster: bool = False) -> str:
    """``redis[s]://user:pw@host:port/db`` -> ``host:port,db=N[,username=..][,password=..][,ssl=true]``.

    ``rediss://`` turns TLS on (certificate verified against the system CAs, or the PEM file in the
    ``ssl_ca_certs`` query parameter); ``ssl_certfile`` + ``ssl_keyfile`` give a client certificate.
    ``cluster``: the URL names a seed node of a Redis Cluster, the result has no ``db=`` (Feast's cluster
    client refuses one) and a URL naming a database other than 0 is refused.

    >>> redis_url_to_feast("rediss://portrait:s3cret@cache:6380/1?ssl_ca_certs=/etc/ca.pem")
    'cache:6380,db=1,username=portrait,password=s3cret,ssl=true,ssl_ca_certs=/etc/ca.pem'
    >>> redis_url_to_feast("rediss://:s3cret@node-a:7000/0", cluster=True)
    'node-a:7000,password=s3cret,ssl=true'
    >>> redis_url_to_feast("redis://node-a:7000/2", cluster=True)
    Traceback (most recent call last):
    ValueError: a Redis Cluster has database 0 only: redis_url names database 2 (use /0 or no path)
    """
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis_url must start with redis:// or rediss://, got {u.scheme!r}")
    db_path = u.path.strip("/") or "0"
    if not db_path.isdigit():
        raise ValueError(f"the redis_url path must be a database number, got {u.path!r}")
    db = int(db_path)
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}"]
    if cluster:
        if db != 0:
            raise ValueError(f"a Redis Cluster has database 0 only: redis_url names database {db} (use /0 or no path)")
    else:
        parts.append(f"db={db}")
    for key, raw in (("username", u.username), ("password", u.password)):
        if raw:
            value = unquote(raw)
            if "," in value or "=" in value:
                raise ValueError(f"the Redis {key} contains ',' or '=', which Feast's connection string cannot carry")
            if _json_changes(value):
                raise ValueError(f"Feast would read the Redis {key} as a JSON value (e.g. true, null, 1e3, \"x\"): "
                                 "choose another one")
            parts.append(f"{key}={value}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    for key, values in parse_qs(u.query).items():
        if key not in _TLS_QUERY:
            raise ValueError(f"unsupported redis_url query parameter {key!r} (supported: {', '.join(_TLS_QUERY)})")
        if u.scheme != "rediss":
            raise ValueError(f"{key} needs a rediss:// URL")
        value = values[-1]
        if "," in value or "=" in value:
            raise ValueError(f"the redis_url parameter {key} contains ',' or '='")
        parts.append(f"{key}={value}")
    return ",".join(parts)


_TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _json_changes(value: str) -> bool:
    """Feast json-decodes connection-string values: True when that would change ``value``."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return False
    return str(decoded) != value


def markdown_table() -> str:
    """The README's configuration table, generated from ``Settings`` so it cannot drift."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = "unset" if f.default is None else f"`{f.default}`"
        desc = " ".join((f.description or "").replace("``", "`").replace("|", "\\|").split())  # one table row
        lines.append(f"| `PORTRAIT_{name.upper()}` | {default} | {desc} |")
    return "\n".join(lines)
