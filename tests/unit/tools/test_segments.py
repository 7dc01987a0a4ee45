"""The segment report: means per segment, names in words, JSON, and ``portrait segments`` from an event file
and from a checkpoint."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from server import cli
from server.domain.events import Event, EventType
from server.domain.profile import DAY
from server.log.checkpoint import write_checkpoint
from server.metrics import Metrics
from server.tools.segments import format_report, from_checkpoint, from_events, segment_report, to_json
from server.tools.simulate import simulate_to_file
from server.worker import snapshot
from server.worker.partition import PartitionWorker, WorkerConfig

T = 1_700_006_400.0
_ids = itertools.count()


def ev(user: str, t: float, etype: EventType = EventType.VIEW, **kw: Any) -> Event:
    return Event(f"g{next(_ids)}", user, etype, t, item_id="i", **kw)


@pytest.fixture
def pipeline() -> PartitionWorker:
    """Two hand-made groups: two recent big buyers of shoes (segment 1), three lapsed browsers of books (segment 4)."""
    p = PartitionWorker(WorkerConfig(), Metrics())
    now = T + 10 * DAY
    for u in ("b1", "b2"):
        for i in range(10):
            p.apply(ev(u, now - 3600 + i, category="shoes", price=100.0))
        p.apply(ev(u, now - 60, EventType.PURCHASE, category="shoes", price=400.0))
    for i, u in enumerate(("r1", "r2", "r3")):
        p.apply(ev(u, now - (6 + i) * DAY, category="books", price=10.0))
    p.update_attributes("attrs-only", 30, "", "")  # no event: never segmented
    for u in ("b1", "b2"):
        p.profiles[u].segment = 1
    for u in ("r1", "r2", "r3"):
        p.profiles[u].segment = 4
    return p


def test_report_means_and_names(pipeline: PartitionWorker) -> None:
    report = segment_report(pipeline)
    assert [s.id for s in report] == [1, 4]
    buyers, browsers = report
    assert (buyers.users, browsers.users) == (2, 3)
    assert (buyers.share, browsers.share) == (pytest.approx(0.4), pytest.approx(0.6))
    assert buyers.recency_days == 0.0 and buyers.days_since_purchase == 0.0
    assert browsers.recency_days == pytest.approx(((6 + 7 + 8) / 3 * DAY - 60) / DAY)
    assert browsers.days_since_purchase is None and browsers.avg_order_value is None
    assert (buyers.events_30d, buyers.purchases_30d, buyers.buyers_30d) == (11.0, 1.0, 1.0)
    assert (buyers.spend_30d, buyers.avg_order_value) == (400.0, 400.0)
    assert (browsers.events_30d, browsers.spend_30d, browsers.buyers_30d) == (1.0, 0.0, 0.0)
    assert buyers.top_categories == [("shoes", 2)] and browsers.top_categories == [("books", 3)]
    assert buyers.name == "active frequent big spenders"
    assert browsers.name == "lapsed occasional browsers"


def test_text_and_json(pipeline: PartitionWorker) -> None:
    report = segment_report(pipeline)
    text = format_report(report)
    assert "segment 1: active frequent big spenders - 2 users (40%)" in text
    assert "segment 4: lapsed occasional browsers - 3 users (60%)" in text
    assert "never bought" in text and "shoes (2)" in text
    data = json.loads(json.dumps(to_json(report)))
    assert [d["id"] for d in data] == [1, 4]
    assert data[0]["top_categories"] == [["shoes", 2]] and data[1]["days_since_purchase"] is None
    assert format_report([]) == "no segmented users"


def test_every_segmented_user_is_counted_once_on_real_segments(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    simulate_to_file(events, users=150, days=5, seed=9)
    p = from_events(str(events))
    report = segment_report(p)
    assert sum(s.users for s in report) == len(p.profiles) == sum(p.segment_sizes)
    assert [s.users for s in report] == [n for n in p.segment_sizes if n]
    assert sum(s.share for s in report) == pytest.approx(1.0)
    assert len(report) >= 2 and all(0 <= s.id < 8 for s in report)


def test_cli_from_events_and_from_a_checkpoint_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "e.parquet"
    simulate_to_file(events, users=60, days=3, seed=2)
    out = tmp_path / "s.json"
    assert cli.main(["segments", "--events", str(events), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    from_file = json.loads(out.read_text())
    assert from_file and all(f"segment {s['id']}: {s['name']}" in printed for s in from_file)
    # the same state, as a server's checkpoint
    p = from_events(str(events))
    write_checkpoint(tmp_path / "data" / "checkpoints", 7, snapshot.dumps(snapshot.take(p, offset=7)))
    loaded = from_checkpoint(str(tmp_path / "data"))
    assert loaded is not None and loaded.segment_sizes == p.segment_sizes
    assert cli.main(["segments", "--data-dir", str(tmp_path / "data"), "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == from_file
    assert from_checkpoint(str(tmp_path / "nothing")) is None
    assert cli.main(["segments", "--data-dir", str(tmp_path / "nothing")]) == 1
