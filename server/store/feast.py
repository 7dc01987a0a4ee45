"""Feast glue: apply the definitions, write profile rows online and offline, read them back.

Online writes go through the Feast provider's batch call ``online_write_batch``
(``server/writer.py``: many rows per call, no pandas; the server runs it in a child
process). Offline rows are appended as new parquet files under
``$PORTRAIT_DATA_DIR/offline/user_profile/`` (written to a temporary name and
renamed, so readers never see a partial file; a growing file is never rewritten).
Columns, their order and types, online and offline: ``server.store.schema``.
All calls here block: the materializer runs them in a worker thread.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from server.log.atomic import atomic_file
from server.store.schema import APPENDED_FROM, ARROW_SCHEMA, COLUMNS

FEATURE_VIEW = "user_profile"
FEATURE_SERVICE = "user_profile_v1"

Row = dict[str, Any]


def offline_dir(data_dir: Path) -> Path:
    """Where the offline parquet files of the user_profile view live."""
    return Path(data_dir).resolve() / "offline" / "user_profile"


def set_feast_env(data_dir: Path, feast_redis: str, redis_type: str = "redis") -> None:
    """Export the variables ``feature_store.yaml`` expands (Feast reads them from the environment).
    ``redis_type``: ``redis`` or ``redis_cluster`` (``Settings.feast_redis_type()``)."""
    if redis_type not in ("redis", "redis_cluster"):
        raise ValueError(f"redis_type must be redis or redis_cluster, got {redis_type!r}")
    os.environ.update(feast_env(data_dir, feast_redis, redis_type))


def feast_env(data_dir: Path, feast_redis: str, redis_type: str = "redis") -> dict[str, str]:
    """The variables ``feature_store.yaml`` expands, as a dict (for a child process' environment)."""
    return {"PORTRAIT_DATA_DIR": str(Path(data_dir).resolve()), "PORTRAIT_FEAST_REDIS": feast_redis,
            "PORTRAIT_FEAST_REDIS_TYPE": redis_type}


#: Every variable ``set_feast_env`` exports (for code that saves and restores them).
FEAST_ENV_VARS = ("PORTRAIT_DATA_DIR", "PORTRAIT_FEAST_REDIS", "PORTRAIT_FEAST_REDIS_TYPE")


def open_store(repo: Path) -> Any:
    """A ``FeatureStore`` on ``repo`` (imports Feast lazily: it takes seconds)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(Path(repo).resolve()))


def apply_definitions(repo: Path, data_dir: Path) -> Any:
    """Load ``repo/user_profile.py`` and apply its objects to the registry; return the store."""
    offline_dir(data_dir).mkdir(parents=True, exist_ok=True)
    path = Path(repo).resolve() / "user_profile.py"
    spec = importlib.util.spec_from_file_location("portrait_feature_repo_definitions", path)
    assert spec and spec.loader, path
    defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defs)
    store = open_store(repo)
    store.apply([defs.user, defs.user_profile_source, defs.user_profile_push_source, defs.user_profile_fv,
                 defs.user_profile_v1])
    return store


def _wait_until(cond: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("redis persistence rewrite did not finish")
        time.sleep(0.05)


def _is_cluster(client: Any) -> bool:
    """Is Feast's client a redis-py ``RedisCluster`` (``redis_type: redis_cluster``)?"""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


class OnlineStore:
    """Writes and reads profile rows through one Feast store (Redis online store)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._service: Any = None
        self._writer: Any = None

    def write(self, rows: Sequence[Row]) -> None:
        """Write many rows in one Feast batch call, in this process (raises on Redis errors)."""
        if self._writer is None:
            from server.store.writer import FeastRowWriter

            self._writer = FeastRowWriter(self._store)
        self._writer.write(rows)

    def read(self, user_id: str) -> Row | None:
        """The user's row as Feast serves it, or None if the online store has no row."""
        if self._service is None:
            self._service = self._store.get_feature_service(FEATURE_SERVICE)
        got = self._store.get_online_features(features=self._service, entity_rows=[{"user_id": user_id}]).to_dict()
        row = {k: v[0] for k, v in got.items()}
        if row.get("profile_version") is None:
            return None
        return row

    def _client(self) -> Any:
        """Feast's own redis-py client: a ``Redis``, or a ``RedisCluster`` with ``redis_type: redis_cluster``."""
        return self._store._get_provider().online_store._get_client(self._store.config.online_store)

    def _servers(self) -> list[Any]:
        """One plain ``Redis`` client per server holding rows: the server, or every master of a cluster."""
        client = self._client()
        if _is_cluster(client):
            return [client.get_redis_connection(node) for node in client.get_primaries()]
        return [client]

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete the users' online rows: the Redis hash Feast writes per entity (Feast has no per-entity
        delete; the key is Feast's own ``_redis_key``). Returns how many existed. One key per user and no
        atomicity across users is needed: on a cluster redis-py splits the DEL by slot (one DEL per slot,
        pipelined to the masters owning them)."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        cfg = self._store.config
        keys = [_redis_key(cfg.project, EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=u)]),
                           entity_key_serialization_version=cfg.entity_key_serialization_version)
                for u in user_ids]
        return int(self._client().delete(*keys)) if keys else 0

    def rewrite_persistence(self) -> None:
        """Make the Redis server rewrite its append-only file and snapshot (so deleted rows leave its files);
        on a cluster, every master. The server calls it for the embedded Redis only, whose files live in the
        data directory (an external Redis' files are its operator's)."""
        for server in self._servers():
            server.bgrewriteaof()
            _wait_until(lambda s=server: not int(s.info("persistence")["aof_rewrite_in_progress"])
                        and not int(s.info("persistence")["aof_rewrite_scheduled"]))
            server.save()

    def ping(self) -> None:
        """Raise if the online store's Redis is unreachable; on a cluster, if a master is unreachable or the
        cluster does not cover every slot (``cluster_state`` not ok)."""
        for server in self._servers():
            server.ping()
        client = self._client()
        if _is_cluster(client):
            state = client.cluster_info().get("cluster_state")
            if state != "ok":
                raise ConnectionError(f"the Redis Cluster's state is {state!r}, not 'ok'")


class OfflineLog:
    """Appends rows as new parquet files: ``part-<unix ms>[-<tag>]-<pid>-<seq>.parquet`` (``tag``: the worker's,
    with several workers: their parts never clash, whichever machine they run on)."""

    def __init__(self, data_dir: Path, tag: str = "") -> None:
        self.dir = offline_dir(data_dir)
        self.tag = f"-{tag}" if tag else ""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count()

    def append(self, rows: Sequence[Row]) -> Path:
        """Write ``rows`` as one new file (temp name, fsync, rename); return its path."""
        created = int(time.time() * 1e6)
        # one array per column of the schema, in its order; rows carry the event timestamp as int µs, and
        # no created timestamp (the only column without a row key): it is now. Rows built before columns were
        # appended (pending in a checkpoint of an older version) lack those: null
        arrays = [pa.array([created] * len(rows) if (key := c.row_key) is None else
                           [r[key] for r in rows] if i < APPENDED_FROM else [r.get(key) for r in rows],
                           type=c.kind.arrow) for i, c in enumerate(COLUMNS)]
        table = pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
        name = f"part-{created // 1000:013d}{self.tag}-{os.getpid()}-{next(self._seq):06d}"
        final = self.dir / f"{name}.parquet"
        with atomic_file(final) as fh:
            pq.write_table(table, fh)
        return final


def upgrade_offline(data_dir: Path) -> int:
    """Rewrite, in place and atomically, every offline part written before columns were appended to the schema
    (``server.store.schema``), with those columns null: Feast's offline store reads one schema for all parts
    and refuses a column a part lacks. Runs at start (a no-op once done); returns how many parts it rewrote."""
    directory = offline_dir(data_dir)
    upgraded = 0
    for path in sorted(directory.glob("*.parquet")):
        if pq.read_schema(path).names == ARROW_SCHEMA.names:
            continue
        table = pq.read_table(path)
        n = table.num_rows
        arrays = [table.column(f.name) if f.name in table.column_names else pa.nulls(n, type=f.type)
                  for f in ARROW_SCHEMA]
        with atomic_file(path) as fh:
            pq.write_table(pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA), fh)
        upgraded += 1
    return upgraded
