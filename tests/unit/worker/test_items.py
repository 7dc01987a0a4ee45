"""Unit tests of server.worker.items: recommendation candidates come from every source, purchases teach the
ranker with a deterministic sample of negatives, and Recommend's answers and refusals."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from server.domain.errors import InvalidArgument
from server.domain.events import Event, EventType
from server.metrics import Metrics
from server.worker.partition import PartitionWorker, WorkerConfig

T = 1_700_006_400.0


def _worker() -> PartitionWorker:
    w = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
    n = 0
    steps = (("a", EventType.VIEW), ("c", EventType.ADD_TO_CART), ("b", EventType.VIEW), ("c", EventType.PURCHASE))
    for u in range(30):  # everyone: views a, carts c, views b (all co-visited), buys c; all in "shoes"
        for item, kind in steps:
            n += 1
            w.apply(Event(f"e{n}", f"u{u}", kind, T + u * 3600 + n, item_id=item, category="shoes"))
    for j, (item, kind) in enumerate(steps[:3]):  # "me" did the same but has not bought yet
        w.apply(Event(f"x{j}", "me", kind, T + 40 * 3600 + j, item_id=item, category="shoes"))
    return w


def test_candidates_come_from_recent_covisited_category_and_popular_items() -> None:
    w = _worker()
    w.apply(Event("y0", "other", EventType.VIEW, T + 41 * 3600, item_id="a", category="shoes"))
    cands = w.items.candidates("other", ["shoes"], w.trainer)
    assert next(iter(cands)) == "a"  # the user's own recent item first
    assert {"b", "c"} <= set(cands)  # co-visited with a, and the category's most touched
    assert set(w.items.candidates("stranger", [], w.trainer)) == {"a", "b", "c"}  # cold start: popular items


def test_purchases_teach_the_ranker_and_recommend_puts_the_usual_buy_first() -> None:
    w = _worker()
    assert w.recommend("me", 3)[0][0] == "c"  # not the latest item (b): what the others bought
    e = Event("x2", "me", EventType.PURCHASE, T + 41 * 3600, item_id="c", category="shoes")
    examples = w.items.purchase_examples(e, ["shoes"], T + 41 * 3600, w.trainer)
    assert [y for _, y in examples].count(True) == 1 and len(examples) == 3  # c, and a and b as negatives
    assert examples == w.items.purchase_examples(e, ["shoes"], T + 41 * 3600, w.trainer)  # deterministic
    assert w.items.purchase_examples(e, ["shoes"], T + 41 * 3600, w.trainer, negatives=1)[1:] != []


def test_recommend_refuses_bad_arguments_with_the_field() -> None:
    w = _worker()
    for k in (0, 101):
        with pytest.raises(InvalidArgument) as info:
            w.recommend("me", k)
        assert info.value.field == "k"
    with pytest.raises(InvalidArgument) as info:
        w.recommend("", 5)
    assert info.value.field == "user_id"
