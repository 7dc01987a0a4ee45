"""Three partition workers on a real local Ray over a real 3-master Redis Cluster (issue #16: exact under failure).

A real ``portrait serve`` with ``PORTRAIT_WORKERS=3`` (three worker actors and the shared trainer actor), the event
log and the trainer's input as Redis Streams and the online rows on a Redis Cluster that the test starts
(redis-server's cluster mode). 30,000 events of 1,500 users go through TrackBatch in 500-event batches; one worker
process is SIGKILLed mid-stream (found with ``portrait workers --json``), later the trainer; the typed client
(``server.api.client``) keeps sending, retrying UNAVAILABLE. Then every user's version, lifetime events and window
counts, read back through GetProfile, equal what was sent; 2,000 events sent again change nothing; the killed
processes were replaced. Then the whole server is SIGKILLed and started again on the same data dir and cluster:
every count is the same; after SIGTERM no process of the run is left, and the trainer's final models equal those of
a trainer that learnt its whole input stream once, without a kill, and every worker's item popularity equals that of
all the events (each worker folds in the others' item statistics); ``portrait replay-log`` then rebuilds every
worker's rows (deleted ones come back) and keeps the numbering of each worker's trainer messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api.client import PortraitClient
from tests.conftest import ROOT, ServerProcess, uid
from tests.integration.cluster.canon import canon
from tests.integration.test_redis_cluster import Cluster, cluster  # noqa: F401 (the module fixture)

USERS, PER_USER, BATCH = 1_500, 20, 500
CLICK_EVERY = 4  # every 4th event of a user is a click, the rest views
TIMEOUT_S = 240.0


SPACING_S = 90 * 60  # between a user's events: 20 span 28.5 h, so 1 h and 24 h labels resolve and models learn


def _events(run: str) -> list[pb.Event]:
    """PER_USER events per user, in rounds (each user's events in time order), SPACING_S apart."""
    t0 = int(time.time()) - PER_USER * SPACING_S
    out = []
    for n in range(PER_USER):
        for u in range(USERS):
            kind = pb.EVENT_TYPE_CLICK if n % CLICK_EVERY == CLICK_EVERY - 1 else pb.EVENT_TYPE_VIEW
            e = pb.Event(event_id=f"{run}-{u}-{n}", user_id=f"{run}-u{u}", type=kind,  # type: ignore[arg-type]
                         item_id=f"sku-{(u + n) % 97}", category=f"c{u % 7}", price=10.0 + u % 13, quantity=1)
            e.event_time.FromSeconds(t0 + SPACING_S * n)
            out.append(e)
    return out


NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health_is(srv: ServerProcess, service: str, status: int) -> None:
    async with grpc.aio.insecure_channel(srv.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + TIMEOUT_S
        while (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status != status:
            assert time.monotonic() < deadline, f"health {service} never became {status}"
            await asyncio.sleep(0.1)


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pids: set[int]) -> set[int]:
    left = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie is dead, waiting for a parent that is gone to be reaped by init
            left.add(p)
    return left


def _workers(srv: ServerProcess) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    p = subprocess.run([sys.executable, "-m", "server", "workers", "--json", "--target", srv.target], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout)["processes"])


async def _send(client: PortraitClient, events: list[pb.Event], wait_visible: bool = False) -> pb.TrackBatchResponse:
    """TrackBatch through the typed client, which tries a call refused with UNAVAILABLE again (a worker
    restarting) for ``retry_unavailable_s``."""
    r = await asyncio.to_thread(client.track_encoded, events, wait_visible, 60.0)
    assert r.rejected_count == 0, r.rejected
    return r


async def _check_profiles(stub: Any, run: str, users: range) -> None:
    """Every user's row, read back through GetProfile, holds exactly the events sent."""
    clicks = [n for n in range(PER_USER) if n % CLICK_EVERY == CLICK_EVERY - 1]
    last_hour = (0, 1) if PER_USER - 1 in clicks else (1, 0)  # (views, clicks): only the last event is that recent
    sem = asyncio.Semaphore(16)

    async def one(u: int) -> None:
        async with sem:
            p = await stub.GetProfile(pb.GetProfileRequest(user_id=f"{run}-u{u}"), timeout=30)
        f = p.features
        got = (p.version, f["lifetime_events"], f["views_30d"], f["clicks_30d"], (f["views_1h"], f["clicks_1h"]))
        assert got == (PER_USER, PER_USER, PER_USER - len(clicks), len(clicks), last_hour), f"user {u}: {got}"

    await asyncio.gather(*(one(u) for u in users))


def _check_trainer(cluster: Cluster, data_dir: Path, prefix: str) -> None:  # noqa: F811
    """The trainer's final checkpoint equals a trainer that learnt its whole input stream once, in order."""
    from server.models.remote import LEARNT
    from server.models.shared import learn_entry, stream_key
    from server.models.trainer import ITEM_STATS, Trainer
    from server.worker.runtime import worker_config
    from tests.conftest import make_settings

    done = pickle.loads((data_dir / "trainer" / "trainer.pkl").read_bytes())
    entries = cluster.client().xrange(stream_key(prefix))
    assert len(entries) == done["entries"] > 0
    ref, learnt = Trainer(worker_config(make_settings(data_dir, cluster.seed_url)).trainer), {}
    for _, f in entries:
        learn_entry(ref, learnt, int(f[b"w"]), int(f[b"s"]), pickle.loads(f[b"m"]))
    assert done["learnt"] == learnt
    assert set(learnt) == {0, 1, 2}
    state = done["state"]
    assert {k: v for k, v in state["versions"].items() if k != ITEM_STATS} == \
        {k: v for k, v in ref.versions.items() if k != ITEM_STATS}
    fresh = Trainer(ref.config)
    version = {"propensity": "propensity", "item_model": "item", "segmenter": "segments", "risk": "risk",
               "next_item": "recommend"}
    learnt_models = [name for name in LEARNT if ref.versions[version[name]] > 0]
    assert {"propensity", "item_model", "segmenter", "risk"} <= set(learnt_models)
    for name in LEARNT:
        assert canon(state[name]) == canon(getattr(ref, name)), name
    for name in learnt_models:  # the comparison sees learning
        assert canon(getattr(fresh, name)) != canon(getattr(ref, name)), name


def _check_item_statistics(cluster: Cluster, data_dir: Path, events: list[pb.Event]) -> None:  # noqa: F811
    """Every worker's item popularity (views and price per item, touches per category), from its final checkpoint,
    equals that of all the events sent, each counted once — not of its own users' third — through the kills."""
    from server.cluster.actors import state_dir
    from server.log import checkpoint
    from server.models.itemstats import CLICKS, VIEWS
    from server.models.trainer import Trainer
    from server.worker import snapshot
    from server.worker.runtime import worker_config
    from tests.conftest import make_settings

    ref = Trainer(worker_config(make_settings(data_dir, cluster.seed_url)).trainer)
    for e in events:
        slot = CLICKS if e.type == pb.EVENT_TYPE_CLICK else VIEWS
        ref.items.add(e.item_id, e.event_time.seconds, slot, e.price)
        ref.categories.add(e.category, e.event_time.seconds, slot)
    t = max(e.event_time.seconds for e in events)
    items, categories = sorted({e.item_id for e in events}), sorted({e.category for e in events})
    for i in range(3):
        found = checkpoint.load_latest(state_dir(data_dir, i) / "checkpoints")
        assert found is not None
        state = snapshot.loads(found[1], found[0]).trainer
        for key, mine, theirs in [*((k, state["items"], ref.items) for k in items),
                                  *((k, state["categories"], ref.categories) for k in categories)]:
            got, want = mine.get(key, t), theirs.get(key, t)
            assert all(abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(got, want, strict=True)), \
                (i, key, got, want)


def _check_replay_log(cluster: Cluster, data_dir: Path, env: dict[str, str], run: str) -> None:  # noqa: F811
    """``portrait replay-log`` on the stopped 3-worker data dir: every worker rebuilt from its newest checkpoint and
    log, rows deleted from the online store written again, each worker's numbering of its trainer messages kept
    and the messages it holds unlearnt (a number given twice would make the trainer skip a new message as learnt);
    ``--from-start`` refused."""
    from server.cluster.actors import state_dir
    from server.log import checkpoint
    from server.models.remote import UNLEARNT, UNLEARNT_FROM
    from server.store.feast import OnlineStore, open_store, set_feast_env
    from server.worker import snapshot

    def numbering() -> list[tuple[int, int]]:
        out = []
        for i in range(3):
            found = checkpoint.load_latest(state_dir(data_dir, i) / "checkpoints")
            assert found is not None
            t = snapshot.loads(found[1], found[0]).trainer
            out.append((int(t[UNLEARNT_FROM]), len(t[UNLEARNT])))
        return out

    def replay_log(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server", "replay-log", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)

    before = numbering()  # (the number of the first message the trainer has not learnt, how many are held)
    assert all(n > 0 for n, _ in before), before
    refused = replay_log("--from-start")
    assert refused.returncode == 2 and "refusing to rebuild from the start" in refused.stderr
    saved = dict(os.environ)
    try:
        set_feast_env(data_dir, cluster.feast_connection, "redis_cluster")
        online = OnlineStore(open_store(ROOT / "feature_repo"))
        lost = [f"{run}-u{u}" for u in range(0, USERS, 50)]
        assert online.delete(lost) == len(lost) and online.read(lost[0]) is None
        out = replay_log()
        assert out.returncode == 0, out.stderr[-3000:]
        rebuilt = [line for line in out.stdout.splitlines() if "rebuilt" in line]
        assert [line.split(":")[0] for line in rebuilt] == ["worker w0", "worker w1", "worker w2"]
        assert sum(int(line.split("rebuilt ")[1].split()[0]) for line in rebuilt) == USERS
        for u in range(0, USERS, 10):
            row = online.read(f"{run}-u{u}")
            assert row is not None and (row["profile_version"], row["lifetime_events"]) == (PER_USER, PER_USER), u
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert numbering() == before


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


async def test_three_workers_stay_exact_when_a_worker_a_trainer_and_the_server_are_killed(
        cluster: Cluster, data_dir: Path) -> None:  # noqa: F811
    prefix = uid("log")
    env = dict(PORTRAIT_WORKERS="3", PORTRAIT_REDIS_CLUSTER="true", PORTRAIT_LOG_STORE="redis",
               PORTRAIT_LOG_PREFIX=prefix, PORTRAIT_PARTITIONS="12", PORTRAIT_CHECKPOINT_INTERVAL_S="5",
               PORTRAIT_LOG_RETENTION_S="-1",  # the trainer's whole input kept: the reference learns it below
               PORTRAIT_ONLINE_WRITER="thread")  # rows written in each worker: 3 fewer processes importing Feast
    srv = ServerProcess(data_dir, cluster.seed_url, **env)
    try:
        srv.wait_serving(timeout_s=TIMEOUT_S)
        before = _workers(srv)
        workers = [p for p in before if p["role"] == "worker"]
        trainers = [p for p in before if p["role"] == "trainer"]
        assert len(workers) == 3 and sorted(len(w["partitions"]) for w in workers) == [4, 4, 4]
        assert len(trainers) == 1 and trainers[0]["pid"] not in {w["pid"] for w in workers}  # one, apart
        run = uid("rw")
        events = _events(run)
        batches = [events[i:i + BATCH] for i in range(0, len(events), BATCH)]
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            client = PortraitClient(srv.target, retry_unavailable_s=TIMEOUT_S)
            killed_worker, killed_trainer = workers[1]["pid"], trainers[0]["pid"]
            for i, b in enumerate(batches):
                if i == len(batches) // 4:
                    os.kill(killed_worker, signal.SIGKILL)
                    await _health_is(srv, "portrait.workers", NOT_SERVING)  # the front end saw it: refused now
                if i == len(batches) // 2:
                    os.kill(killed_trainer, signal.SIGKILL)
                await _send(client, b, wait_visible=i >= len(batches) - USERS // BATCH)
            assert client.retried > 0  # the killed worker's users were refused while it restarted
            await _check_profiles(stub, run, range(USERS))
            again = await _send(client, events[:2_000])
            assert (again.accepted, again.duplicates) == (0, 2_000)
            await _check_profiles(stub, run, range(0, USERS, 7))
            client.close()
        after = _workers(srv)
        pids = {p["pid"] for p in after}
        assert killed_worker not in pids and killed_trainer not in pids
        assert len([p for p in after if p["role"] == "worker"]) == 3
        assert len([p for p in after if p["role"] == "trainer"]) == 1

        # the whole server SIGKILLed: no shutdown code runs. The worker actors (and their trainer and writer
        # children) and the trainer die with it before the new server starts; Ray's dashboard and runtime-env
        # agents may take a minute or two more (they try to report the raylet's death to the GCS, dead too:
        # docs/scale-out.md)
        actors = {p["pid"] for p in after if p["role"] in ("worker", "trainer")}
        state_holders = actors.union(*(_descendants(pid) for pid in actors))
        assert len(state_holders) >= 4  # three workers and the trainer
        srv.kill()
        deadline = time.monotonic() + 60
        while _alive(state_holders) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert not _alive(state_holders), "worker processes of the killed server are left"

        srv = ServerProcess(data_dir, cluster.seed_url, **env)
        srv.wait_serving(timeout_s=TIMEOUT_S)
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            await _check_profiles(stub, run, range(USERS))
            with PortraitClient(srv.target, retry_unavailable_s=TIMEOUT_S) as again_client:
                again = await _send(again_client, events[-2_000:])
            assert (again.accepted, again.duplicates) == (0, 2_000)
        run_pids = _descendants(srv.proc.pid)
        assert srv.terminate(timeout_s=120) == 0
        deadline = time.monotonic() + 60
        while _alive(run_pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert not _alive(run_pids), "processes of the stopped server are left"
        _check_trainer(cluster, data_dir, prefix)
        _check_item_statistics(cluster, data_dir, events)
        _check_replay_log(cluster, data_dir, srv.env, run)
    finally:
        if srv.proc.poll() is None:
            srv.kill()
