"""``portrait training-set`` (server.tools.training) against the session server's real Feast offline store:
point-in-time correctness (no future value leaks in), labels passed through, CSV and Parquet."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from server._gen.portrait.v1 import portrait_pb2 as pb
from server.store.feast import offline_dir
from server.tools import training
from server.tools.training import TrainingSetError, clean_entities
from tests.conftest import ROOT, uid
from tests.integration.test_servicer import ev


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    training.add_arguments(p)
    return p.parse_args(list(argv))


async def _offline_versions(server: Any, user: str, want: int, timeout_s: float = 30.0) -> set[int]:
    """Poll the offline parquet files until the user's rows hold versions 1..want (roll interval: 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions: set[int] = set()
        for f in offline_dir(server.settings.data_dir).glob("*.parquet"):
            df = pd.read_parquet(f, columns=["user_id", "profile_version"])
            versions |= set(df.loc[df["user_id"] == user, "profile_version"].tolist())
        if versions >= set(range(1, want + 1)) or time.monotonic() > deadline:
            return versions
        await asyncio.sleep(0.05)


@pytest.fixture
async def history(server: Any, stub: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, float]:
    """A fresh user with three events at known times t0, t0+100 (views), t0+200 (a purchase of 25);
    each visible online, then awaited in the offline store."""
    monkeypatch.setenv("PORTRAIT_FEATURE_REPO", str(ROOT / "feature_repo"))  # independent of the cwd
    user = uid()
    # recent events: the shared server's watermark is near now (other tests' events), and an event older than it
    # is served, and stamped offline, as of the watermark (README, "Timers"), not at its own time
    t0 = float(int(time.time()) - 1800)
    for dt, etype, price in ((0, pb.EVENT_TYPE_VIEW, 25.0), (100, pb.EVENT_TYPE_VIEW, 25.0),
                             (200, pb.EVENT_TYPE_PURCHASE, 25.0)):
        r = await stub.Track(pb.TrackRequest(event=ev(user, etype, t=t0 + dt, price=price, category="shoes"),
                                             wait_visible=True))
        assert not r.duplicate
    assert await _offline_versions(server, user, 3) >= {1, 2, 3}
    return user, t0


def _entities(user: str, t0: float, other: str) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [user, user, user, user, other, user],
        "event_timestamp": pd.to_datetime([t0 + 150, t0 - 1, t0 + 50, t0 + 199, t0 + 150, t0 + 86_400],
                                          unit="s", utc=True),
        "label": [1, 0, 0, 1, 0, 1],
        "note": ["a", "b", "c", "d", "e", "f"],
    })


async def test_training_set_is_point_in_time_correct_and_passes_labels_through(
        history: tuple[str, float], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user, t0 = history
    other = uid()  # never seen
    entities = _entities(user, t0, other)
    src = tmp_path / "entities.csv"
    out = tmp_path / "train.parquet"
    ent = entities.copy()
    ent["event_timestamp"] = ent["event_timestamp"].map(lambda t: t.isoformat())  # ISO strings in the CSV
    ent.to_csv(src, index=False)

    assert await asyncio.to_thread(training.run, _args(str(src), "--out", str(out))) == 0
    df = pd.read_parquet(out)
    # Input order, keys and labels unchanged.
    assert df["user_id"].tolist() == entities["user_id"].tolist()
    assert df["event_timestamp"].tolist() == entities["event_timestamp"].tolist()
    assert df["label"].tolist() == [1, 0, 0, 1, 0, 1] and df["note"].tolist() == list("abcdef")
    assert list(df.columns[:4]) == ["user_id", "event_timestamp", "label", "note"]

    version = df["profile_version"].tolist()
    views, purchases, spend = df["views_24h"].tolist(), df["purchases_30d"].tolist(), df["lifetime_spend"].tolist()
    # t0+150: two views, and the purchase at t0+200 must not leak in.
    assert (version[0], views[0], purchases[0], spend[0]) == (2, 2.0, 0.0, 0.0)
    # t0-1: before the first event nothing is known.
    assert math.isnan(version[1]) and math.isnan(views[1])
    # t0+50: only the first view.
    assert (version[2], views[2]) == (1, 1.0)
    # t0+199: one second before the purchase, still no purchase.
    assert (version[3], purchases[3], spend[3]) == (2, 0.0, 0.0)
    # An unknown user: nulls, row kept.
    assert math.isnan(version[4])
    # A day later: the latest profile (as of its last event), with the purchase.
    assert (version[5], views[5], purchases[5], spend[5]) == (3, 2.0, 1.0, 25.0)
    assert list(df["top_categories"][5]) == ["shoes"]
    assert "wrote 6 rows" in capsys.readouterr().out


async def test_nanosecond_timestamps_are_exact(history: tuple[str, float], tmp_path: Path) -> None:
    """Feature rows have microsecond times; entity times with nanoseconds must work and stay exact."""
    user, t0 = history
    first = pd.Timestamp(int(t0 * 1e9), unit="ns", tz="UTC")
    times = [first - pd.Timedelta(1, "ns"), first, first + pd.Timedelta(999, "ns")]
    src, out = tmp_path / "e.parquet", tmp_path / "o.parquet"
    pd.DataFrame({"user_id": [user] * 3, "event_timestamp": times}).to_parquet(src)
    assert await asyncio.to_thread(training.run, _args(str(src), "--out", str(out))) == 0
    df = pd.read_parquet(out)
    assert math.isnan(df["profile_version"][0])  # 1 ns before the first event: nothing
    assert df["profile_version"].tolist()[1:] == [1, 1]
    assert df["event_timestamp"].tolist() == times  # the input's values, nanoseconds included


async def test_csv_output_from_parquet_entities_and_feature_references(
        history: tuple[str, float], tmp_path: Path) -> None:
    user, t0 = history
    entities = _entities(user, t0, uid())
    src = tmp_path / "entities.parquet"
    entities.to_parquet(src)
    out = tmp_path / "train.csv"
    code = await asyncio.to_thread(training.run, _args(str(src), "--out", str(out), "--features",
                                                       "user_profile:views_24h,user_profile:top_categories"))
    assert code == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["user_id", "event_timestamp", "label", "note", "views_24h", "top_categories"]
    assert df["label"].tolist() == [1, 0, 0, 1, 0, 1]
    assert df["views_24h"].tolist()[:4] == [2.0, pytest.approx(math.nan, nan_ok=True), 1.0, 2.0]
    assert json.loads(df["top_categories"][5]) == ["shoes"]  # lists as JSON in CSV
    assert pd.Timestamp(df["event_timestamp"][0]) == entities["event_timestamp"][0]


def test_bad_entities_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "e.csv"
    src.write_text("user_id,when\nu1,2026-01-01\n")
    assert training.run(_args(str(src), "--out", str(tmp_path / "o.parquet"))) == 2
    assert "event_timestamp" in capsys.readouterr().err
    src.write_text("user_id,event_timestamp\nu1,2026-01-01\nu2,not a time\n")
    assert training.run(_args(str(src), "--out", str(tmp_path / "o.parquet"))) == 2
    assert "row 2" in capsys.readouterr().err
    assert training.run(_args(str(src), "--out", str(tmp_path / "o.json"))) == 2
    assert not (tmp_path / "o.parquet").exists()


def test_clean_entities_normalizes_keys() -> None:
    df = pd.DataFrame({"user_id": [1, "u2", "u3"], "event_timestamp": ["2026-01-01 00:00:00", 1767225600.0,
                                                                       "2026-01-01T08:00:00+08:00"]})
    got = clean_entities(df)
    assert got["user_id"].tolist() == ["1", "u2", "u3"]
    assert (got["event_timestamp"] == pd.Timestamp("2026-01-01", tz="UTC")).all()
    with pytest.raises(TrainingSetError, match="user_id is empty in rows 2"):
        clean_entities(pd.DataFrame({"user_id": ["a", None], "event_timestamp": [1, 2]}))


def test_feast_redis_defaults_to_the_embedded_redis() -> None:
    from server.config import Settings

    s = Settings(_env_file=None, redis_url=None, feast_redis=None, embedded_redis_port=6391)  # type: ignore[call-arg]
    assert training.feast_redis(s) == "127.0.0.1:6391,db=0"
    s = Settings(_env_file=None, redis_url="redis://h:7/3", feast_redis=None)  # type: ignore[call-arg]
    assert training.feast_redis(s) == "h:7,db=3"


def test_raw_entity_ids_find_rows_stored_under_pseudonyms(server: Any) -> None:
    import secrets

    from prometheus_client import CollectorRegistry

    from server.domain.events import Event, EventType
    from server.domain.pseudonym import Pseudonymizer
    from server.metrics import Metrics
    from server.store.feast import OfflineLog, open_store
    from server.worker.partition import PartitionWorker, WorkerConfig

    ids = Pseudonymizer([("v1", secrets.token_bytes(32))])
    raw = uid("raw")
    p = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    t0 = 1_650_000_000.0
    p.apply(Event(uid("e"), ids.map(raw), EventType.VIEW, t0, item_id="a"))  # stored as the server would
    OfflineLog(server.settings.data_dir).append([p.row(ids.map(raw))])
    entities = clean_entities(pd.DataFrame({"user_id": [raw], "event_timestamp": [t0 + 10]}))
    store = open_store(ROOT / "feature_repo")
    plain = training.build_training_set(store, entities)
    assert math.isnan(plain.loc[0, "views_1h"])  # the raw id is stored nowhere
    got = training.build_training_set(store, entities, ids=ids)
    assert got.loc[0, "user_id"] == raw and got.loc[0, "views_1h"] == 1.0
