"""The partition worker's outputs on a seeded simulated shop equal the recorded ones (``tests/golden/record.py``):
propensity, segment, risk, Score, tags and counts, to the last bit.

History: recorded on the code before the re-house by layer (0b9245b); the worker/trainer split kept every
output equal. Re-recorded when profiles started to stay true as time passes (timers, as-of rows, the new
features): per-event outputs and Score were equal to the old recording then too (learning did not change);
rows changed where time alone changes them (windows and risk as of the watermark) and gained columns. Then
again when the item model took the behaviour sequence as inputs (Score changed; per-event outputs did not), and
when it moved to SGD with the user's counts of the item, traffic priors and buy-rate crosses (Score changed only)."""

from __future__ import annotations

import gzip
import json

from tests.golden.record import PATH, outputs


def test_outputs_equal_the_recorded_ones() -> None:
    with gzip.open(PATH, "rt") as f:
        recorded = json.load(f)
    now = outputs()
    assert now["events"] == recorded["events"]
    diff = [i for i, (a, b) in enumerate(zip(now["per_event"], recorded["per_event"])) if a != b]
    assert len(now["per_event"]) == len(recorded["per_event"])
    assert not diff, f"{len(diff)} events differ, first at {diff[0]}: {now['per_event'][diff[0]]} != " \
                     f"{recorded['per_event'][diff[0]]}"
    assert sorted(now["rows"]) == sorted(recorded["rows"])
    for user, row in recorded["rows"].items():
        assert now["rows"][user] == row, user
    assert now["scores"] == recorded["scores"]
