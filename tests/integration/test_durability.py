"""Break things for real: kill -9 mid-ingest, a Redis outage, corrupt files, floods, fuzz.
Each test runs `portrait serve` as a child process against a real Redis."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api import convert
from server.domain.events import Event, EventType
from server.metrics import Metrics
from server.store.embedded_redis import EmbeddedRedis
from server.worker import snapshot
from server.worker.partition import PartitionWorker, WorkerConfig
from tests.conftest import ServerProcess, uid

TYPES = [EventType.VIEW] * 5 + [EventType.CLICK, EventType.ADD_TO_CART, EventType.FAVORITE, EventType.PURCHASE]
COMPARED = ("views_30d", "clicks_7d", "carts_30d", "purchases_30d", "lifetime_events", "lifetime_spend",
            "sessions_7d", "spend_30d", "preferred_hour", "last_event_ts")


def make_events(n: int, users: int, seed: int = 7) -> tuple[list[Event], list[str]]:
    rnd = random.Random(seed)
    names = [uid("dur") for _ in range(users)]
    t0 = time.time() - 20 * 86400
    out = []
    for i in range(n):
        et = rnd.choice(TYPES)
        out.append(Event(uid("e"), rnd.choice(names), et, t0 + i * 30 + rnd.random(), item_id=f"i{rnd.randrange(300)}",
                         category=f"c{rnd.randrange(12)}", price=round(rnd.uniform(1, 200), 2), quantity=1))
    return out, names


def batches(events: list[Event], size: int = 500) -> list[pb.TrackBatchRequest]:
    return [pb.TrackBatchRequest(events=[convert.event_to_proto(e) for e in events[i:i + size]])
            for i in range(0, len(events), size)]


def profiles(target: str, users: list[str]) -> dict[str, pb.Profile]:
    out = {}
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        for u in users:
            try:
                out[u] = stub.GetProfile(pb.GetProfileRequest(user_id=u), timeout=10)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
    return out


def wait_drained(srv: ServerProcess, timeout_s: float = 120.0) -> None:
    """Await the condition 'nothing waits to be written online' (gauges refresh every second)."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if srv.metric("portrait_queue_depth", {"queue": "online"}) == 0 and \
                srv.metric("portrait_online_store_up") == 1:
            seen += 1
            if seen >= 3:  # stable across three refreshes
                return
        else:
            seen = 0
        time.sleep(0.5)
    raise AssertionError("online queue did not drain")


class Sender:
    """A client thread sending ``reqs`` through TrackBatch in order, counting the acknowledged events, until
    a call fails (the server was killed) or ``stop``."""

    def __init__(self, target: str, reqs: list[pb.TrackBatchRequest]) -> None:
        self.acked = 0
        self._stop = threading.Event()
        self._target, self._reqs = target, reqs
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        with grpc.insecure_channel(self._target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            for r in self._reqs:
                try:
                    stub.TrackBatch(r, timeout=30)
                except grpc.RpcError:
                    return
                self.acked += len(r.events)
                if self._stop.is_set():
                    return

    def wait_for(self, acked: int, timeout_s: float = 300.0) -> None:
        """Until ``acked`` events are acknowledged (or the thread ended, or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while self.acked < acked and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> int:
        """Stop after the call in flight; the events acknowledged."""
        self._stop.set()
        self._thread.join()
        return self.acked


def reference(events: list[Event]) -> PartitionWorker:
    """An uncrashed in-process run over the same events as the server saw them (after the proto
    round trip, which keeps event times to the nanosecond)."""
    p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    for e in events:
        p.apply(convert.event_from_proto(convert.event_to_proto(e)), score=False)
    return p


@pytest.mark.parametrize("log_store", ["file", "redis"])
def test_kill_9_mid_ingest_loses_no_acked_event_and_replays_exactly_once(tmp_path: Path, redis_url: str,
                                                                        log_store: str) -> None:
    """``redis``: the log lives in the embedded Redis (appendfsync always), which is SIGKILLed first."""
    events, users = make_events(30_000, 400)  # 50,000 before: 110 s per store on 2 cores, make test near 25 min
    reqs = batches(events)
    own: dict[str, str] = {"PORTRAIT_LOG_STORE": log_store}
    url: str | None = redis_url
    if log_store == "redis":  # the server's own embedded Redis holds the log and the rows
        url = None
    srv = ServerProcess(tmp_path / "data", url, PORTRAIT_CHECKPOINT_INTERVAL_S="2", **own)
    srv.wait_serving()
    sender = Sender(srv.target, reqs)
    sender.wait_for(15_000)
    if log_store == "redis":  # the log's Redis dies first, without a shutdown: only what it fsynced survives
        os.kill(int((tmp_path / "data" / "redis" / "redis.pid").read_text()), signal.SIGKILL)
    srv.kill()  # SIGKILL mid-stream
    acked = sender.stop()
    assert 15_000 <= acked < len(events), acked

    srv2 = ServerProcess(tmp_path / "data", url, **own)
    started = time.monotonic()
    srv2.wait_serving()
    recovery_s = time.monotonic() - started
    try:
        wait_drained(srv2)
        got = profiles(srv2.target, users)
        logged = sum(p.version for p in got.values())
        assert logged >= acked  # every acknowledged event survived
        prefix = Counter(e.user_id for e in events[:logged])
        assert {u: p.version for u, p in got.items()} == dict(prefix)  # exactly once, in order
        assert "replayed" in srv2.log()

        with grpc.insecure_channel(srv2.target) as ch:  # the client resends everything
            stub = pb_grpc.ProfileServiceStub(ch)
            sent = [stub.TrackBatch(r, timeout=60) for r in reqs]
        assert sum(r.duplicates for r in sent) == logged
        assert sum(r.accepted for r in sent) == len(events) - logged
        wait_drained(srv2)
        final = profiles(srv2.target, users)
        ref = reference(events)
        for u in users:
            # timers move a profile's as-of time on whichever event passes its watermark, and the crash changed
            # which events those were: compare with the uncrashed run as of the time the served row is for
            ref.profiles[u].as_of = final[u].as_of.ToNanoseconds() / 1e9
            row = ref.row(u)
            assert final[u].version == row["profile_version"]
            assert sorted(final[u].tags) == row["tags"] and list(final[u].top_categories) == row["top_categories"]
            assert final[u].segment == row["segment"]
            for f in COMPARED:
                assert final[u].features[f] == pytest.approx(row[f]), (u, f)

        with grpc.insecure_channel(srv2.target) as ch:  # and once more: zero changes
            stub = pb_grpc.ProfileServiceStub(ch)
            again = [stub.TrackBatch(r, timeout=60) for r in reqs]
        assert sum(r.accepted for r in again) == 0 and sum(r.duplicates for r in again) == len(events)
        assert {u: p.version for u, p in profiles(srv2.target, users).items()} == \
            {u: p.version for u, p in final.items()}
    finally:
        assert srv2.terminate() == 0
    print(f"recovery (process start to SERVING, incl. replay): {recovery_s:.1f} s")


def test_redis_outage_keeps_accepting_and_writes_everything_after(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "own-redis", port=0)
    redis.start()
    srv = ServerProcess(tmp_path / "data", redis.url, PORTRAIT_RETRY_MAX_BACKOFF_S="1")
    srv.wait_serving()
    events, users = make_events(3_000, 50, seed=11)
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            reqs = batches(events)
            for r in reqs[:2]:
                stub.TrackBatch(r, timeout=30)
            redis.stop()  # Redis goes away mid-ingest
            for r in reqs[2:]:
                assert stub.TrackBatch(r, timeout=30).accepted == len(r.events)  # still accepted
            code = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # a loaded machine may time a read out first: poll for the answer
                try:
                    stub.GetProfile(pb.GetProfileRequest(user_id=users[0]), timeout=20)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
            assert code == grpc.StatusCode.UNAVAILABLE  # not stale data, silently
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(service="portrait.online_store")).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
                health_pb2.HealthCheckResponse.SERVING  # ingest is up: degraded, not down
            outage_end = time.monotonic() + 30
            while time.monotonic() < outage_end:  # the outage lasts 30 s; ingest goes on
                time.sleep(1)
            assert srv.metric("portrait_online_write_errors_total") > 0
            redis = EmbeddedRedis(tmp_path / "own-redis", port=redis.port)
            redis.start()
            wait_drained(srv)
            got = profiles(srv.target, users)
            assert {u: p.version for u, p in got.items()} == dict(Counter(e.user_id for e in events))
            assert srv.metric("portrait_online_store_up") == 1
    finally:
        assert srv.terminate() == 0
        redis.stop()


def test_corrupt_log_tail_and_checkpoint_recover_from_the_previous_valid_state(
        tmp_path: Path, redis_url: str) -> None:
    events, users = make_events(3_000, 40, seed=3)
    reqs = batches(events, 250)
    srv = ServerProcess(tmp_path / "data", redis_url, PORTRAIT_CHECKPOINT_INTERVAL_S="0.3")
    srv.wait_serving()
    ckpt_dir = tmp_path / "data" / "checkpoints"
    with grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        for r in reqs:
            stub.TrackBatch(r, timeout=30)
            deadline = time.monotonic() + 10  # await a checkpoint after each batch, so two exist
            while time.monotonic() < deadline and len(list(ckpt_dir.glob("ckpt-*.bin"))) < 2:
                time.sleep(0.05)
    srv.kill()
    newest = sorted(ckpt_dir.glob("ckpt-*.bin"))[-1]
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated checkpoint
    segment = sorted((tmp_path / "data" / "log").glob("*.log"))[-1]
    with segment.open("ab") as fh:
        fh.write(b"\x10\x00\x00\x00garbage-torn-tail")  # a record header promising more than is there
    srv2 = ServerProcess(tmp_path / "data", redis_url)
    srv2.wait_serving()
    try:
        wait_drained(srv2)
        text = srv2.log()
        assert "unusable" in text and "previous one" in text
        assert "torn" in text
        got = profiles(srv2.target, users)
        assert {u: p.version for u, p in got.items()} == dict(Counter(e.user_id for e in events))
    finally:
        assert srv2.terminate() == 0


def test_flood_gets_resource_exhausted_stays_bounded_and_recovers(tmp_path: Path, redis_url: str) -> None:
    srv = ServerProcess(tmp_path / "data", redis_url, PORTRAIT_MAX_INFLIGHT_RPCS="4")
    srv.wait_serving()
    events, users = make_events(32_000, 500, seed=5)
    reqs = batches(events, 250)  # distinct events: every request does real work
    for r in reqs:
        r.wait_visible = True  # read-your-writes clients hold their RPC slot until the row is online
    codes: Counter[str] = Counter()
    rss_before = srv.rss_bytes()

    async def flood() -> None:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)

            async def one(req: pb.TrackBatchRequest) -> None:
                try:
                    await stub.TrackBatch(req, timeout=60)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1

            for wave in range(0, len(reqs), 64):  # waves of 64 concurrent batches
                await asyncio.gather(*(one(r) for r in reqs[wave:wave + 64]))

    try:
        asyncio.run(flood())
        assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
        assert srv.metric("portrait_rejected_total", {"reason": "inflight"}) == codes["RESOURCE_EXHAUSTED"]
        assert srv.rss_bytes() - rss_before < 300 * 1024 * 1024  # in-flight work is bounded
        with grpc.insecure_channel(srv.target) as ch:  # recovered
            r = pb_grpc.ProfileServiceStub(ch).Track(pb.TrackRequest(event=convert.event_to_proto(
                Event(uid("e"), users[0], EventType.VIEW, time.time(), item_id="x"))), timeout=10)
            assert r.profile_version >= 1
    finally:
        assert srv.terminate() == 0


def test_sigterm_drains_checkpoints_and_exits_0(tmp_path: Path, redis_url: str) -> None:
    srv = ServerProcess(tmp_path / "data", redis_url, PORTRAIT_CHECKPOINT_INTERVAL_S="3600")
    srv.wait_serving()
    events, users = make_events(1_000, 20, seed=9)
    with grpc.insecure_channel(srv.target) as ch:
        pb_grpc.ProfileServiceStub(ch).TrackBatch(batches(events, 1_000)[0], timeout=30)
    assert srv.terminate() == 0
    assert list((tmp_path / "data" / "checkpoints").glob("ckpt-*.bin"))  # the final checkpoint
    quiet = srv.log()
    assert "leaked" not in quiet and "nanobind" not in quiet  # no teardown dump from DuckDB's bindings
    assert "so refreshing" not in quiet  # Feast's registry refreshes are not logged at INFO
    srv2 = ServerProcess(tmp_path / "data", redis_url)
    srv2.wait_serving()
    try:
        assert "replayed 0 log records" in srv2.log() or "replayed" not in srv2.log()
        got = profiles(srv2.target, users)
        assert {u: p.version for u, p in got.items()} == dict(Counter(e.user_id for e in events))
    finally:
        assert srv2.terminate() == 0



@pytest.mark.parametrize("log_store", ["file", "redis"])
def test_replay_log_rebuilds_profiles_into_an_empty_online_store(tmp_path: Path, redis_url: str,
                                                                 log_store: str) -> None:
    import subprocess
    import sys

    from server.config import redis_url_to_feast
    from server.store.feast import FEATURE_SERVICE, open_store, set_feast_env
    from tests.conftest import ROOT

    srv = ServerProcess(tmp_path / "data", redis_url, PORTRAIT_LOG_RETENTION_S="-1", PORTRAIT_LOG_STORE=log_store,
                        PORTRAIT_LOG_PREFIX=f"test:{uuid.uuid4().hex[:8]}:log")
    srv.wait_serving()
    events, users = make_events(2_000, 30, seed=21)
    with grpc.insecure_channel(srv.target) as ch:
        pb_grpc.ProfileServiceStub(ch).TrackBatch(batches(events, 2_000)[0], timeout=30)
    assert srv.terminate() == 0
    empty_db = redis_url.rsplit("/", 1)[0] + "/9"  # another database of the same Redis: nothing written there
    env = dict(srv.env, PORTRAIT_FEAST_REDIS=redis_url_to_feast(empty_db))  # the log stays where it is
    out = subprocess.run([sys.executable, "-m", "server", "replay-log", "--from-start"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"rebuilt {len(users)} profiles from {len(events)} log records" in out.stdout
    saved = dict(os.environ)
    try:
        set_feast_env(tmp_path / "data", redis_url_to_feast(empty_db), "redis")
        store = open_store(ROOT / "feature_repo")
        got = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE),
                                        entity_rows=[{"user_id": u} for u in users]).to_dict()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    expected = Counter(e.user_id for e in events)
    assert dict(zip(got["user_id"], got["profile_version"])) == {u: expected[u] for u in users}


async def test_a_forked_checkpoint_holds_the_state_of_its_instant_while_the_loop_goes_on(tmp_path: Path) -> None:

    from server.log import checkpoint
    from server.worker.durability import Durability
    from server.worker.materialize import Materializer

    def durable() -> tuple[PartitionWorker, Durability]:
        p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
        m = Materializer(p.row, lambda rows: None, lambda rows: None, p.metrics)
        return p, Durability(tmp_path, p, m)

    events, _ = make_events(1200, 40)
    p, d = durable()
    assert d.fork
    d.recover()
    for e in events[:800]:
        p.apply(e, score=False)
        d.log_event(e)
    task = asyncio.create_task(d.checkpoint())
    await asyncio.sleep(0)  # the task ran up to its first await: the child is forked, the snapshot taken
    for e in events[800:]:  # the loop goes on while the child writes
        p.apply(e, score=False)
        d.log_event(e)
    path = await task
    offset, body = checkpoint.read_checkpoint(path)
    assert offset == 800
    snap = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    snapshot.restore(snap, snapshot.loads(body, offset))
    before = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    for e in events[:800]:
        before.apply(e, score=False)
    assert {u: pr.version for u, pr in snap.profiles.items()} == {u: pr.version for u, pr in before.profiles.items()}
    assert sum(pr.version for pr in p.profiles.values()) == 1200  # the parent kept all 1,200
    assert not list(tmp_path.glob("checkpoints/*.tmp"))
    await d.close()
    # a restart: the checkpoint plus the log after it give the whole state
    p2, d2 = durable()
    d2.recover()
    assert {u: pr.version for u, pr in p2.profiles.items()} == {u: pr.version for u, pr in p.profiles.items()}
    d2.log.close()


def test_a_log_redis_that_lost_its_streams_never_hands_out_offsets_a_checkpoint_covers(
        tmp_path: Path, redis_url: str) -> None:
    """``PORTRAIT_LOG_STORE=redis`` and a Redis that lost the log (no persistence, flushed): the checkpoint is
    ahead of the streams. New events must get offsets after it, or the next recovery would skip them."""
    import redis

    prefix = f"test:{uuid.uuid4().hex[:8]}:log"
    env = {"PORTRAIT_LOG_STORE": "redis", "PORTRAIT_LOG_PREFIX": prefix}
    first, users = make_events(600, 20, seed=31)
    srv = ServerProcess(tmp_path / "data", redis_url, **env)
    srv.wait_serving()
    with grpc.insecure_channel(srv.target) as ch:
        pb_grpc.ProfileServiceStub(ch).TrackBatch(batches(first, 600)[0], timeout=30)
    assert srv.terminate() == 0  # a final checkpoint at offset 600
    with redis.Redis.from_url(redis_url) as r:  # the streams are gone, the meta hash too
        gone = list(r.scan_iter(f"{prefix}:*"))
        assert len(gone) > 1
        r.delete(*gone)

    later, more = make_events(300, 10, seed=32)
    srv2 = ServerProcess(tmp_path / "data", redis_url, **env)
    srv2.wait_serving()
    with grpc.insecure_channel(srv2.target) as ch:
        pb_grpc.ProfileServiceStub(ch).TrackBatch(batches(later, 300)[0], timeout=30)
    assert "Redis lost records" in srv2.log()
    srv2.kill()  # no final checkpoint: the 300 events are only in the streams, after the old checkpoint

    srv3 = ServerProcess(tmp_path / "data", redis_url, **env)
    srv3.wait_serving()
    try:
        # one more event per user, made visible: its version is computed from the recovered state (the rows
        # srv2 wrote before the kill would hide a loss)
        last = max(float(e.event_time or 0) for e in first + later)
        extra = [Event(uid("e"), u, EventType.VIEW, last + 60 + i, item_id="i1") for i, u in enumerate(users + more)]
        with grpc.insecure_channel(srv3.target) as ch:
            pb_grpc.ProfileServiceStub(ch).TrackBatch(pb.TrackBatchRequest(
                events=[convert.event_to_proto(e) for e in extra], wait_visible=True), timeout=30)
        got = profiles(srv3.target, users + more)
        assert {u: p.version for u, p in got.items()} == dict(Counter(e.user_id for e in first + later + extra))
    finally:
        assert srv3.terminate() == 0
