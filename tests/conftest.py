"""Shared fixtures: a real Redis (PORTRAIT_REDIS_URL if set, else an embedded redis-server),
and a real Portrait server on loopback (gRPC + metrics + Feast), started once per session."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.config import Settings
from server.store.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


def uid(prefix: str = "u") -> str:
    """A user/event id unique to this test run (tests share one Redis)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the one in PORTRAIT_REDIS_URL, else an embedded redis-server on a free port."""
    url = os.environ.get("PORTRAIT_REDIS_URL")
    if url:
        yield url
        return
    r = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=0)
    r.start()
    yield r.url
    r.stop()


#: Test servers move the watermark by event time only unless a test says otherwise: most tests compare served
#: rows with an in-process replay of the same events (as of each user's last event, days in the past), and
#: the wall clock would (rightly) expire their windows. tests/integration/test_timers_server.py tests it.
IDLE_WATERMARK_S = 1e9


def make_settings(data_dir: Path, redis_url: str, **kw: object) -> Settings:
    """Settings for a test server: free ports, its own data dir, the shared Redis; the explorer off (its
    default port may be taken; tests/integration/test_ui.py turns it on, on a free port)."""
    base: dict[str, object] = dict(grpc_port=0, metrics_port=0, ui_port=0, data_dir=data_dir, redis_url=redis_url,
                                   feature_repo=ROOT / "feature_repo", offline_roll_s=0.2,
                                   watermark_idle_s=IDLE_WATERMARK_S)
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


@pytest.fixture
def own_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test that starts its own in-process server: a server exports PORTRAIT_DATA_DIR and
    PORTRAIT_FEAST_REDIS[_TYPE] for Feast (process-wide); put back the session server's values afterwards, so
    that later tests' Feast stores do not read a deleted data dir."""
    for var in ("PORTRAIT_FEAST_REDIS", "PORTRAIT_FEAST_REDIS_TYPE", "PORTRAIT_DATA_DIR"):
        monkeypatch.setenv(var, "")  # recorded even when unset (a bare delenv of an unset variable is not undone)
        monkeypatch.delenv(var)


@pytest.fixture(scope="session")
async def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[object]:
    """One real Portrait server for the session."""
    from server.app import PortraitServer

    srv = PortraitServer(make_settings(tmp_path_factory.mktemp("data"), redis_url))
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture(scope="session")
async def channel(server: object) -> AsyncIterator[grpc.aio.Channel]:
    """An aio channel to the session server."""
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")  # type: ignore[attr-defined]
    yield ch
    await ch.close()


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> object:
    """A ProfileService stub on the session server."""
    from server._gen.portrait.v1 import portrait_pb2_grpc

    return portrait_pb2_grpc.ProfileServiceStub(channel)


def scrape(metrics_port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample from a server's /metrics (0.0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        text = r.read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def wait_serving(target: str, proc: object, timeout_s: float = 120.0, log: object = None) -> None:
    """Await gRPC health SERVING from a child process (fail early if it exits)."""
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # type: ignore[attr-defined]
                raise AssertionError(f"server exited with {proc.returncode}: {log() if log else ''}")  # type: ignore[attr-defined, operator]
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1, wait_for_ready=True)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
    raise AssertionError("server did not become SERVING")


def free_port() -> int:
    """A TCP port free on loopback now (the OS's pick)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m server serve` as a real child process (for crash, outage and fuzz tests)."""

    def __init__(self, data_dir: Path, redis_url: str | None, *, nofile: int | None = None, **env: str) -> None:
        """``nofile``: the child's open-file limit (soft and hard), e.g. to exhaust descriptors in a test."""
        import resource
        import subprocess
        import sys

        self.data_dir = data_dir
        self.port, self.metrics_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
        self.env.update(PORTRAIT_GRPC_PORT=str(self.port), PORTRAIT_METRICS_PORT=str(self.metrics_port),
                        PORTRAIT_UI_PORT="0", PORTRAIT_DATA_DIR=str(data_dir), PORTRAIT_OFFLINE_ROLL_S="0.5",
                        PORTRAIT_EMBEDDED_REDIS_PORT="0", PORTRAIT_WATERMARK_IDLE_S=str(IDLE_WATERMARK_S))
        if redis_url:
            self.env["PORTRAIT_REDIS_URL"] = redis_url
        self.env.update(env)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"serve-{len(list(data_dir.glob('serve-*.log')))}.log"
        self._log = self.log_path.open("wb")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=limit if nofile is not None else None)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        wait_serving(self.target, self.proc, timeout_s, self.log)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return scrape(self.metrics_port, name, labels)


def cluster_info(raw: Any) -> dict[str, str]:
    """CLUSTER INFO as a dict (redis-py parses it already, or hands back the text)."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def wait_redis(cond: Any, what: str, timeout_s: float = 30.0) -> None:
    """Poll ``cond`` until true, counting Redis errors (a node still starting) as not yet."""
    import redis

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cond():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
