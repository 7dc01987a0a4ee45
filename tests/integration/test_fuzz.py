"""Fuzz the real server with hypothesis-generated events: it never crashes; invalid events get
INVALID_ARGUMENT naming a field and change nothing; valid ones are stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess

FIELDS = {"event_id", "user_id", "type", "event_time", "item_id", "category", "price", "quantity", "session_id",
          "query", "context"}
TEXT = st.characters(blacklist_categories=("Cs",))  # protobuf strings must be valid UTF-8
BIG_MAP = {f"k{i}": "v" * 8 for i in range(10_000)}


def strings(max_huge: int = 3000) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.text(TEXT, min_size=1, max_size=12), st.text(TEXT, min_size=120, max_size=140),
                     st.text(TEXT, min_size=max_huge - 10, max_size=max_huge))


@st.composite
def events(draw: st.DrawFn) -> pb.Event:
    m = pb.Event(
        event_id=draw(strings()), user_id=draw(strings()), item_id=draw(strings()), category=draw(strings()),
        session_id=draw(strings()), query=draw(strings()),
        type=draw(st.one_of(st.integers(0, 7), st.integers(-(2**31), 2**31 - 1))),  # type: ignore[arg-type]
        price=draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1e6))),
        quantity=draw(st.integers(-(2**31), 2**31 - 1)),
    )
    if draw(st.booleans()):  # unique-ish ids so valid events are not just duplicates
        m.event_id = f"fz-{time.monotonic_ns()}-{draw(st.integers(0, 10**6))}"
        m.user_id = f"fz-user-{draw(st.integers(0, 50))}"
    when = draw(st.sampled_from(["unset", "now", "epoch0", "far_future", "past", "negative", "slightly_future"]))
    now = int(time.time())
    secs = {"now": now, "epoch0": 0, "far_future": 253402300799, "past": now - 86400 * 400, "negative": -5,
            "slightly_future": now + 200}.get(when)
    if secs is not None:
        m.event_time.seconds = secs
    ctx = draw(st.one_of(st.dictionaries(st.text(TEXT, max_size=20), st.text(TEXT, max_size=300), max_size=20),
                         st.just(BIG_MAP)))
    m.context.update(ctx)
    return m


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tmp_path_factory.mktemp("fuzz")), redis_url)
    srv.wait_serving()
    yield srv
    assert srv.terminate() == 0


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(m=events())
def test_fuzzed_events_never_crash_the_server(fuzz_server: ServerProcess, m: pb.Event) -> None:
    with grpc.insecure_channel(fuzz_server.target) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        try:
            r = stub.Track(pb.TrackRequest(event=m, wait_visible=True), timeout=30)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
            named = {f for f in FIELDS if f in err.details().split()[0] or err.details().startswith(f)}
            assert named, err.details()
        else:
            assert r.duplicate or r.profile_version >= 1
            p = stub.GetProfile(pb.GetProfileRequest(user_id=m.user_id), timeout=30)
            assert p.version >= r.profile_version  # stored and visible
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert fuzz_server.proc.poll() is None
