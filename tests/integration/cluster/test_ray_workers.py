"""Three partition workers on a real local Ray over a real 3-master Redis Cluster (issue #16: exact under failure).

A real ``portrait serve`` with ``PORTRAIT_WORKERS=3`` (each worker a Ray actor with its own trainer process),
the event log as Redis Streams and the online rows on a Redis Cluster that the test starts (redis-server's
cluster mode). 30,000 events of 1,500 users go through TrackBatch in 500-event batches; one worker process is
SIGKILLed mid-stream (found with ``portrait workers --json``), later one trainer process; the client keeps
sending, retrying UNAVAILABLE. Then every user's version, lifetime events and window counts, read back through
GetProfile, equal what was sent; 2,000 events sent again change nothing; the killed processes were replaced.
Then the whole server is SIGKILLed and started again on the same data dir and cluster: every count is the
same, and after SIGTERM no process of the run is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from tests.conftest import ROOT, ServerProcess, uid
from tests.integration.test_redis_cluster import Cluster, cluster  # noqa: F401 (the module fixture)

USERS, PER_USER, BATCH = 1_500, 20, 500
CLICK_EVERY = 4  # every 4th event of a user is a click, the rest views
TIMEOUT_S = 240.0


def _events(run: str) -> list[pb.Event]:
    """PER_USER events per user, in rounds (each user's events in time order), two minutes apart."""
    t0 = int(time.time()) - 2 * 3600
    out = []
    for n in range(PER_USER):
        for u in range(USERS):
            kind = pb.EVENT_TYPE_CLICK if n % CLICK_EVERY == CLICK_EVERY - 1 else pb.EVENT_TYPE_VIEW
            e = pb.Event(event_id=f"{run}-{u}-{n}", user_id=f"{run}-u{u}", type=kind,  # type: ignore[arg-type]
                         item_id=f"sku-{(u + n) % 97}", category=f"c{u % 7}", price=10.0 + u % 13, quantity=1)
            e.event_time.FromSeconds(t0 + 120 * n)
            out.append(e)
    return out


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


class Sender:
    """TrackBatch with the client's retry of UNAVAILABLE (the worker restarting), counting what it saw."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.unavailable = 0

    async def send(self, events: list[pb.Event], wait_visible: bool = False) -> pb.TrackBatchResponse:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                r = await self.stub.TrackBatch(pb.TrackBatchRequest(events=events, wait_visible=wait_visible),
                                               timeout=60)
                assert r.rejected_count == 0, r.rejected
                return r
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                self.unavailable += 1
                await asyncio.sleep(0.5)


async def _check_profiles(stub: Any, run: str, users: range) -> None:
    """Every user's row, read back through GetProfile, holds exactly the events sent."""
    clicks = len([n for n in range(PER_USER) if n % CLICK_EVERY == CLICK_EVERY - 1])
    sem = asyncio.Semaphore(16)

    async def one(u: int) -> None:
        async with sem:
            p = await stub.GetProfile(pb.GetProfileRequest(user_id=f"{run}-u{u}"), timeout=30)
        got = (p.version, p.features["lifetime_events"], p.features["views_24h"], p.features["clicks_24h"])
        assert got == (PER_USER, PER_USER, PER_USER - clicks, clicks), f"user {u}: {got}"

    await asyncio.gather(*(one(u) for u in users))


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


async def test_three_workers_stay_exact_when_a_worker_a_trainer_and_the_server_are_killed(
        cluster: Cluster, data_dir: Path) -> None:  # noqa: F811
    env = dict(PORTRAIT_WORKERS="3", PORTRAIT_REDIS_CLUSTER="true", PORTRAIT_LOG_STORE="redis",
               PORTRAIT_LOG_PREFIX=uid("log"), PORTRAIT_TRAINER="process", PORTRAIT_PARTITIONS="12",
               PORTRAIT_CHECKPOINT_INTERVAL_S="5")
    srv = ServerProcess(data_dir, cluster.seed_url, **env)
    try:
        srv.wait_serving(timeout_s=TIMEOUT_S)
        before = _workers(srv)
        workers = [p for p in before if p["role"] == "worker"]
        trainers = [p for p in before if p["role"] == "trainer"]
        assert len(workers) == 3 and sorted(len(w["partitions"]) for w in workers) == [4, 4, 4]
        assert {t["pid"] for t in trainers}.isdisjoint({w["pid"] for w in workers})  # trainer processes apart
        run = uid("rw")
        events = _events(run)
        batches = [events[i:i + BATCH] for i in range(0, len(events), BATCH)]
        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            sender = Sender(stub)
            killed_worker, killed_trainer = workers[1]["pid"], trainers[2]["pid"]
            for i, b in enumerate(batches):
                if i == len(batches) // 4:
                    os.kill(killed_worker, signal.SIGKILL)
                if i == len(batches) // 2:
                    os.kill(killed_trainer, signal.SIGKILL)
                await sender.send(b, wait_visible=i >= len(batches) - USERS // BATCH)
            assert sender.unavailable > 0  # the killed worker's users were refused while it restarted
            await _check_profiles(stub, run, range(USERS))
            again = await sender.send(events[:2_000])
            assert (again.accepted, again.duplicates) == (0, 2_000)
            await _check_profiles(stub, run, range(0, USERS, 7))
        after = _workers(srv)
        pids = {p["pid"] for p in after}
        assert killed_worker not in pids and killed_trainer not in pids
        assert len([p for p in after if p["role"] == "worker"]) == 3

        # the whole server SIGKILLed: no shutdown code runs. The worker actors (and their trainer and writer
        # children) die with it before the new server starts; Ray's dashboard and runtime-env agents may take a
        # minute or two more (they try to report the raylet's death to the GCS, dead too: docs/scale-out.md)
        actors = {p["pid"] for p in after if p["role"] in ("worker", "trainer")}
        state_holders = actors.union(*(_descendants(pid) for pid in actors))
        assert len(state_holders) >= 9  # three workers, their trainer and writer processes
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
            again = await Sender(stub).send(events[-2_000:])
            assert (again.accepted, again.duplicates) == (0, 2_000)
        run_pids = _descendants(srv.proc.pid)
        assert srv.terminate(timeout_s=120) == 0
        deadline = time.monotonic() + 60
        while _alive(run_pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert not _alive(run_pids), "processes of the stopped server are left"
    finally:
        if srv.proc.poll() is None:
            srv.kill()
