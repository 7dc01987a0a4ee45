"""The gRPC API end to end: a real grpc.aio server on loopback, real Redis, real Feast."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from server._gen.portrait.v1 import portrait_pb2 as pb
from tests.conftest import scrape, uid

NOW = time.time()


def ev(user: str, type_: int = pb.EVENT_TYPE_VIEW, t: float | None = None, **kw: Any) -> pb.Event:
    m = pb.Event(event_id=kw.pop("event_id", uid("e")), user_id=user, type=type_, **kw)
    if type_ != pb.EVENT_TYPE_SEARCH and "item_id" not in kw:
        m.item_id = "sku-1"
    m.event_time.FromSeconds(int(NOW if t is None else t))
    return m


def metric(server: Any, name: str, labels: dict[str, str] | None = None) -> float:
    return scrape(server.metrics_port, name, labels)


async def test_track_then_get_profile_reads_back_through_feast(stub: Any) -> None:
    user = uid()
    r = await stub.Track(pb.TrackRequest(event=ev(user, category="shoes", price=20.0), wait_visible=True))
    assert (r.duplicate, r.profile_version) == (False, 1)
    # a probability from the session server's model, which has learnt from every earlier test: River's sigmoid
    # saturates to exactly 0 or 1 beyond |z| = 30, so the open interval depends on test order
    assert 0.0 <= r.purchase_propensity <= 1.0
    r = await stub.Track(pb.TrackRequest(
        event=ev(user, pb.EVENT_TYPE_PURCHASE, price=20.0, quantity=2, category="shoes"), wait_visible=True))
    assert r.profile_version == 2
    p = await stub.GetProfile(pb.GetProfileRequest(user_id=user))
    assert p.user_id == user and p.version == 2
    assert p.features["views_1h"] == 1.0 and p.features["purchases_30d"] == 1.0
    assert p.features["lifetime_spend"] == 40.0
    assert list(p.top_categories) == ["shoes"]
    assert "new" in p.tags
    assert p.updated_at.seconds == int(NOW)


async def test_invalid_event_is_invalid_argument_naming_the_field_and_changes_nothing(stub: Any) -> None:
    user = uid()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Track(pb.TrackRequest(event=ev(user, price=float("nan"))))
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "price" in err.details()
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "price"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetProfile(pb.GetProfileRequest(user_id=user))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m, "event_id", ""), "event_id"),
        (lambda m: setattr(m, "user_id", "x" * 129), "user_id"),
        (lambda m: setattr(m, "type", 0), "type"),
        (lambda m: setattr(m, "type", 42), "type"),
        (lambda m: m.ClearField("event_time"), "event_time"),
        (lambda m: m.event_time.FromSeconds(int(time.time()) + 3600), "event_time"),
        (lambda m: setattr(m, "item_id", ""), "item_id"),
        (lambda m: setattr(m, "price", -1.0), "price"),
        (lambda m: setattr(m, "price", float("inf")), "price"),
        (lambda m: setattr(m, "quantity", -2), "quantity"),
        (lambda m: m.context.update({f"k{i}": "v" for i in range(17)}), "context"),
        (lambda m: m.context.update({"k": "v" * 257}), "context"),
    ],
)
async def test_each_validation_rule_names_its_field(stub: Any, mutate: Any, field: str) -> None:
    m = ev(uid())
    mutate(m)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Track(pb.TrackRequest(event=m))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


async def test_search_needs_query_not_item(stub: Any) -> None:
    user = uid()
    ok = ev(user, pb.EVENT_TYPE_SEARCH, query="red shoes")
    assert (await stub.Track(pb.TrackRequest(event=ok))).profile_version == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Track(pb.TrackRequest(event=ev(user, pb.EVENT_TYPE_SEARCH)))
    assert "query" in info.value.details()


async def test_batch_accepts_valid_lists_rejected_and_counts_duplicates(stub: Any, server: Any) -> None:
    user = uid()
    dup = ev(user)
    events = [dup, ev(user, price=-5.0), ev(user, pb.EVENT_TYPE_ADD_TO_CART), dup, ev(user, type_=99)]
    before = metric(server, "portrait_events_total", {"event_type": "view", "outcome": "duplicate"})
    r = await stub.TrackBatch(pb.TrackBatchRequest(events=events, wait_visible=True))
    assert (r.accepted, r.duplicates) == (2, 1)
    assert [(x.index, x.field) for x in r.rejected] == [(1, "price"), (4, "type")]
    assert r.rejected[0].event_id == events[1].event_id
    p = await stub.GetProfile(pb.GetProfileRequest(user_id=user))
    assert p.version == 2
    assert (p.features["views_30d"], p.features["carts_30d"]) == (1.0, 1.0)
    after = metric(server, "portrait_events_total", {"event_type": "view", "outcome": "duplicate"})
    assert after - before == 1


async def test_resent_event_is_duplicate_and_changes_nothing(stub: Any) -> None:
    user = uid()
    e = ev(user, pb.EVENT_TYPE_PURCHASE, price=10.0)
    first = await stub.Track(pb.TrackRequest(event=e, wait_visible=True))
    again = await stub.Track(pb.TrackRequest(event=e, wait_visible=True))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.profile_version == first.profile_version == 1
    p = await stub.GetProfile(pb.GetProfileRequest(user_id=user))
    assert p.features["lifetime_purchases"] == 1.0 and p.version == 1


async def test_batch_over_10000_events_is_invalid_argument(stub: Any) -> None:
    m = ev(uid())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.TrackBatch(pb.TrackBatchRequest(events=[m] * 10_001))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events" in info.value.details()


async def test_oversized_message_is_resource_exhausted_and_server_survives(stub: Any) -> None:
    user = uid()
    big = ev(user, query="q" * (17 * 1024 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Track(pb.TrackRequest(event=big))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.Track(pb.TrackRequest(event=ev(user)))).profile_version == 1


async def test_stream_summarises_at_the_end(stub: Any) -> None:
    user = uid()
    events = [ev(user, t=NOW - 60 * i) for i in range(50)] + [ev(user, price=-1.0)]

    async def gen() -> Any:
        for m in events:
            yield m

    r = await stub.TrackStream(gen())
    assert (r.accepted, r.duplicates) == (50, 0)
    assert [(x.index, x.field) for x in r.rejected] == [(50, "price")]


async def test_out_of_order_events_land_in_their_windows(stub: Any) -> None:
    user = uid()
    await stub.Track(pb.TrackRequest(event=ev(user, t=NOW)))
    await stub.Track(pb.TrackRequest(event=ev(user, t=NOW - 2 * 3600)))  # late: outside 1h, inside 24h
    r = await stub.Track(pb.TrackRequest(event=ev(user, t=NOW - 40 * 86400), wait_visible=True))  # beyond 30d
    assert r.profile_version == 3
    p = await stub.GetProfile(pb.GetProfileRequest(user_id=user))
    assert p.version == 3  # the late events were written although updated_at did not move
    assert (p.features["views_1h"], p.features["views_24h"], p.features["views_30d"]) == (1.0, 2.0, 2.0)
    assert p.features["lifetime_events"] == 3.0
    assert p.updated_at.seconds == int(NOW)


async def test_update_attributes_is_part_of_the_profile(stub: Any) -> None:
    user = uid()
    r = await stub.UpdateAttributes(pb.UpdateAttributesRequest(
        user_id=user, attributes=pb.UserAttributes(age=31, gender="f", region="cn-sh")))
    assert r.profile_version == 1
    t = await stub.Track(pb.TrackRequest(event=ev(user), wait_visible=True))
    assert t.profile_version == 2
    p = await stub.GetProfile(pb.GetProfileRequest(user_id=user))
    assert (p.attributes.age, p.attributes.gender, p.attributes.region) == (31, "f", "cn-sh")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateAttributes(pb.UpdateAttributesRequest(user_id=user, attributes=pb.UserAttributes(age=-3)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "age" in info.value.details()


async def test_health_and_reflection_on_the_same_port(channel: Any) -> None:
    h = health_pb2_grpc.HealthStub(channel)
    for service in ("", "portrait.v1.ProfileService"):
        r = await h.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> Any:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for resp in refl.ServerReflectionInfo(ask()):
        names = {s.name for s in resp.list_services_response.service}
        assert {"portrait.v1.ProfileService", "grpc.health.v1.Health"} <= names
        break


async def test_metrics_count_events_latency_and_grpc_codes(stub: Any, server: Any) -> None:
    labels = {"event_type": "click", "outcome": "accepted"}
    before = metric(server, "portrait_events_total", labels)
    lat_before = metric(server, "portrait_update_latency_seconds_count")
    fresh_before = metric(server, "portrait_freshness_seconds_count")
    user = uid()
    for _ in range(3):
        await stub.Track(pb.TrackRequest(event=ev(user, pb.EVENT_TYPE_CLICK), wait_visible=True))
    assert metric(server, "portrait_events_total", labels) - before == 3
    assert metric(server, "portrait_update_latency_seconds_count") - lat_before >= 3
    assert metric(server, "portrait_freshness_seconds_count") - fresh_before >= 3
    assert metric(server, "portrait_online_write_rows_total") >= 3
    assert metric(server, "grpc_server_handled_total", {
        "grpc_code": "OK", "grpc_method": "Track", "grpc_service": "portrait.v1.ProfileService",
        "grpc_type": "unary"}) >= 3


async def test_invalid_argument_is_counted_by_code(stub: Any, server: Any) -> None:
    labels = {"grpc_code": "INVALID_ARGUMENT", "grpc_method": "Track",
              "grpc_service": "portrait.v1.ProfileService", "grpc_type": "unary"}
    before = metric(server, "grpc_server_handled_total", labels)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Track(pb.TrackRequest(event=ev(uid(), price=-1.0)))
    assert metric(server, "grpc_server_handled_total", labels) - before == 1
