"""Shared fixtures: a real Redis (PORTRAIT_REDIS_URL if set, else an embedded redis-server),
and a real Portrait server on loopback (gRPC + metrics + Feast), started once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from server.config import Settings
from server.embedded_redis import EmbeddedRedis

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


def make_settings(data_dir: Path, redis_url: str, **kw: object) -> Settings:
    """Settings for a test server: free ports, its own data dir, the shared Redis."""
    base: dict[str, object] = dict(grpc_port=0, metrics_port=0, data_dir=data_dir, redis_url=redis_url,
                                   feature_repo=ROOT / "feature_repo", offline_roll_s=0.2)
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


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
