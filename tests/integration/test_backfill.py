"""``portrait replay`` (server.tools.backfill) against the real session server: counts, profiles, rejected rows
(server-side and file-parse errors), resume from the state file, rate limiting, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.api.client import PortraitClient
from server.domain.events import Event
from server.domain.units import DAY
from server.tools import backfill
from server.tools.backfill import ReplayState, TokenBucket, replay
from server.tools.eventfile import read_events, write_events
from server.tools.simulate import simulate_to_file
from tests.conftest import uid

pytestmark = pytest.mark.usefixtures("server")


def _target(server: Any) -> str:
    return f"127.0.0.1:{server.grpc_port}"


def _sim_file(tmp_path: Path, name: str, users: int = 6, seed: int = 11) -> tuple[Path, list[Event]]:
    """A simulated day of events (a day before yesterday), with user and event ids unique to this test."""
    raw = tmp_path / "raw.csv"
    simulate_to_file(raw, users=users, days=1, seed=seed, start=time.time() - 2 * DAY)
    prefix = uid("r")
    events = list(read_events(raw))
    for e in events:
        e.user_id, e.event_id = f"{prefix}-{e.user_id}", f"{prefix}-{e.event_id}"
    path = tmp_path / name
    write_events(path, events)
    return path, events


def _events_total(server: Any) -> Counter[str]:
    """The server's own portrait_events_total, summed over event types, by outcome."""
    out: Counter[str] = Counter()
    for metric in server.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "portrait_events_total":
                out[s.labels["outcome"]] += int(s.value)
    return out


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    backfill.add_arguments(p)
    return p.parse_args(list(argv))


def _profiles(server: Any, users: list[str]) -> dict[str, Any]:
    """GetProfile for each user (blocking client: call in a thread); None for NOT_FOUND."""
    out: dict[str, Any] = {}
    with PortraitClient(_target(server)) as c:
        for u in users:
            try:
                out[u] = c.get_profile(u)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                out[u] = None
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_replay_of_a_simulated_file_is_accepted_and_readable_through_get_profile(
        server: Any, tmp_path: Path) -> None:
    path, events = _sim_file(tmp_path, "events.parquet")
    before = _events_total(server)
    r = await asyncio.to_thread(replay, path, _target(server), batch_size=20)
    after = _events_total(server)
    n = len(events)
    assert (r.rows, r.sent, r.accepted, r.duplicates, r.rejected, r.skipped) == (n, n, n, 0, 0, 0)
    assert r.batches == -(-n // 20)
    assert after["accepted"] - before["accepted"] == n and after["rejected"] == before["rejected"]
    assert r.rejected_file is None and not (tmp_path / "events.parquet.rejected.csv").exists()
    state = ReplayState.load(tmp_path / "events.parquet.replay-state")
    assert state is not None and (state.rows_done, state.accepted) == (n, n)

    # The last batch is sent with wait_visible: every profile is complete in the online store right away.
    per_user = Counter(e.user_id for e in events)
    profiles = await asyncio.to_thread(_profiles, server, list(per_user))
    for user, count in per_user.items():
        assert profiles[user] is not None, user
        assert profiles[user].version == count
        assert profiles[user].features["lifetime_events"] == count
        last = max(float(e.event_time or 0) for e in events if e.user_id == user)
        assert profiles[user].updated_at.seconds == int(last)

    # Done is done: a rerun sends nothing; --restart sends everything again (all duplicates, changes nothing).
    again = await asyncio.to_thread(replay, path, _target(server))
    assert (again.sent, again.rows, again.skipped) == (0, 0, n)
    restart = await asyncio.to_thread(replay, path, _target(server), restart=True, batch_size=500)
    assert (restart.sent, restart.accepted, restart.duplicates) == (n, 0, n)


async def test_invalid_rows_land_in_the_rejected_file_with_row_numbers(
        server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = uid()
    t = int(time.time()) - 3600
    rows = [
        ("ok-1", "view", t, "sku-1", "10"),            # 1
        ("neg-price", "view", t + 1, "sku-1", "-5"),   # 2 server: price
        ("bad-type", "teleport", t + 2, "sku-1", ""),  # 3 file: event_type
        ("ok-2", "purchase", t + 3, "sku-1", "10"),    # 4
        ("bad-time", "view", "yesterday", "sku-1", ""),  # 5 file: event_time
        ("no-item", "click", t + 5, "", ""),           # 6 server: item_id
        ("bad-price", "view", t + 6, "sku-2", "cheap"),  # 7 file: price
        ("ok-3", "click", t + 7, "sku-2", ""),         # 8
    ]
    path = tmp_path / "mixed.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event_id", "user_id", "event_type", "event_time", "item_id", "price"])
        for i, (eid, etype, when, item, price) in enumerate(rows):
            w.writerow([f"{user}-{eid}", user, etype, when, item, price])
            if i == 3:
                f.write("\n")  # a blank line is not a row: numbering stays 1..8
    rejected_out = tmp_path / "rejected.csv"
    before = _events_total(server)
    code = await asyncio.to_thread(backfill.run, _args(str(path), "--target", _target(server), "--batch", "2",
                                                       "--rejected-out", str(rejected_out)))
    assert code == 0
    after = _events_total(server)
    assert after["accepted"] - before["accepted"] == 3
    assert after["rejected"] - before["rejected"] == 2  # file-parse errors are never sent
    with open(rejected_out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [(int(r["row"]), r["event_id"], r["field"]) for r in got] == [
        (2, f"{user}-neg-price", "price"),
        (3, f"{user}-bad-type", "event_type"),
        (5, f"{user}-bad-time", "event_time"),
        (6, f"{user}-no-item", "item_id"),
        (7, f"{user}-bad-price", "price"),
    ]
    assert "price must be >= 0" in got[0]["message"] and "teleport" in got[1]["message"]
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1 and "\r" not in out  # not a terminal: no progress bar, one summary line
    assert "replayed 8 rows" in lines[0] and "3 accepted" in lines[0] and "5 rejected" in lines[0]
    assert str(rejected_out) in lines[0]
    profile = (await asyncio.to_thread(_profiles, server, [user]))[user]
    assert profile.version == 3 and profile.features["purchases_1h"] == 1.0


async def test_resume_sends_only_the_rows_after_the_recorded_ones(server: Any, tmp_path: Path) -> None:
    path, events = _sim_file(tmp_path, "events.csv")
    n, done = len(events), 30
    assert n > done + 10
    state_file = tmp_path / "my.state"
    ReplayState(rows_done=done, file_size=path.stat().st_size).save(state_file)
    before = _events_total(server)
    r = await asyncio.to_thread(replay, path, _target(server), state_path=state_file, batch_size=25)
    after = _events_total(server)
    sent = sum(after[o] - before[o] for o in ("accepted", "duplicate", "rejected"))
    assert sent == n - done
    assert (r.skipped, r.rows, r.sent, r.accepted) == (done, n - done, n - done, n - done)
    assert ReplayState.load(state_file).rows_done == n  # type: ignore[union-attr]
    # Exactly the events after row `done` reached the profiles.
    rest = Counter(e.user_id for e in events[done:])
    profiles = await asyncio.to_thread(_profiles, server, sorted({e.user_id for e in events}))
    for user, profile in profiles.items():
        if rest[user] == 0:
            assert profile is None, user
        else:
            assert profile.version == rest[user], user


async def test_an_interrupted_replay_continues_where_it_stopped(server: Any, tmp_path: Path) -> None:
    path, events = _sim_file(tmp_path, "events.csv")
    n = len(events)

    class Stop(Exception):
        pass

    def stop_after_two(progress: backfill.ReplayResult) -> None:
        if progress.batches == 2:
            raise Stop

    before = _events_total(server)
    with pytest.raises(Stop):
        await asyncio.to_thread(replay, path, _target(server), batch_size=10, on_batch=stop_after_two)
    state = ReplayState.load(Path(f"{path}.replay-state"))
    assert state is not None and (state.rows_done, state.accepted) == (20, 20)
    r = await asyncio.to_thread(replay, path, _target(server), batch_size=10)
    after = _events_total(server)
    assert (r.skipped, r.sent, r.accepted, r.duplicates) == (20, n - 20, n - 20, 0)
    assert after["accepted"] - before["accepted"] == n and after["duplicate"] == before["duplicate"]
    assert ReplayState.load(Path(f"{path}.replay-state")) == ReplayState(n, n, 0, 0, path.stat().st_size)


async def test_rate_limit_uses_a_token_bucket_and_batches_of_at_most_rate_events(
        server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, events = _sim_file(tmp_path, "events.csv")
    fake = {"now": 0.0, "slept": 0.0}

    def sleep(s: float) -> None:
        fake["now"] += s
        fake["slept"] += s

    monkeypatch.setattr(backfill, "TokenBucket", lambda rate, burst=None: TokenBucket(
        rate, burst=burst, clock=lambda: fake["now"], sleep=sleep))
    r = await asyncio.to_thread(replay, path, _target(server), rate=10, batch_size=500)
    assert r.batches == -(-len(events) // 10)  # at most one second's worth per batch
    # The first batch is the burst; the rest wait exactly 1/rate each (the fake clock only moves by sleeping).
    assert fake["slept"] == pytest.approx((len(events) - 10) / 10)
    fake["slept"] = 0.0
    r = await asyncio.to_thread(replay, path, _target(server), rate=10, batch_size=4, restart=True)
    assert r.batches == -(-len(events) // 4) and r.duplicates == len(events)
    assert fake["slept"] == pytest.approx((len(events) - 4) / 10)  # burst = one batch, not one second


def test_token_bucket_refills_at_the_rate_and_caps_the_burst() -> None:
    now = [0.0]
    slept: list[float] = []
    b = TokenBucket(rate=5, burst=10, clock=lambda: now[0], sleep=slept.append)
    assert b.acquire(10) == 0.0  # a full bucket
    assert b.acquire(5) == pytest.approx(1.0)  # empty: 5 tokens take 1 s
    now[0] += 100.0  # a long pause refills only up to the burst (the debt of 5 first)
    assert b.acquire(10) == 0.0
    assert b.acquire(1) == pytest.approx(0.2)
    assert slept == [pytest.approx(1.0), pytest.approx(0.2)]
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


async def test_progress_bar_only_on_a_terminal(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, events = _sim_file(tmp_path, "events.csv", users=2)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    code = await asyncio.to_thread(backfill.run, _args(str(path), "--target", _target(server)))
    monkeypatch.undo()
    assert code == 0
    out = tty.getvalue()
    assert "\r" in out and "ev/s" in out and "rejected=0" in out  # tqdm's bar: rate, postfix
    assert out.rstrip().splitlines()[-1].startswith(f"replayed {len(events)} rows")


async def test_unreachable_server_exits_1_and_records_nothing(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _sim_file(tmp_path, "events.csv", users=2)
    code = await asyncio.to_thread(backfill.run, _args(str(path), "--target", f"127.0.0.1:{_free_port()}",
                                                       "--timeout", "5"))
    assert code == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "0 rows acknowledged" in err
    assert not Path(f"{path}.replay-state").exists()


async def test_file_problems_exit_2(server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _sim_file(tmp_path, "events.csv", users=2)
    state = tmp_path / "s.json"
    ReplayState(rows_done=1, file_size=path.stat().st_size + 1).save(state)  # written for another file
    assert await asyncio.to_thread(backfill.run, _args(str(path), "--target", _target(server),
                                                       "--state", str(state))) == 2
    assert "--restart" in capsys.readouterr().err
    assert json.loads(state.read_text())["rows_done"] == 1  # untouched

    no_type = tmp_path / "no_type.csv"
    no_type.write_text("event_id,user_id,event_time\ne1,u1,1\n")
    assert await asyncio.to_thread(backfill.run, _args(str(no_type), "--target", _target(server))) == 2
    assert "event_type" in capsys.readouterr().err
    assert backfill.run(_args(str(tmp_path / "missing.csv"), "--target", _target(server))) == 2
    assert backfill.run(_args(str(path), "--target", _target(server), "--batch", "10001")) == 2
