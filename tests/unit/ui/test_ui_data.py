"""The explorer's data: the same row GetProfile serves, pseudonyms never listed, erased users gone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.domain.errors import InvalidArgument, NotFound
from server.domain.pseudonym import Pseudonymizer
from server.metrics import Metrics
from server.tools.segments import segment_report
from server.tools.simulate import simulate
from server.ui import pages
from server.ui.data import RADAR_AXES, Explorer
from server.worker.core import ProfileCore
from server.worker.partition import PartitionWorker, WorkerConfig


class RowReader:
    """The online store's read, from the worker's rows (what the materializer would have written)."""

    def __init__(self, worker: PartitionWorker) -> None:
        self.worker = worker

    def read(self, user: str) -> dict[str, Any] | None:
        return self.worker.row(user) if user in self.worker.profiles else None


def _core(ids: Pseudonymizer | None = None) -> tuple[ProfileCore, list[str]]:
    worker = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    ids = ids or Pseudonymizer.identity()
    users = set()
    for e in simulate(users=40, days=4, seed=3):
        users.add(e.user_id)
        e.user_id = ids.map(e.user_id)
        worker.apply(e)
    online = SimpleNamespace(online_healthy=True)  # the materializer's health flag, all the explorer reads of it
    core = ProfileCore(worker, online, RowReader(worker), ids=ids)  # type: ignore[arg-type]
    return core, sorted(users)


async def test_the_user_view_is_get_profiles_row_plus_the_workers_charts() -> None:
    core, users = _core()
    explorer = Explorer(core, core.worker.metrics.registry)
    v = await explorer.user(users[0])
    again = await core.get_profile(users[0])
    assert v.row.pop("event_timestamp_us") < again.pop("event_timestamp_us")  # (the fake store builds a new row)
    assert v.row == again
    p = core.worker.profiles[users[0]]
    assert sum(map(sum, v.activity)) == p.lifetime_events and len(v.recent) == min(20, p.lifetime_events)
    assert [s[1] for s in v.radar] == ["population", "segment", "user"]
    assert all(len(s[2]) == len(RADAR_AXES) and all(0 <= r <= 1 for r in s[2]) for s in v.radar)
    assert v.scores == await core.score(users[0], [(i, c, pr) for i, c, pr in _candidates(v.recent)])
    html = pages.user_page(users[0], v)
    assert html.count('class="cell') == 168 and f'data-value="{v.row["purchase_propensity"]!r}"' in html


def _candidates(recent: list[Any]) -> list[tuple[str, str, float]]:
    seen: dict[str, tuple[str, str, float]] = {}
    for _, _, item, cat, price in recent:
        if item and item not in seen:
            seen[item] = (item, cat, price)
    return list(seen.values())


async def test_unknown_erased_and_bad_ids() -> None:
    core, users = _core()
    explorer = Explorer(core, core.worker.metrics.registry)
    with pytest.raises(NotFound):
        await explorer.user("nobody")
    with pytest.raises(InvalidArgument):
        await explorer.user("x" * 129)
    core.worker.erase(users[1])
    with pytest.raises(NotFound):
        await explorer.user(users[1])


async def test_population_matches_portrait_segments_and_lists_no_pseudonyms() -> None:
    core, users = _core()
    v = await Explorer(core, core.worker.metrics.registry).population()
    report = segment_report(core.worker)
    assert [(s.id, s.name, s.users) for s in v.segments] == [(s.id, s.name, s.users) for s in report]
    assert v.users == len(users) and v.recent_users and all(u in users for _, u in v.recent_users)
    assert sum(n for _, n in v.tags) > 0
    html = pages.home_page(v)
    assert all(s.name in html for s in report)

    ids = Pseudonymizer([("1", b"k" * 32)])
    core, users = _core(ids)
    v = await Explorer(core, core.worker.metrics.registry).population()
    assert v.pseudonymized and v.recent_users == []
    html = pages.home_page(v)
    assert "cannot list raw ids" in html and not any(ids.map(u) in html for u in users)
    view = await Explorer(core, core.worker.metrics.registry).user(users[0])  # looked up by the raw id the caller types
    assert view.row["user_id"] == users[0] and ids.map(users[0]) not in pages.user_page(users[0], view)
