"""The online store on a real Redis Cluster (``PORTRAIT_REDIS_CLUSTER=true``, issue #16's online-store part).

A module fixture starts three real ``redis-server`` processes in cluster mode and joins them with
``redis-cli --cluster create`` (three masters, no replicas). A real ``portrait serve`` child is given one
seed node; the tests check that its rows are spread over the three masters by key slot, that GetProfile and
Feast's own ``FeatureStore`` read them back, that DeleteUser removes a row from whichever master holds it,
and that the settings refuse a cluster without a URL or with a database other than 0.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from pydantic import ValidationError

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.config import Settings
from server.store.embedded_redis import die_with_parent, online_redis
from tests.conftest import ROOT, ServerProcess, cluster_info, free_port, uid, wait_redis

TIMEOUT = 30.0
USERS = 210


@dataclass
class Cluster:
    """Three redis-server masters on 127.0.0.1, joined into one cluster."""

    ports: list[int]
    dirs: list[Path]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def seed_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def feast_connection(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def owner(self, key: bytes) -> int:
        """The port of the master serving ``key``'s slot (asked of the cluster, not computed here)."""
        slot = int(self.node(self.ports[0]).execute_command("CLUSTER KEYSLOT", key))
        for start, end, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise AssertionError(f"slot {slot} has no master")

    def stop(self) -> None:
        for p in self.procs:  # by pid, the ones started here
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        pytest.skip("redis-server and redis-cli are needed to start a real Redis Cluster (apt install redis-server)")
    root = tmp_path_factory.mktemp("redis-cluster")
    c = Cluster(ports=[free_port() for _ in range(3)], dirs=[root / f"node-{i}" for i in range(3)])
    try:
        for port, d in zip(c.ports, c.dirs, strict=True):
            d.mkdir()
            # the cluster bus on a port of its own (the default, port + 10000, may lie beyond 65535)
            c.procs.append(subprocess.Popen(
                [server, "--port", str(port), "--cluster-port", str(free_port()), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "5000",
                 "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--dir", str(d),
                 "--logfile", str(d / "redis.log"), "--daemonize", "no"],
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent))
        for port, p in zip(c.ports, c.procs, strict=True):
            wait_redis(lambda port=port, p=p: p.poll() is None and c.node(port).ping(), f"redis-server on {port}")
        create = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in c.ports),
                                 "--cluster-replicas", "0", "--cluster-yes"],
                                capture_output=True, text=True, timeout=60)
        assert create.returncode == 0, create.stdout + create.stderr
        wait_redis(lambda: all(cluster_info(c.node(p).execute_command("CLUSTER INFO"))["cluster_state"] == "ok"
                          and int(cluster_info(c.node(p).execute_command("CLUSTER INFO"))["cluster_known_nodes"]) == 3
                          for p in c.ports), "cluster_state:ok on every node")
        yield c
    finally:
        c.stop()


def feast_key(user: str) -> bytes:
    """Feast's Redis key of a user's row (Feast's own key function)."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return _redis_key("portrait", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user)]), 3)


def ev(user: str, type_: int = pb.EVENT_TYPE_VIEW, **kw: Any) -> pb.Event:
    m = pb.Event(event_id=uid("e"), user_id=user, type=type_, item_id=kw.pop("item_id", "sku-1"), **kw)
    m.event_time.FromSeconds(int(time.time()))
    return m


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A real ``portrait serve`` on the cluster (seed node: the first master), with its data dir."""
    data = tmp_path_factory.mktemp("data")
    srv = ServerProcess(data, cluster.seed_url, PORTRAIT_REDIS_CLUSTER="true")
    try:
        srv.wait_serving()
        yield srv, data
    finally:
        if srv.proc.poll() is None:
            assert srv.terminate() == 0, srv.log()


def test_rows_land_on_every_master_and_read_back_through_the_server_and_feast(
        cluster: Cluster, served: tuple[ServerProcess, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, data = served
    assert "Redis Cluster, seed node 127.0.0.1:" in srv.log()
    users = [uid("cl") for _ in range(USERS)]
    sent = {u: 1 + i % 4 for i, u in enumerate(users)}
    events = [ev(u, pb.EVENT_TYPE_PURCHASE if k == 0 else pb.EVENT_TYPE_VIEW, price=10.0, category="toys")
              for u in users for k in range(sent[u])]
    with grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        r = stub.TrackBatch(pb.TrackBatchRequest(events=events, wait_visible=True), timeout=TIMEOUT)
        assert (r.accepted, r.rejected_count, r.duplicates) == (len(events), 0, 0)
        for u in users:
            p = stub.GetProfile(pb.GetProfileRequest(user_id=u), timeout=TIMEOUT)
            assert (p.version, p.features["lifetime_events"], p.features["lifetime_spend"]) == (sent[u], sent[u], 10.0)

    # the rows are spread over the three masters by slot, each on the master that owns its slot
    owners = {u: cluster.owner(feast_key(u)) for u in users}
    assert set(owners.values()) == set(cluster.ports)
    for port in cluster.ports:
        node = cluster.node(port)
        assert node.dbsize() > 0
        mine = [u for u in users if owners[u] == port]
        with node.pipeline(transaction=False) as pipe:  # one EXISTS per key: a multi-key one spanning slots is
            for u in mine:  # refused (CROSSSLOT) even when one master owns every slot
                pipe.exists(feast_key(u))
            assert sum(pipe.execute()) == len(mine)  # each row on the master owning its slot

    # Feast's own FeatureStore, configured only by the variables the server exports, reads the same values
    monkeypatch.setenv("PORTRAIT_DATA_DIR", str(data.resolve()))
    monkeypatch.setenv("PORTRAIT_FEAST_REDIS", cluster.feast_connection)
    monkeypatch.setenv("PORTRAIT_FEAST_REDIS_TYPE", "redis_cluster")
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(ROOT / "feature_repo"))
    got = store.get_online_features(features=store.get_feature_service("user_profile_v1"),
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    assert got["profile_version"] == [sent[u] for u in users]
    assert got["lifetime_events"] == [sent[u] for u in users]


def test_delete_user_removes_the_row_from_the_master_holding_it(
        cluster: Cluster, served: tuple[ServerProcess, Path]) -> None:
    srv, _ = served
    victims: dict[int, str] = {}  # one victim per master
    while len(victims) < 3:
        u = uid("victim")
        victims.setdefault(cluster.owner(feast_key(u)), u)
    other = uid("other")
    with grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        stub.TrackBatch(pb.TrackBatchRequest(events=[ev(u) for u in [*victims.values(), other]], wait_visible=True),
                        timeout=TIMEOUT)
        for port, victim in victims.items():
            assert cluster.node(port).exists(feast_key(victim)) == 1
            assert stub.DeleteUser(pb.DeleteUserRequest(user_id=victim), timeout=TIMEOUT).existed
            with pytest.raises(grpc.RpcError) as info:
                stub.GetProfile(pb.GetProfileRequest(user_id=victim), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert cluster.node(port).exists(feast_key(victim)) == 0
        with cluster.client() as rc:
            assert rc.exists(*(feast_key(v) for v in victims.values())) == 0
            assert rc.exists(feast_key(other)) == 1
        assert stub.GetProfile(pb.GetProfileRequest(user_id=other), timeout=TIMEOUT).version == 1


def test_online_store_deletes_across_slots_pings_and_rewrites_every_master(
        cluster: Cluster, served: tuple[ServerProcess, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``OnlineStore`` (the server's erasure delete, ping and persistence rewrite) on Feast's cluster client:
    one DEL of keys in many slots on three masters, one ping of every master, one rewrite on each."""
    from server.store.feast import OnlineStore, open_store, set_feast_env

    srv, data = served
    per_master: dict[int, list[str]] = {port: [] for port in cluster.ports}
    while min(len(v) for v in per_master.values()) < 4:  # keys on every master, in (almost surely) 12 slots
        u = uid("multi")
        per_master[cluster.owner(feast_key(u))].append(u)
    users = [u for us in per_master.values() for u in us]
    with grpc.insecure_channel(srv.target) as ch:
        pb_grpc.ProfileServiceStub(ch).TrackBatch(pb.TrackBatchRequest(events=[ev(u) for u in users],
                                                                      wait_visible=True), timeout=TIMEOUT)
    for var in ("PORTRAIT_DATA_DIR", "PORTRAIT_FEAST_REDIS", "PORTRAIT_FEAST_REDIS_TYPE"):
        monkeypatch.setenv(var, "")  # restored after the test
    set_feast_env(data, cluster.feast_connection, "redis_cluster")
    online = OnlineStore(open_store(ROOT / "feature_repo"))
    online.ping()
    assert online.read(users[0]) is not None
    assert online.delete([*users, uid("never-written")]) == len(users)
    with cluster.client() as rc:
        assert rc.exists(*(feast_key(u) for u in users)) == 0
    assert all(online.read(u) is None for u in users[:3])
    online.rewrite_persistence()
    assert all((d / "dump.rdb").exists() for d in cluster.dirs)


def test_cluster_mode_needs_a_url_and_database_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTRAIT_FEAST_REDIS", raising=False)  # exported by servers earlier tests started
    with pytest.raises(ValidationError, match="PORTRAIT_REDIS_CLUSTER=true needs PORTRAIT_REDIS_URL"):
        Settings(_env_file=None, redis_cluster=True, redis_url=None, feast_redis=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="database 0 only: redis_url names database 3"):
        Settings(_env_file=None, redis_cluster=True, redis_url="redis://127.0.0.1:7000/3")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="must not carry db="):
        Settings(_env_file=None, redis_cluster=True, redis_url="redis://127.0.0.1:7000",  # type: ignore[call-arg]
                 feast_redis="127.0.0.1:7000,db=0")
    ok = Settings(_env_file=None, redis_cluster=True, redis_url="redis://:pw@10.0.0.5:7000")  # type: ignore[call-arg]
    assert (ok.feast_redis_connection(), ok.feast_redis_type()) == ("10.0.0.5:7000,password=pw", "redis_cluster")
    with pytest.raises(ValueError, match="needs PORTRAIT_REDIS_URL"):
        online_redis(None, tmp_path, 0, cluster=True)  # never an embedded Redis in cluster mode
    assert not (tmp_path / "redis").exists()

    # `portrait serve` refuses at once, saying why, and starts no embedded Redis
    srv = ServerProcess(tmp_path / "data", None, PORTRAIT_REDIS_CLUSTER="true")
    assert srv.proc.wait(timeout=60) != 0
    log = srv.log()
    srv.terminate()  # already exited: closes its log
    assert "PORTRAIT_REDIS_CLUSTER=true needs PORTRAIT_REDIS_URL" in log
    assert not (tmp_path / "data" / "redis").exists()


def test_the_event_log_on_the_cluster_keeps_every_acknowledged_event_through_a_kill_9(
        cluster: Cluster, tmp_path: Path) -> None:
    """``PORTRAIT_LOG_STORE=redis`` on the cluster: one stream per partition spread over the three masters; a
    SIGKILL of the server mid-stream, a restart, a resend: every user's count equals the events sent, once."""
    from collections import Counter

    from server.domain.partition import partition_of
    from tests.integration.test_durability import Sender, batches, make_events, profiles, wait_drained

    events, users = make_events(12_000, 300, seed=5)
    reqs = batches(events)
    env = {"PORTRAIT_REDIS_CLUSTER": "true", "PORTRAIT_LOG_STORE": "redis", "PORTRAIT_PARTITIONS": "16",
           "PORTRAIT_LOG_PREFIX": f"{uid('clog')}:log", "PORTRAIT_CHECKPOINT_INTERVAL_S": "1"}
    srv = ServerProcess(tmp_path / "data", cluster.seed_url, **env)
    srv.wait_serving()
    sender = Sender(srv.target, reqs)
    sender.wait_for(6_000)
    srv.kill()
    acked = sender.stop()
    assert 6_000 <= acked < len(events), acked
    prefix = env["PORTRAIT_LOG_PREFIX"]
    with cluster.client() as rc:  # the streams of the partitions that got events, on every master
        keys = [f"{prefix}:{p}".encode() for p in sorted({partition_of(u, 16) for u in users})]
        assert sum(rc.xlen(k) for k in keys) >= acked - 6_000  # a checkpoint may have trimmed the older ones
        assert {cluster.owner(k) for k in keys} == set(cluster.ports)

    srv2 = ServerProcess(tmp_path / "data", cluster.seed_url, **env)
    srv2.wait_serving()
    try:
        wait_drained(srv2)
        got = profiles(srv2.target, users)
        logged = sum(p.version for p in got.values())
        assert logged >= acked
        assert {u: p.version for u, p in got.items()} == dict(Counter(e.user_id for e in events[:logged]))
        with grpc.insecure_channel(srv2.target) as ch:
            sent = [pb_grpc.ProfileServiceStub(ch).TrackBatch(r, timeout=60) for r in reqs]
        assert sum(r.duplicates for r in sent) == logged and sum(r.accepted for r in sent) == len(events) - logged
        wait_drained(srv2)  # GetProfile reads the online rows
        final = profiles(srv2.target, users)
        assert {u: (p.version, p.features["lifetime_events"]) for u, p in final.items()} == \
            {u: (n, float(n)) for u, n in Counter(e.user_id for e in events).items()}
    finally:
        assert srv2.terminate() == 0, srv2.log()
