"""`portrait evaluate --through-server`: a real server gets a simulated shop's events in time order and is asked
Score before each view; the decisions, their labels and the table are checked against the file itself."""

from __future__ import annotations

import json
from pathlib import Path

from server import cli
from server.domain.events import EventType
from server.domain.units import DAY
from server.tools.eventfile import read_events
from server.tools.simulate import simulate_to_file


def test_through_server_scores_every_view_after_the_static_days(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    events_file = tmp_path / "shop.csv"
    simulate_to_file(events_file, users=60, days=5, seed=4)
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", str(events_file), "--through-server", "--static-days", "3", "--bootstrap", "30",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    events = sorted(read_events(events_file), key=lambda e: e.event_time)  # type: ignore[arg-type, return-value]
    start = events[0].event_time + 3 * DAY  # type: ignore[operator]
    views = [e for e in events if e.type == EventType.VIEW and e.item_id and e.event_time >= start]  # type: ignore[operator]
    assert r["decisions"] == len(views) > 100  # one Score per view after day 3, nothing else
    purchases: dict[tuple[str, str], list[float]] = {}
    for p in events:
        if p.type == EventType.PURCHASE:
            purchases.setdefault((p.user_id, p.item_id), []).append(p.event_time)  # type: ignore[arg-type]
    bought = sum(any(v.event_time < t <= v.event_time + DAY  # type: ignore[operator]
                     for t in purchases.get((v.user_id, v.item_id), ())) for v in views)
    assert r["positives"] == bought > 0
    assert set(r["learners"]) == {"score", "heuristic", "popular"}
    assert all(0.0 <= v["roc_auc"] <= 1.0 for v in r["learners"].values())
    assert r["learners"]["score"]["roc_auc"] > 0.6  # the simulator's shoppers buy what they carted: learnable
    assert "Score at views, through a real server" in printed and "| heuristic |" in printed
    assert cli.main(["evaluate", str(events_file), "--through-server", "--task", "user"]) == 2
