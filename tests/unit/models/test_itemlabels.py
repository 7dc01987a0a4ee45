"""The packed records of pending item decisions: bit-exact round trips, and checkpoints of the earlier format."""

from __future__ import annotations

import pickle
import struct
from array import array

from hypothesis import given
from hypothesis import strategies as st

from server.models.itemlabels import _HEAD, ItemLabels, _decision, _pack, _records

floats32 = st.floats(width=32, allow_nan=False)


@given(st.lists(st.one_of(st.just(0.0), st.just(-0.0), floats32), max_size=80),
       st.floats(allow_nan=False, allow_infinity=False), st.floats(0, 1), st.sampled_from([1, 2, 3, 5]))
def test_a_record_decodes_to_the_same_32_bit_inputs(x: list[float], t: float, p: float, kind: int) -> None:
    rec = _pack(t, x, p, kind)
    (got,) = [_decision(rec, at, end, "u", "i") for _, _, _, at, end in _records(rec)]
    assert got.x.tobytes() == array("f", x).tobytes()  # -0.0 and denormals included
    assert (got.t, got.p, got.kind) == (t, p, kind)
    nonzero = sum(1 for w in array("I", array("f", x).tobytes()) if w)
    assert len(rec) == _HEAD.size + (len(x) + 7) // 8 + 4 * nonzero  # zeros take one bit


def test_records_of_a_pair_stay_apart_and_in_order() -> None:
    q = ItemLabels(horizon_s=100, min_interval_s=1, allowed_lateness_s=0)
    xs = [[0.0] * 9, [1.0] * 9, [0.0, 2.0] * 5, []]
    for t, x in zip((10.0, 30.0, 20.0, 40.0), xs, strict=True):
        assert q.decide("u", "i", 1, t, x, 0.5)
    assert [(d.t, list(d.x)) for d in q.decisions()] == [(10.0, xs[0]), (20.0, xs[2]), (30.0, xs[1]), (40.0, [])]
    assert [(d.t, y) for d, y in q.on_purchase("u", "i", 25.0)] == [(10.0, True), (20.0, True)]


def test_a_checkpoint_of_the_format_before_the_bitmap_loads_with_the_same_decisions() -> None:
    q = ItemLabels(horizon_s=100, min_interval_s=1, allowed_lateness_s=0)
    q.decide("u", "i", 1, 10.0, [0.0, 1.5, -0.0], 0.5)
    q.decide("u", "i", 3, 20.0, [2.0, 0.0, 0.0], 0.7)
    old_head = struct.Struct("<ddiI")  # t, p, kind, n; then every input as little-endian float32

    def v1(t: float, x: list[float], p: float, kind: int) -> bytes:
        return old_head.pack(t, p, kind, len(x)) + array("f", x).tobytes()

    state = dict(vars(q))
    del state["_format"]
    state["_pending"] = {"u": {"i": v1(10.0, [0.0, 1.5, -0.0], 0.5, 1) + v1(20.0, [2.0, 0.0, 0.0], 0.7, 3)}}
    old = ItemLabels.__new__(ItemLabels)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old._pending == q._pending
    def seen(labels: ItemLabels) -> list[tuple[float, bytes, int]]:
        return [(d.t, d.x.tobytes(), d.kind) for d in labels.decisions()]

    assert seen(old) == seen(q)
    assert pickle.loads(pickle.dumps(old))._pending == q._pending  # today's format loads unchanged
