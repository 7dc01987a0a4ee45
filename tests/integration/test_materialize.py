"""Unit tests of server.worker.materialize.Materializer's own logic: coalescing, early flush, retry with backoff,
read-your-writes futures, offline rolls and stop(). The sinks are plain callables (the Materializer's sink
interface) that record each call on an asyncio.Queue, so tests await conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.metrics import Metrics
from server.worker import materialize
from server.worker.materialize import Materializer, Row

TIMEOUT = 5.0


class Sink:
    """Records every call as ``(ok, rows)`` on ``calls``; fails the calls numbered in ``fail_on`` (1-based).

    With a ``gate``, each call waits for it before returning, so a test can act while a write is in flight."""

    def __init__(self, fail_on: set[int] | int = frozenset(), gate: threading.Event | None = None) -> None:
        self.fail_on = set(range(1, fail_on + 1)) if isinstance(fail_on, int) else set(fail_on)
        self.gate = gate
        self.calls: asyncio.Queue[tuple[bool, list[Row]]] = asyncio.Queue()
        self.written: list[Row] = []
        self.n = 0
        self._loop = asyncio.get_running_loop()

    def __call__(self, rows: list[Row]) -> None:  # runs in a worker thread
        self.n += 1
        ok = self.n not in self.fail_on
        if ok:
            self.written.extend(dict(r) for r in rows)
        self._loop.call_soon_threadsafe(self.calls.put_nowait, (ok, [dict(r) for r in rows]))
        if self.gate is not None:
            self.gate.wait(TIMEOUT)
        if not ok:
            raise ConnectionError("store unavailable")

    async def next(self) -> tuple[bool, list[Row]]:
        return await asyncio.wait_for(self.calls.get(), TIMEOUT)


class State:
    """The 'profiles': a version per user; ``build_row`` reads the current one."""

    def __init__(self) -> None:
        self.v: dict[str, int] = {}
        self.built = 0

    def bump(self, user: str) -> None:
        self.v[user] = self.v.get(user, 0) + 1

    def build_row(self, user: str) -> Row:
        self.built += 1
        return {"user_id": user, "v": self.v[user]}


Factory = Callable[..., tuple[Materializer, Sink, Sink, State, Metrics]]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    created: list[Materializer] = []

    def factory(online: Sink | None = None, offline: Sink | None = None, **kw: Any) -> Any:
        state, metrics = State(), Metrics(CollectorRegistry())
        online, offline = online or Sink(), offline or Sink()
        kw = {"flush_interval_s": 0.01, "offline_roll_s": 3600.0, "max_backoff_s": 0.05, **kw}
        m = Materializer(state.build_row, online, offline, metrics, **kw)
        created.append(m)
        m.start()
        return m, online, offline, state, metrics

    yield factory
    for m in created:
        if m._task and not m._task.done():
            m._task.cancel()
            await asyncio.gather(m._task, return_exceptions=True)


def mark(m: Materializer, state: State, user: str) -> asyncio.Future[None]:
    state.bump(user)
    return m.mark(user, time.monotonic())


def record_pauses(monkeypatch: pytest.MonkeyPatch, m: Materializer) -> list[float]:
    """Record the retry pauses ``m``'s flush loop asks for (and shorten them); other tasks sleep as usual."""
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: Any) -> Any:
        if asyncio.current_task() is m._task:
            pauses.append(delay)
            delay = min(delay, 0.01)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(materialize.asyncio, "sleep", recording_sleep)
    return pauses


def value(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def test_marks_of_one_user_coalesce_into_one_row_per_flush(make: Factory) -> None:
    m, online, _, state, metrics = make()
    futures = [mark(m, state, "u1") for _ in range(10)] + [mark(m, state, "u2")]
    assert len({id(f) for f in futures}) == 1  # one flush generation
    assert m.depth == 2
    await asyncio.wait_for(futures[0], TIMEOUT)
    ok, rows = await online.next()
    assert ok
    assert rows == [{"user_id": "u1", "v": 10}, {"user_id": "u2", "v": 1}]
    assert state.built == 2
    assert value(metrics, "portrait_online_write_rows_total") == 2.0
    assert value(metrics, "portrait_freshness_seconds_count") == 11.0  # one observation per mark

    f = mark(m, state, "u1")
    assert f is not futures[0]
    await asyncio.wait_for(f, TIMEOUT)
    assert (await online.next())[1] == [{"user_id": "u1", "v": 11}]


async def test_flush_max_rows_triggers_an_early_flush(make: Factory) -> None:
    m, online, _, state, _ = make(flush_interval_s=3600.0, flush_max_rows=3)
    f = mark(m, state, "u1")
    mark(m, state, "u2")
    mark(m, state, "u3")
    await asyncio.wait_for(f, TIMEOUT)  # would wait an hour without the early flush
    assert [r["user_id"] for r in (await online.next())[1]] == ["u1", "u2", "u3"]
    assert m.depth == 0


async def test_failing_online_sink_keeps_rows_and_retries_with_newest_state(make: Factory) -> None:
    gate = threading.Event()
    m, online, _, state, metrics = make(online=Sink(fail_on=2, gate=gate))
    f1 = mark(m, state, "u1")
    mark(m, state, "u2")

    ok, rows = await online.next()  # the first attempt is in flight and will fail
    assert not ok
    assert rows == [{"user_id": "u1", "v": 1}, {"user_id": "u2", "v": 1}]
    f2 = mark(m, state, "u1")  # a newer change while the write is in flight
    gate.set()

    ok, _ = await online.next()
    assert not ok
    assert not f1.done() and not f2.done()
    assert m.online_healthy is False

    ok, rows = await online.next()
    assert ok
    assert sorted(rows, key=lambda r: r["user_id"]) == [{"user_id": "u1", "v": 2}, {"user_id": "u2", "v": 1}]
    await asyncio.wait_for(asyncio.gather(f1, f2), TIMEOUT)
    assert m.online_healthy is True
    assert value(metrics, "portrait_online_write_errors_total") == 2.0
    assert value(metrics, "portrait_online_write_rows_total") == 2.0
    assert online.written == rows


async def test_retry_backoff_doubles_up_to_the_cap_and_resets(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    m, online, _, state, _ = make(online=Sink(fail_on={1, 2, 3, 4, 5, 7}), max_backoff_s=0.2)
    pauses = record_pauses(monkeypatch, m)
    f = mark(m, state, "u1")
    for _ in range(6):
        await online.next()
    await asyncio.wait_for(f, TIMEOUT)
    assert pauses == [0.05, 0.1, 0.2, 0.2, 0.2]
    f = mark(m, state, "u1")
    assert (await online.next())[0] is False
    assert (await online.next())[0] is True
    await asyncio.wait_for(f, TIMEOUT)
    assert pauses[5:] == [0.05]  # reset after the success


async def test_retry_backoff_never_exceeds_a_small_cap(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    m, _, _, state, _ = make(online=Sink(fail_on=2), max_backoff_s=0.01)
    pauses = record_pauses(monkeypatch, m)
    await asyncio.wait_for(mark(m, state, "u1"), TIMEOUT)
    assert pauses and max(pauses) <= 0.01


async def test_offline_sink_gets_the_same_rows_after_a_roll(make: Factory) -> None:
    m, online, offline, state, metrics = make(offline_roll_s=0.05)
    await asyncio.wait_for(asyncio.gather(mark(m, state, "u1"), mark(m, state, "u2")), TIMEOUT)
    ok, rows = await offline.next()
    assert ok
    assert rows == online.written == [{"user_id": "u1", "v": 1}, {"user_id": "u2", "v": 1}]
    await asyncio.wait_for(mark(m, state, "u1"), TIMEOUT)
    assert (await offline.next())[1] == [{"user_id": "u1", "v": 2}]
    assert offline.written == online.written
    await asyncio.wait_for(m.stop(), TIMEOUT)  # the counter is bumped after the sink returns
    assert value(metrics, "portrait_offline_write_rows_total") == 3.0


async def test_offline_roll_rows_and_retry(make: Factory) -> None:
    m, online, offline, state, metrics = make(offline=Sink(fail_on=1), offline_roll_rows=2)
    await asyncio.wait_for(asyncio.gather(mark(m, state, "u1"), mark(m, state, "u2")), TIMEOUT)
    failed, kept = await offline.next()  # rolled by row count (the roll interval is an hour)
    assert not failed
    ok, rows = await offline.next()
    assert ok and rows == kept == online.written
    assert value(metrics, "portrait_offline_write_errors_total") == 1.0


async def test_stop_flushes_everything_pending(make: Factory) -> None:
    m, online, offline, state, _ = make(flush_interval_s=3600.0)
    futures = [mark(m, state, u) for u in ("u1", "u2", "u3")]
    await asyncio.wait_for(m.stop(), TIMEOUT)  # flushes now, not after the interval
    assert all(f.done() for f in futures)
    assert m.depth == 0
    assert [r["user_id"] for r in online.written] == ["u1", "u2", "u3"]
    assert offline.written == online.written  # rolled although the roll interval is an hour
    assert m._task is not None and m._task.done()


async def test_stop_retries_a_failing_write_until_it_succeeds(make: Factory) -> None:
    m, online, offline, state, metrics = make(online=Sink(fail_on=3))
    futures = [mark(m, state, u) for u in ("u1", "u2")]
    await asyncio.wait_for(m.stop(), TIMEOUT)
    assert all(f.done() for f in futures)
    assert [r["user_id"] for r in online.written] == ["u1", "u2"]
    assert offline.written == online.written
    assert value(metrics, "portrait_online_write_errors_total") == 3.0


async def test_stop_retries_after_the_backoff_not_the_flush_interval(make: Factory) -> None:
    m, online, _, state, _ = make(online=Sink(fail_on=1), flush_interval_s=60.0)
    f = mark(m, state, "u1")
    await asyncio.wait_for(m.stop(), 2.0)  # one 50 ms backoff is due, not a 60 s interval
    assert f.done()
    assert [r["user_id"] for r in online.written] == ["u1"]


async def test_forget_drops_pending_rows_and_deletes_after_the_write_in_flight(make: Factory) -> None:
    gate = threading.Event()
    online = Sink(gate=gate)
    deleted: list[str] = []
    m, _, _, state, metrics = make(online=online, delete=deleted.extend)
    try:
        waiter = mark(m, state, "victim")
        assert (await online.next())[1] == [{"user_id": "victim", "v": 1}]  # this write is in flight now
        # a user whose write is in flight still waits: the queue depth counts it (a reader that awaits depth 0
        # before reading rows must not read before this write lands)
        assert metrics.registry.get_sample_value("portrait_queue_depth", {"queue": "online"}) == 1
        mark(m, state, "victim")  # a newer change waits in the dirty set
        gone = m.forget("victim")
        assert gone is not None and m.depth == 0
        assert deleted == []  # not before the write in flight has finished
    finally:
        gate.set()
    await asyncio.wait_for(gone, TIMEOUT)
    await asyncio.wait_for(waiter, TIMEOUT)
    assert deleted == ["victim"]
    assert [r["user_id"] for r in online.written] == ["victim"]  # the newer change was never written
    assert m.snapshot() == ([], [])  # nor the offline row of the write that was in flight at the erasure
    assert metrics.registry.get_sample_value("portrait_queue_depth", {"queue": "online"}) == 0
    m._offline_rows.append({"user_id": "victim"})
    again = m.forget("victim")
    assert m.snapshot() == ([], [])
    assert again is not None
    await asyncio.wait_for(again, TIMEOUT)  # idle again (cancelling a loop that is just waking can be swallowed
    assert deleted == ["victim", "victim"]  # by asyncio.wait_for in 3.11, and the fixture cancels it)


async def test_forget_resolves_read_your_writes_waiters_of_erased_users(make: Factory) -> None:
    deleted: list[str] = []
    m, online, _, state, _ = make(delete=deleted.extend, flush_interval_s=3600.0)
    waiter = mark(m, state, "victim")
    m.forget("victim")  # before any flush: nothing will ever be written for this mark
    await asyncio.wait_for(waiter, TIMEOUT)
    assert deleted == ["victim"] and online.n == 0


async def test_a_failing_delete_is_retried_and_the_user_never_comes_back(make: Factory) -> None:
    attempts: list[list[str]] = []

    def delete(users: list[str]) -> None:
        attempts.append(list(users))
        if len(attempts) == 1:
            raise ConnectionError("store unavailable")

    m, _, _, _, metrics = make(delete=delete)
    gone = m.forget("victim")
    assert gone is not None
    await asyncio.wait_for(gone, TIMEOUT)
    assert attempts == [["victim"], ["victim"]] and value(metrics, "portrait_online_write_errors_total") == 1
    assert m.pending_deletes() == []


async def test_a_coroutine_sink_is_awaited_on_the_event_loop(make: Factory) -> None:
    threads: list[threading.Thread] = []
    written: list[list[Row]] = []

    async def online(rows: list[Row]) -> None:  # like the writer process: driven from the loop
        threads.append(threading.current_thread())
        written.append(list(rows))

    m, _, _, state, metrics = make(online=online)  # type: ignore[arg-type]
    await asyncio.wait_for(mark(m, state, "u1"), TIMEOUT)
    assert written == [[{"user_id": "u1", "v": 1}]]
    assert threads == [threading.main_thread()]
    assert value(metrics, "portrait_online_write_rows_total") == 1.0


async def test_a_write_longer_than_the_interval_is_followed_at_once(make: Factory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    timeline: list[str] = []

    class Recording(Sink):
        def __call__(self, rows: list[Row]) -> None:
            timeline.append("write " + ",".join(r["user_id"] for r in rows))
            super().__call__(rows)

    m, online, _, state, _ = make(online=Recording(gate=gate), flush_interval_s=0.2)
    real_wait_for = asyncio.wait_for

    async def recording_wait_for(aw: Any, timeout: float | None = None) -> Any:
        if asyncio.current_task() is m._task:
            timeline.append("wait")
        return await real_wait_for(aw, timeout)

    monkeypatch.setattr(materialize.asyncio, "wait_for", recording_wait_for)
    mark(m, state, "u1")
    assert (await online.next())[1] == [{"user_id": "u1", "v": 1}]  # the write is in flight (held by the gate)
    f = mark(m, state, "u2")
    await asyncio.sleep(0.3)  # keep the write in flight for longer than the interval
    gate.set()
    await asyncio.wait_for(f, TIMEOUT)
    assert (await online.next())[1] == [{"user_id": "u2", "v": 1}]
    i = timeline.index("write u1")
    assert timeline[i + 1] == "write u2"  # the next flush started without waiting another interval


async def test_rows_time_alone_changed_wait_behind_event_rows(make: Factory) -> None:
    gate = threading.Event()
    m, online, _, state, metrics = make(online=Sink(gate=gate), later_rows_per_flush=3)
    mark(m, state, "e0")
    assert (await online.next())[1] == [{"user_id": "e0", "v": 1}]  # in flight, held by the gate
    for i in range(10):
        state.bump(f"t{i}")
        m.mark_later(f"t{i}")
    m.mark_later("e1")  # then an event for the same user: written once, with the event rows
    f = mark(m, state, "e1")
    mark(m, state, "e2")
    assert m.snapshot()[0] == ["e1", "e2"] + [f"t{i}" for i in range(10)]  # a checkpoint keeps both sets
    assert (m.depth, m.later_depth) == (2, 10)
    gate.set()
    rows = (await online.next())[1]
    assert [r["user_id"] for r in rows] == ["e1", "e2"]  # every event row, in a write of their own
    await asyncio.wait_for(f, TIMEOUT)  # visible before any timer row is built or written
    rows = (await online.next())[1]
    assert [r["user_id"] for r in rows] == ["t0", "t1", "t2"]  # then 3 timer rows, in the same flush
    rows = (await online.next())[1]
    assert [r["user_id"] for r in rows] == [f"t{i}" for i in range(3, 10)]  # no event waits: the rest at once
    assert value(metrics, "portrait_freshness_seconds_count") == 3.0  # timer rows are no freshness samples

    async def timers_gauge_zero() -> None:  # set once the write returns, after the sink has the rows
        while metrics.registry.get_sample_value("portrait_queue_depth", {"queue": "timers"}) != 0.0:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(timers_gauge_zero(), TIMEOUT)
    assert m.later_depth == 0


async def test_forget_and_stop_cover_rows_time_alone_changed(make: Factory) -> None:
    m, online, offline, state, _ = make(flush_interval_s=3600.0)
    for u in ("t1", "t2"):
        state.bump(u)
        m.mark_later(u)
    m.forget("t1")
    assert m.later_depth == 1
    await asyncio.wait_for(m.stop(), TIMEOUT)
    assert [r["user_id"] for r in online.written] == ["t2"]
    assert [r["user_id"] for r in offline.written] == ["t2"]
