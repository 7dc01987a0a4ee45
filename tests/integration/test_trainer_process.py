"""PORTRAIT_TRAINER=process against a real server: the shared models learn in a child process of their own; a
trainer killed with SIGKILL mid-stream is replaced and nothing it had not published is lost; SIGKILL of the whole
server and a restart give the same profiles and the same model versions as an uncrashed in-process run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.metrics import VERSIONED_MODELS
from tests.conftest import ServerProcess
from tests.integration.test_durability import batches, make_events, profiles, reference, wait_drained

SETTINGS = {"PORTRAIT_TRAINER": "process", "PORTRAIT_MODEL_PUBLISH_S": "0.1", "PORTRAIT_CHECKPOINT_INTERVAL_S": "1"}


def processes(target: str) -> dict[str, pb.ProcessStatus]:
    with grpc.insecure_channel(target) as ch:
        got = pb_grpc.ProfileServiceStub(ch).Workers(pb.WorkersRequest(), timeout=10)
    return {p.role: p for p in got.processes}


def wait_models(srv: ServerProcess, expected: dict[str, int], timeout_s: float = 120.0) -> dict[str, float]:
    """Await the condition 'the versions the server scores with are the expected ones, none stale'."""
    deadline = time.monotonic() + timeout_s
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        got = {m: srv.metric("portrait_model_version", {"model": m}) for m in VERSIONED_MODELS}
        stale = max(srv.metric("portrait_model_staleness_seconds", {"model": m}) for m in VERSIONED_MODELS)
        if got == {m: float(v) for m, v in expected.items()} and stale == 0.0:
            return got
        time.sleep(0.2)
    raise AssertionError(f"model versions {got} never reached {expected}")


def test_a_killed_trainer_is_replaced_and_a_killed_server_recovers_the_same_models(
        tmp_path: Path, redis_url: str) -> None:
    events, users = make_events(12_000, 300, seed=11)
    reqs = batches(events)
    srv = ServerProcess(tmp_path / "data", redis_url, **SETTINGS)
    srv.wait_serving()
    procs = processes(srv.target)
    first = procs["trainer"].pid
    assert first not in (procs["worker"].pid, procs["frontend"].pid) and first > 0
    sent = 0
    with grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        for i, r in enumerate(reqs):
            assert stub.TrackBatch(r, timeout=60).accepted == len(r.events)
            sent += len(r.events)
            if i == len(reqs) // 2:
                os.kill(first, signal.SIGKILL)  # the trainer, mid-stream: the client notices nothing
    assert sent == len(events)
    ref = reference(events)
    expected = dict(ref.trainer.versions)
    assert expected["propensity"] > 0 and expected["segments"] == len(events)
    wait_models(srv, expected)
    replaced = processes(srv.target)["trainer"].pid
    assert replaced not in (first, srv.proc.pid)
    assert "trainer process exited" in srv.log()

    # the whole server, SIGKILLed after the last checkpoint: checkpoint + replay give the same models and profiles
    wait_drained(srv)
    srv.kill()
    srv2 = ServerProcess(tmp_path / "data", redis_url, **SETTINGS)
    srv2.wait_serving()
    try:
        wait_models(srv2, expected)
        wait_drained(srv2)
        got = profiles(srv2.target, users)
        for u in users:
            row = ref.row(u)
            assert got[u].version == row["profile_version"]
            for f in ("views_30d", "purchases_30d", "lifetime_events", "lifetime_spend", "sessions_7d"):
                assert got[u].features[f] == row[f], (u, f)
        with grpc.insecure_channel(srv2.target) as ch:  # a resend changes nothing, the models included
            again = [pb_grpc.ProfileServiceStub(ch).TrackBatch(r, timeout=60) for r in reqs[:4]]
        assert sum(r.accepted for r in again) == 0
        wait_models(srv2, expected)
    finally:
        trainer = processes(srv2.target)["trainer"].pid
        assert srv2.terminate() == 0
    assert not Path(f"/proc/{trainer}").exists()  # stopped and reaped with the server
