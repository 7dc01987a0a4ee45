"""Feast for real: definitions, Redis online store, append-only parquet offline store, point-in-time reads."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from server.domain.events import Event, EventType
from server.domain.profile import FEATURE_NAMES
from server.metrics import Metrics
from server.store.feast import FEATURE_SERVICE, OfflineLog, OnlineStore, offline_dir, open_store
from server.worker.partition import PartitionWorker, WorkerConfig
from tests.conftest import ROOT, uid
from tests.integration.test_servicer import ev

pytestmark = pytest.mark.usefixtures("server")


def _pipeline() -> PartitionWorker:
    return PartitionWorker(WorkerConfig(), Metrics())


def test_feature_view_schema_matches_the_profile() -> None:
    store = open_store(ROOT / "feature_repo")
    fv = store.get_feature_view("user_profile")
    names = {f.name for f in fv.features}
    assert set(FEATURE_NAMES) <= names
    assert {"purchase_propensity", "segment", "tags", "top_categories", "profile_version", "age", "gender",
            "region", "updated_at_ts"} <= names
    assert [p.name for p in store.get_feature_service(FEATURE_SERVICE).feature_view_projections] == ["user_profile"]
    assert {e.name for e in store.list_entities()} == {"user"}


def test_feast_cli_applies_the_repo(tmp_path: Path) -> None:
    env = dict(os.environ, PORTRAIT_DATA_DIR=str(tmp_path))
    (tmp_path / "offline" / "user_profile").mkdir(parents=True)
    out = subprocess.run([str(Path(sys.executable).parent / "feast"), "apply"], cwd=ROOT / "feature_repo",
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "registry.db").exists()
    assert "user_profile" in out.stdout


def test_feast_redis_writer_skips_rows_that_are_not_newer_and_pipeline_rows_always_are() -> None:
    store = OnlineStore(open_store(ROOT / "feature_repo"))
    p = _pipeline()
    user = uid()
    t = 1_700_000_000.0
    p.apply(Event(uid("e"), user, EventType.VIEW, t, item_id="a"))
    first = p.row(user)
    store.write([first])
    # Feast's own behaviour: same timestamp, newer content -> silently skipped.
    stale = dict(first, profile_version=99)
    store.write([stale])
    assert store.read(user)["profile_version"] == 1  # type: ignore[index]
    # A late event leaves updated_at unchanged; the pipeline bumps the row timestamp by 1 us.
    p.apply(Event(uid("e"), user, EventType.VIEW, t - 7200, item_id="b"))
    second = p.row(user)
    assert second["event_timestamp_us"] == first["event_timestamp_us"] + 1
    assert second["updated_at_ts"] == first["updated_at_ts"]
    store.write([second])
    got = store.read(user)
    assert got is not None and got["profile_version"] == 2 and got["views_24h"] == 2.0


def test_row_timestamps_strictly_increase_per_user() -> None:
    p = _pipeline()
    user = uid()
    last = 0
    for i, dt in enumerate([0, 0, -5, 10, 10, -3600, 20]):
        p.apply(Event(uid("e"), user, EventType.CLICK, 1_700_000_000.0 + dt, item_id=str(i)))
        ts = p.row(user)["event_timestamp_us"]
        assert ts > last
        last = ts


def test_historical_features_are_point_in_time_correct(server: Any) -> None:
    store = open_store(ROOT / "feature_repo")
    log = OfflineLog(server.settings.data_dir)
    p = _pipeline()
    user, other = uid(), uid()
    t0 = 1_600_000_000.0
    for k in range(3):  # three versions at t0, t0+100, t0+200, each in its own file
        p.apply(Event(uid("e"), user, EventType.VIEW, t0 + 100 * k, item_id="a"))
        log.append([p.row(user)])
    (offline_dir(server.settings.data_dir) / "part-partial.tmp").write_bytes(b"not parquet")  # a torn temp file
    entity = pd.DataFrame({
        "user_id": [user, user, user, user, other],
        "event_timestamp": pd.to_datetime([t0 - 1, t0 + 50, t0 + 150, t0 + 10_000, t0 + 150], unit="s", utc=True),
    })
    df = store.get_historical_features(entity_df=entity, features=store.get_feature_service(FEATURE_SERVICE)).to_df()
    df = df.sort_values(["user_id", "event_timestamp"]).set_index(["user_id", "event_timestamp"])
    got = [df.loc[(user, ts), "views_1h"] for ts in entity["event_timestamp"][:4]]
    assert math.isnan(got[0])  # nothing known before the first event: no future value leaks in
    assert got[1:] == [1.0, 2.0, 3.0]
    assert math.isnan(df.loc[(other, entity["event_timestamp"][4]), "profile_version"])


async def test_server_rows_reach_a_separate_feature_store_online_and_offline(stub: Any, server: Any) -> None:
    from server._gen.portrait.v1 import portrait_pb2 as pb

    user = uid()
    await stub.Track(pb.TrackRequest(event=ev(user, pb.EVENT_TYPE_ADD_TO_CART, price=5.0), wait_visible=True))
    fresh = open_store(ROOT / "feature_repo")
    online = fresh.get_online_features(features=fresh.get_feature_service(FEATURE_SERVICE),
                                       entity_rows=[{"user_id": user}]).to_dict()
    assert online["carts_1h"] == [1.0] and online["profile_version"] == [1]

    deadline = time.monotonic() + 30
    entity = pd.DataFrame({"user_id": [user], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
    while True:  # the offline roll interval is 0.2 s in tests: await the file holding the row
        files = offline_dir(server.settings.data_dir).glob("*.parquet")
        if any(user in pd.read_parquet(f, columns=["user_id"])["user_id"].values for f in files) \
                or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    hist = fresh.get_historical_features(entity_df=entity, features=["user_profile:carts_1h",
                                                                     "user_profile:profile_version"]).to_df()
    assert hist["carts_1h"].tolist() == [1.0] and hist["profile_version"].tolist() == [1]


def test_offline_parts_written_before_columns_were_appended_still_answer(server: Any) -> None:
    """Parts written before ``as_of_ts`` and the sequence / cycle columns existed sit beside new ones: once the
    start has upgraded them (Feast's offline store refuses a part lacking a column: IbisTypeError "Column
    'as_of_ts' is not found in table"), a training job gets their rows (the new columns null) and the new."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from server.store.feast import upgrade_offline
    from server.store.schema import ARROW_SCHEMA

    store = open_store(ROOT / "feature_repo")
    log = OfflineLog(server.settings.data_dir)
    p = _pipeline()
    old, new = uid(), uid()
    t0 = 1_600_100_000.0
    p.apply(Event(uid("e"), old, EventType.VIEW, t0, item_id="a"))
    p.apply(Event(uid("e"), new, EventType.VIEW, t0, item_id="a"))
    log.append([p.row(new)])
    row = p.row(old)
    first = ARROW_SCHEMA.get_field_index("as_of_ts")  # the columns of the first layout end before it
    fields = [ARROW_SCHEMA.field(i) for i in range(first)]
    arrays = [pa.array([1_700_000_000_000_000 if f.name == "created_timestamp" else row[
        "event_timestamp_us" if f.name == "event_timestamp" else f.name]], type=f.type) for f in fields]
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)),
                   offline_dir(server.settings.data_dir) / "part-0000000000001-1-000001.parquet")
    assert upgrade_offline(server.settings.data_dir) == 1  # what a start does; the new parts stay as they are
    assert upgrade_offline(server.settings.data_dir) == 0
    entity = pd.DataFrame({"user_id": [old, new],
                           "event_timestamp": pd.to_datetime([t0 + 10, t0 + 10], unit="s", utc=True)})
    df = store.get_historical_features(entity_df=entity, features=store.get_feature_service(FEATURE_SERVICE)).to_df()
    df = df.set_index("user_id")
    assert df.loc[old, "views_1h"] == 1.0 and df.loc[new, "views_1h"] == 1.0
    assert df.loc[new, "as_of_ts"] == t0 and pd.isna(df.loc[old, "as_of_ts"])
