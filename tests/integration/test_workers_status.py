"""rpc Workers and `portrait workers` against the session's real server (one process: every role, every
partition), and the model-version gauges beside them (issue #16)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from server._gen.portrait.v1 import portrait_pb2 as pb
from server.metrics import VERSIONED_MODELS
from tests.conftest import ROOT, scrape, uid


def _event(user: str, n: int, etype: int = pb.EVENT_TYPE_VIEW) -> pb.Event:
    e = pb.Event(event_id=f"{user}-{n}", user_id=user, type=etype, item_id=f"i{n % 3}", category="c",  # type: ignore[arg-type]
                 price=5.0, quantity=1)
    e.event_time.FromSeconds(int(time.time()) - 600 + 60 * n)
    return e


async def test_one_process_reports_every_role_and_every_partition_and_moves_with_the_log(
        server: Any, stub: Any) -> None:
    before = await stub.Workers(pb.WorkersRequest())
    assert before.partitions == server.settings.partitions
    assert [p.role for p in before.processes] == ["frontend", "worker", "trainer"]
    assert {p.pid for p in before.processes} == {os.getpid()}  # the session server runs in this process
    worker = before.processes[1]
    assert [s.partition for s in worker.partitions] == list(range(server.settings.partitions))
    assert {s.lag for s in worker.partitions} == {0}
    assert set(worker.model_versions) == set(VERSIONED_MODELS)
    assert before.processes[0].partitions == [] and before.processes[2].partitions == []

    user = uid("workers")
    r = await stub.TrackBatch(pb.TrackBatchRequest(events=[_event(user, n) for n in range(5)]))
    assert r.accepted == 5
    after = await stub.Workers(pb.WorkersRequest())
    applied = {s.applied_offset for s in after.processes[1].partitions}
    assert len(applied) == 1  # one log, one worker: every partition is applied as far as the log
    assert applied.pop() >= worker.partitions[0].applied_offset + 5
    versions = after.processes[1].model_versions
    assert versions["segments"] == worker.model_versions["segments"] + 5  # one user vector per event
    assert versions["risk"] == worker.model_versions["risk"] + 5  # one event vector per event
    assert after.processes[2].model_versions == versions  # the worker scores with the trainer's live models

    async def gauge_caught_up() -> None:  # the gauges refresh every second
        while scrape(server.metrics_port, "portrait_model_version", {"model": "segments"}) < versions["segments"]:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(gauge_caught_up(), timeout=30)
    assert scrape(server.metrics_port, "portrait_model_staleness_seconds", {"model": "segments"}) == 0.0


async def _cli(server: Any, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", "workers", *args, "--target",
                                             f"127.0.0.1:{server.grpc_port}", cwd=ROOT, env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), timeout=120)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_portrait_workers_prints_json_and_a_table(server: Any) -> None:
    rc, out, err = await _cli(server, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["partitions"] == server.settings.partitions
    roles = {p["role"]: p for p in doc["processes"]}
    assert set(roles) == {"frontend", "worker", "trainer"}
    assert roles["worker"]["pid"] == os.getpid() and roles["worker"]["host"]
    assert len(roles["worker"]["partitions"]) == server.settings.partitions
    assert roles["worker"]["partitions"][0]["lag"] == "0"  # int64 is a string in proto3 JSON
    rc, out, err = await _cli(server)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["role", "pid", "host"]
    worker_line = next(line for line in lines if line.startswith("worker"))
    assert str(os.getpid()) in worker_line and f" {server.settings.partitions} " in worker_line
