"""Erasure and pseudonymization end to end: real server, real embedded Redis in the data dir, real Feast.

Each test tries to break a promise of README "Security and privacy": that a pseudonymized server stores
no raw id anywhere; that DeleteUser removes the user from Redis, memory and (after compaction) every
stored byte while other users stay intact; that the erasure survives kill -9; and that an erase racing
with ingest for the same user leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pyarrow.parquet as pq
import pytest

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.domain.pseudonym import Pseudonymizer
from server.store.feast import FEATURE_SERVICE, offline_dir, open_store
from tests.conftest import ROOT, ServerProcess, make_settings, scrape, uid

TIMEOUT = 30.0


def ev(user: str, type_: int = pb.EVENT_TYPE_VIEW, **kw: Any) -> pb.Event:
    m = pb.Event(event_id=uid("e"), user_id=user, type=type_, item_id=kw.pop("item_id", "sku-1"), **kw)
    m.event_time.FromSeconds(int(time.time()))
    return m


async def wait_until(cond: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def files_holding(data_dir: Path, needle: str) -> list[str]:
    """Every file under ``data_dir`` whose raw bytes contain ``needle``."""
    b = needle.encode()
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and b in p.read_bytes())


def offline_rows(data_dir: Path, user: str) -> int:
    """Offline rows of ``user`` (decoded, not raw bytes: parquet may compress)."""
    return sum(pq.read_table(f, columns=["user_id"]).column("user_id").to_pylist().count(user)
               for f in offline_dir(data_dir).glob("*.parquet"))


def redis_has(srv: Any, stored: str) -> bool:
    """Does Feast's Redis hash of ``stored`` exist? (Feast's own key function.)"""
    import redis
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = _redis_key("portrait", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=stored)]), 3)
    with redis.Redis.from_url(srv.embedded.url) as r:
        return bool(r.exists(key))


async def code_of(call: Any, request: Any) -> grpc.StatusCode:
    try:
        await call(request, timeout=TIMEOUT)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("pseudonymized", "log_store"), [(False, "file"), (True, "file"), (False, "redis")],
                         ids=["raw-ids", "pseudonyms", "redis-log"])
async def test_delete_user_forgets_online_in_memory_and_after_compaction_in_every_stored_byte(
        tmp_path: Path, pseudonymized: bool, log_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.app import PortraitServer

    for var in ("PORTRAIT_FEAST_REDIS", "PORTRAIT_FEAST_REDIS_TYPE", "PORTRAIT_DATA_DIR"):  # the server exports
        # them for Feast: restore after
        monkeypatch.setenv(var, "")  # recorded even when unset (a bare delenv of an unset variable is not undone,
        monkeypatch.delenv(var)  # and the session server, started later, took this test's Redis from it)
    data = tmp_path / "data"
    key_file = None
    if pseudonymized:
        key_file = tmp_path / "pseudonym.key"
        key_file.write_text(f"v1:{secrets.token_hex(32)}\n")
        key_file.chmod(0o600)
    ids = Pseudonymizer.load(key_file)
    victim, other = uid("victim"), uid("other")
    stored_victim, stored_other = ids.map(victim), ids.map(other)
    # redis_url=None, feast_redis=None: the server's own embedded Redis, whose files live in the data dir
    settings = make_settings(data, None, feast_redis=None, embedded_redis_port=0,  # type: ignore[arg-type]
                             pseudonym_key_file=key_file, checkpoint_interval_s=3600, log_store=log_store)
    srv = PortraitServer(settings)
    await srv.start()
    if log_store == "redis":  # the log's bytes in Redis' files as written (else a compressed block may hide them)
        import redis

        assert srv.embedded is not None
        with redis.Redis.from_url(srv.embedded.url) as r:
            r.config_set("rdbcompression", "no")
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    stub = pb_grpc.ProfileServiceStub(ch)
    try:
        for user in (victim, other):
            for t in (pb.EVENT_TYPE_VIEW, pb.EVENT_TYPE_ADD_TO_CART, pb.EVENT_TYPE_PURCHASE):
                await stub.Track(pb.TrackRequest(event=ev(user, t, category="shoes", price=30.0, quantity=1),
                                                 wait_visible=True))
            await stub.UpdateAttributes(pb.UpdateAttributesRequest(
                user_id=user, attributes=pb.UserAttributes(age=33, gender="f", region="de-be")))
        assert (await stub.GetProfile(pb.GetProfileRequest(user_id=victim))).user_id == victim  # the caller's id
        await srv.durability.checkpoint()  # a checkpoint that holds the victim
        await wait_until(lambda: offline_rows(data, stored_victim) and offline_rows(data, stored_other),
                         "offline rows of both users")
        other_rows = offline_rows(data, stored_other)
        assert files_holding(data, stored_victim), "the victim is stored somewhere before the erasure"
        if pseudonymized:
            assert files_holding(data, victim) == [] and files_holding(data, other) == []  # no raw id anywhere
            assert redis_has(srv, stored_victim) and not redis_has(srv, victim)

        # 1-2: erase; at once gone from Redis, from Feast reads, from memory
        assert (await stub.DeleteUser(pb.DeleteUserRequest(user_id=victim))).existed
        assert not (await stub.DeleteUser(pb.DeleteUserRequest(user_id=victim))).existed  # idempotent
        assert await code_of(stub.GetProfile, pb.GetProfileRequest(user_id=victim)) == grpc.StatusCode.NOT_FOUND
        assert not redis_has(srv, stored_victim)
        fresh = open_store(ROOT / "feature_repo")
        online = fresh.get_online_features(features=fresh.get_feature_service(FEATURE_SERVICE),
                                           entity_rows=[{"user_id": stored_victim}, {"user_id": stored_other}])
        assert online.to_dict()["profile_version"] == [None, 4]
        core = srv.core
        assert core is not None
        assert stored_victim not in core.worker.profiles
        assert core.worker.labels.pending_for(stored_victim) == 0
        assert core.worker.risk.user_risk(stored_victim, time.time()) == 0.0

        # 3: suppression
        r = await stub.Track(pb.TrackRequest(event=ev(victim), wait_visible=True))
        assert r.suppressed and r.profile_version == 0
        b = await stub.TrackBatch(pb.TrackBatchRequest(events=[ev(victim), ev(other)], wait_visible=True))
        assert (b.accepted, b.suppressed, b.duplicates) == (1, 1, 0)
        assert scrape(srv.metrics_port, "portrait_events_total",
                      {"event_type": "view", "outcome": "suppressed"}) == 2.0
        assert await code_of(stub.UpdateAttributes, pb.UpdateAttributesRequest(user_id=victim)) == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert await code_of(stub.GetProfile, pb.GetProfileRequest(user_id=victim)) == grpc.StatusCode.NOT_FOUND

        # 4: compaction rewrites every stored file holding the victim
        c = await stub.Compact(pb.CompactRequest(), timeout=120)
        assert c.erased_users == 1 and c.offline_files >= 1 and c.log_segments >= 1 and c.checkpoints >= 1
        assert files_holding(data, stored_victim) == []
        assert files_holding(data, victim) == []
        assert offline_rows(data, stored_victim) == 0
        assert files_holding(data, stored_other), "other users' data is still there"
        assert offline_rows(data, stored_other) >= other_rows
        entity = pd.DataFrame({"user_id": [stored_other, stored_victim],
                               "event_timestamp": [pd.Timestamp.now(tz="UTC")] * 2})
        hist = fresh.get_historical_features(entity_df=entity, features=fresh.get_feature_service(FEATURE_SERVICE))
        got = hist.to_df().set_index("user_id")
        assert got.loc[stored_other, "profile_version"] >= 4 and pd.isna(got.loc[stored_victim, "profile_version"])
        assert (await stub.Compact(pb.CompactRequest(), timeout=120)).erased_users == 0  # nothing left to do
    finally:
        await ch.close()
        await srv.stop()

    # a restart from the compacted files: the victim stays erased and suppressed, the other user intact
    srv = PortraitServer(settings)
    await srv.start()
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    stub = pb_grpc.ProfileServiceStub(ch)
    try:
        assert (await stub.GetProfile(pb.GetProfileRequest(user_id=other))).version == 5
        assert (await stub.Track(pb.TrackRequest(event=ev(victim)))).suppressed
        assert srv.core is not None and stored_victim not in srv.core.worker.profiles
        # lifting the suppression: a new, empty profile from the next event on
        assert (await stub.UnsuppressUser(pb.UnsuppressUserRequest(user_id=victim))).was_suppressed
        r = await stub.Track(pb.TrackRequest(event=ev(victim), wait_visible=True))
        assert not r.suppressed and r.profile_version == 1
        assert (await stub.GetProfile(pb.GetProfileRequest(user_id=victim))).features["views_30d"] == 1.0
    finally:
        await ch.close()
        await srv.stop()


def test_an_acknowledged_erasure_survives_kill_9(tmp_path: Path, redis_url: str) -> None:
    victim, other = uid("victim"), uid("other")
    srv = ServerProcess(tmp_path / "data", redis_url)
    try:
        srv.wait_serving()
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            for user in (victim, other):
                stub.TrackBatch(pb.TrackBatchRequest(events=[ev(user) for _ in range(5)], wait_visible=True),
                                timeout=TIMEOUT)
            assert stub.DeleteUser(pb.DeleteUserRequest(user_id=victim), timeout=TIMEOUT).existed
    finally:
        srv.kill()  # no shutdown code, no final checkpoint: only the log holds the erasure
    srv = ServerProcess(tmp_path / "data", redis_url)
    try:
        srv.wait_serving()
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetProfile(pb.GetProfileRequest(user_id=victim), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert stub.Track(pb.TrackRequest(event=ev(victim)), timeout=TIMEOUT).suppressed
            assert stub.GetProfile(pb.GetProfileRequest(user_id=other), timeout=TIMEOUT).version == 5
            assert _await_gauge(srv)
    finally:
        assert srv.terminate() == 0


def _await_gauge(srv: ServerProcess) -> bool:
    """The gauges refresh every second: poll until the suppressed-users gauge shows the erasure."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if srv.metric("portrait_suppressed_users") == 1.0:
            return True
        time.sleep(0.1)
    return False


async def test_an_erase_racing_with_ingest_for_the_same_user_leaves_nothing(server: Any, stub: Any) -> None:
    victim = uid("victim")
    await stub.Track(pb.TrackRequest(event=ev(victim), wait_visible=True))
    started = asyncio.Event()

    async def ingest() -> list[Any]:
        out = []
        for i in range(60):
            if i == 10:
                started.set()
            if i % 3:
                out.append(await stub.Track(pb.TrackRequest(event=ev(victim), wait_visible=i % 2 == 0)))
            else:
                out.append(await stub.TrackBatch(pb.TrackBatchRequest(events=[ev(victim) for _ in range(600)])))
        return out

    async def erase() -> bool:
        await started.wait()
        return bool((await stub.DeleteUser(pb.DeleteUserRequest(user_id=victim))).existed)

    results, existed = await asyncio.gather(ingest(), erase())
    assert existed
    accepted_after = [r for r in results if isinstance(r, pb.TrackResponse) and not r.suppressed]
    suppressed = [r for r in results if (r.suppressed if isinstance(r, pb.TrackResponse) else r.suppressed > 0)]
    assert accepted_after and suppressed  # the race really happened: some calls before, some after
    assert await code_of(stub.GetProfile, pb.GetProfileRequest(user_id=victim)) == grpc.StatusCode.NOT_FOUND
    core = server.core
    assert victim not in core.worker.profiles and victim not in core.materializer.snapshot()[0]
    assert all(r["user_id"] != victim for r in core.materializer.snapshot()[1])
    assert core.reader.read(victim) is None  # DeleteUser returned after the delete, ordered after any write
