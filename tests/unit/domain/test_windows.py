"""Unit tests of server.domain.windows.TiledWindow: tile-exact boundaries, late/too-old events, memory bound,
sub-windows, and a property against a brute-force sum over the raw events."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.windows import TiledWindow


def test_window_is_exact_to_a_tile() -> None:
    w = TiledWindow(tile_s=10, n_tiles=3, width=1)  # tiles of [0,10), [10,20), ...
    assert w.add(5.0, 0)
    assert w.sums(5.0) == [1.0]
    assert w.sums(29.999) == [1.0]  # tile 2: window (−1, 2] still holds tile 0
    assert w.sums(30.0) == [0.0]  # tile 3: window (0, 3] excludes tile 0
    assert w.sums(0.0) == [1.0]  # the start of the event's own tile counts it
    assert w.sums(-0.001) == [0.0]  # a time before the event's tile does not


def test_sums_per_metric_and_values() -> None:
    w = TiledWindow(tile_s=60, n_tiles=5, width=3)
    w.add(0.0, 0)
    w.add(61.0, 1, 2.5)
    w.add(119.0, 1, 0.5)
    w.add(120.0, 2, -1.0)
    assert w.sums(120.0) == [1.0, 3.0, -1.0]
    assert w.sums(59.0) == [1.0, 0.0, 0.0]  # later tiles are not in a window ending earlier


def test_late_event_lands_in_its_tile() -> None:
    w = TiledWindow(tile_s=10, n_tiles=5, width=1)
    w.add(45.0, 0)  # newest tile 4
    assert w.add(12.0, 0)  # tile 1 > 4 - 5: still inside
    assert w.sums(45.0) == [2.0]
    assert w.sums(19.0) == [1.0]  # the late event is in tile 1, not in the newest tile
    assert w.sums(45.0, 3) == [1.0]  # tiles (1, 4]: excludes it


def test_too_old_event_is_rejected_and_changes_nothing() -> None:
    w = TiledWindow(tile_s=10, n_tiles=5, width=2)
    w.add(55.0, 0)  # newest tile 5: tiles <= 0 are out
    w.add(20.0, 1, 3.0)
    before = (len(w), w.sums(55.0), w.sums(9.0), w.sums(20.0))
    assert w.add(9.999, 0) is False  # tile 0
    assert w.add(-100.0, 1, 7.0) is False
    assert (len(w), w.sums(55.0), w.sums(9.0), w.sums(20.0)) == before
    assert w.add(10.0, 0) is True  # tile 1 is the oldest still inside


def test_new_tile_evicts_tiles_out_of_window() -> None:
    w = TiledWindow(tile_s=10, n_tiles=3, width=1)
    w.add(0.0, 0)
    w.add(15.0, 0)
    assert len(w) == 2
    w.add(30.0, 0)  # newest tile 3: tile 0 dropped
    assert len(w) == 2
    assert w.sums(5.0) == [0.0]  # even a query ending in tile 0 no longer sees it
    w.add(1000.0, 0)
    assert len(w) == 1
    assert w.sums(1000.0) == [1.0]


def test_memory_bound_over_a_long_span() -> None:
    w = TiledWindow(tile_s=60, n_tiles=60, width=2)
    for i in range(20_000):
        assert w.add(i * 17.0, i % 2)
        assert len(w) <= 60
    assert len(w) == 60
    last = 19_999 * 17.0
    expected = sum(1 for i in range(20_000) if int(last // 60) - 60 < int(i * 17.0 // 60))
    assert sum(w.sums(last)) == expected


def test_sub_window_and_clamp() -> None:
    w = TiledWindow(tile_s=3600, n_tiles=168, width=1)
    for h in range(0, 200):
        w.add(h * 3600.0 + 1, 0)
    asof = 199 * 3600.0 + 5
    assert w.sums(asof, 1) == [1.0]
    assert w.sums(asof, 24) == [24.0]
    assert w.sums(asof) == [168.0]
    assert w.sums(asof, 10_000) == [168.0]  # never more than the window itself
    assert w.sums(asof - 3600, 24) == [24.0]  # a sub-window ending earlier


def test_pickle_round_trip() -> None:
    w = TiledWindow(tile_s=10, n_tiles=3, width=2)
    w.add(15.0, 0)
    w.add(35.0, 1, 2.0)
    w2 = pickle.loads(pickle.dumps(w))
    assert (w2.tile_s, w2.n_tiles, w2.width, len(w2)) == (10, 3, 2, 2)
    assert w2.sums(35.0) == w.sums(35.0) == [1.0, 2.0]
    assert w2.add(5.0, 0) is False  # the newest tile (3) survived the round trip


# -- property: against brute force over the raw events -----------------------------------------------
events = st.lists(
    st.tuples(st.integers(0, 3000), st.integers(0, 2), st.integers(-3, 5)),  # (time, metric, value)
    max_size=60,
)


def brute(evs: list[tuple[int, int, int]], tile_s: int, n: int, asof: int, sub: int | None) -> list[float]:
    """Sum the events whose tile is in the queried range and that the window still holds.

    An accepted event is dropped only once the newest tile reaches ``tile + n``; an event rejected on
    arrival also has ``tile <= newest_then - n <= newest_final - n``. So the events held at the end
    are exactly those with ``tile > newest_final - n``."""
    if not evs:
        return [0.0, 0.0, 0.0]
    newest = max(t // tile_s for t, _, _ in evs)
    end = asof // tile_s
    m = n if sub is None else min(sub, n)
    out = [0.0, 0.0, 0.0]
    for t, i, v in evs:
        tile = t // tile_s
        if tile > newest - n and end - m < tile <= end:
            out[i] += v
    return out


@settings(deadline=None)  # no flaky deadline errors on a loaded CI machine
@given(events, st.integers(1, 200), st.integers(1, 12), st.integers(0, 3500), st.none() | st.integers(1, 15))
def test_property_matches_brute_force(evs: list[tuple[int, int, int]], tile_s: int, n: int, asof: int,
                                      sub: int | None) -> None:
    w = TiledWindow(tile_s=tile_s, n_tiles=n, width=3)
    newest: int | None = None
    for t, i, v in evs:
        tile = t // tile_s
        expected_ok = newest is None or tile > newest - n
        assert w.add(float(t), i, float(v)) is expected_ok
        newest = tile if newest is None else max(newest, tile)
        assert len(w) <= n
    assert w.sums(float(asof), sub) == brute(evs, tile_s, n, asof, sub)


@settings(deadline=None)  # no flaky deadline errors on a loaded CI machine
@given(events, st.integers(1, 200), st.integers(1, 12))
def test_property_asof_newest_sums_every_event_in_range(evs: list[tuple[int, int, int]], tile_s: int,
                                                        n: int) -> None:
    w = TiledWindow(tile_s=tile_s, n_tiles=n, width=3)
    for t, i, v in evs:
        w.add(float(t), i, float(v))
    if evs:
        newest_t = max(t for t, _, _ in evs)
        in_range = [0.0, 0.0, 0.0]
        for t, i, v in evs:
            if t // tile_s > newest_t // tile_s - n:
                in_range[i] += v
        assert w.sums(float(newest_t)) == in_range


def test_state_is_one_array_of_the_nonzero_sums() -> None:
    """Memory: a tile stores only the metrics it was given, not ``width`` zeros."""
    w = TiledWindow(tile_s=60, n_tiles=60, width=7)
    empty = len(w._a)
    for i in range(10):
        w.add(i * 60.0, i % 2)
    assert len(w._a) == empty + 2 * 10  # one (key, sum) pair per tile
    w.add(9 * 60.0 + 1, 0)
    w.add(9 * 60.0 + 2, 1)
    assert len(w._a) == empty + 2 * 11  # the newest tile now holds two metrics
    assert len(pickle.dumps(w)) < 600
