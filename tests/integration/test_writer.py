"""The online writer: Feast's provider batch write (same bytes as Feast's own path), in a child process."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pandas as pd
import pytest
import redis

from bench.poller import redis_key  # Feast's Redis key of a user (checked against Feast's own in bench)
from server.domain.events import Event, EventType
from server.metrics import Metrics
from server.store.feast import FEATURE_VIEW, OnlineStore, open_store
from server.store.writer import FeastRowWriter, WriteError, WriterProcess
from server.worker.partition import PartitionWorker, WorkerConfig
from tests.conftest import ROOT, uid

pytestmark = pytest.mark.usefixtures("server")  # sets the Feast environment (registry, Redis) of the session


def _rows(n: int, *, tag: str = "w") -> list[dict[str, Any]]:
    """Rows of ``n`` users with varied values: counts, money, tags, categories, attributes, a suspicious tag."""
    p = PartitionWorker(WorkerConfig(), Metrics())
    t = 1_700_000_000.0
    users = [uid(tag) for _ in range(n)]
    for i, u in enumerate(users):
        for k in range(1 + i % 4):
            etype = (EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.SEARCH)[k]
            p.apply(Event(uid("e"), u, etype, t + 60 * k + i, item_id=f"i{i % 7}", category=f"c{i % 3}",
                          price=9.5 + i, quantity=1, query="shoes" if etype == EventType.SEARCH else ""))
        if i % 2:
            p.update_attributes(u, 30 + i, "f", "eu")
    return [p.row(u) for u in users]


def _hashes(r: redis.Redis, users: list[str]) -> dict[str, dict[bytes, bytes]]:
    return {u: r.hgetall(redis_key(u)) for u in users}  # type: ignore[misc]


def test_provider_write_stores_the_same_bytes_as_feasts_own_dataframe_path(server: Any) -> None:
    store = open_store(ROOT / "feature_repo")
    r = redis.Redis.from_url(server.settings.redis_url)
    rows = _rows(12)
    users = [row["user_id"] for row in rows]
    # Feast's public path: a DataFrame through write_to_online_store
    df = pd.DataFrame.from_records(rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp_us"], unit="us", utc=True)
    df["created_timestamp"] = pd.Timestamp.now(tz="UTC")
    store.write_to_online_store(FEATURE_VIEW, df.drop(columns=["event_timestamp_us"]))
    by_feast = _hashes(r, users)
    r.delete(*[redis_key(u) for u in users])
    FeastRowWriter(store).write(rows)
    ours = _hashes(r, users)
    assert all(len(h) > 50 for h in by_feast.values())  # every feature + the timestamp
    assert ours == by_feast
    row = OnlineStore(store).read(users[1])
    assert row is not None and row["tags"] == rows[1]["tags"] and row["age"] == rows[1]["age"]


def test_repeated_values_are_shared_but_every_row_keeps_its_own() -> None:
    store = open_store(ROOT / "feature_repo")
    w = FeastRowWriter(store)
    rows = _rows(6)
    values = [w._values(row) for row in rows]
    for row, v in zip(rows, values):
        assert v["profile_version"].int64_val == row["profile_version"]
        assert v["spend_30d"].double_val == row["spend_30d"]
        assert list(v["top_categories"].string_list_val.val) == row["top_categories"]
    assert values[0]["views_1h"] is values[4]["views_1h"]  # both 1.0: one shared Value


async def test_writer_process_writes_rows_another_store_reads() -> None:
    w = WriterProcess(ROOT / "feature_repo", timeout_s=30)
    await w.spawn()
    await w.open()
    try:
        rows = _rows(5)
        await w.write(rows)  # returns once written
        reader = OnlineStore(open_store(ROOT / "feature_repo"))
        for row in rows:
            got = reader.read(row["user_id"])
            assert got is not None and got["profile_version"] == row["profile_version"]
        assert w.restarts == 0
    finally:
        await w.close()
    assert w._proc is not None and w._proc.returncode == 0  # it exits at end of input


async def test_a_killed_writer_fails_that_write_and_is_restarted_for_the_next() -> None:
    w = WriterProcess(ROOT / "feature_repo", timeout_s=30)
    await w.open()
    try:
        await w.write(_rows(1))
        assert w.pid is not None
        os.kill(w.pid, signal.SIGKILL)
        rows = _rows(3)
        with pytest.raises(WriteError, match="exited"):
            await w.write(rows)
        await w.write(rows)  # the materializer's retry
        assert w.restarts == 1
        reader = OnlineStore(open_store(ROOT / "feature_repo"))
        assert all(reader.read(row["user_id"]) is not None for row in rows)
    finally:
        await w.close()


async def test_a_hung_writer_times_out_and_is_replaced() -> None:
    w = WriterProcess(ROOT / "feature_repo", timeout_s=1.0)
    await w.open()
    try:
        await w.write(_rows(1))
        pid = w.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(WriteError, match="did not answer within 1 s"):
            await w.write(_rows(1))
        w.timeout_s = 30
        await w.write(_rows(2))
        assert w.pid != pid and w.restarts == 1
    finally:
        await w.close()


async def test_redis_errors_come_back_and_the_writer_stays_up() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = WriterProcess(ROOT / "feature_repo", env={"PORTRAIT_FEAST_REDIS": f"127.0.0.1:{port},db=0",
                                                         "PORTRAIT_FEAST_REDIS_TYPE": "redis"}, timeout_s=30)
    await w.open()
    try:
        for _ in range(2):
            with pytest.raises(WriteError, match="ConnectionError"):
                await w.write(_rows(1))
        assert w.restarts == 0  # one child answered both
    finally:
        await w.close()


async def test_a_broken_repo_is_reported_at_the_first_write(tmp_path: Any) -> None:
    w = WriterProcess(tmp_path, timeout_s=30)  # no feature_store.yaml here
    await w.open()
    with pytest.raises(WriteError, match="could not start"):
        await w.write(_rows(1))
    await w.close()
