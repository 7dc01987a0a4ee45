"""Score over gRPC: the server's item model trained through Track calls ranks candidates for known and
unknown users; the item model's labels and quality reach /metrics."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import grpc
import pytest

from server._gen.portrait.v1 import portrait_pb2 as pb
from server.domain.units import DAY
from tests.conftest import uid


# -- Score over gRPC ----------------------------------------------------------------------------
def _metric(server: Any, name: str, labels: dict[str, str] | None = None) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
        text = r.read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(want + " "))


def _pb(user: str, t: float, kind: int, item: str, category: str) -> pb.Event:
    m = pb.Event(event_id=uid("e"), user_id=user, type=kind, item_id=item, category=category, price=25.0)  # type: ignore[arg-type]
    m.event_time.FromNanoseconds(int(t * 1e9))
    return m


async def test_score_ranks_for_known_and_unknown_users_over_grpc(stub: Any, server: Any) -> None:
    """Train the server's item model through Track calls, then rank: a hit before a dud for an unknown
    user, and for known users items of their own favourite category first.

    Half the users buy in category X and browse Y, the other half the opposite; everyone views the
    dud item (never bought) and then the hit (always bought). The events sit just inside the item
    horizon before "now", so the last event (2 minutes ahead, within the allowed 5) moves the
    watermark past every decision: all labels resolve, the negatives too.
    """
    run = uid("s")
    x_cat, y_cat, z_cat = f"{run}-x", f"{run}-y", f"{run}-z"
    hit, dud = f"{run}-hit", f"{run}-dud"
    now = time.time()
    t = now - DAY + 5.0
    view, buy = pb.EVENT_TYPE_VIEW, pb.EVENT_TYPE_PURCHASE
    events = []
    for u in range(160):
        user = f"{run}-u{u}"
        mine, other = (x_cat, y_cat) if u % 2 == 0 else (y_cat, x_cat)
        steps = []
        for k in range(2):
            liked, skipped = f"{mine}-{(u + k) % 10}", f"{other}-{(u + k + 5) % 10}"
            steps += [(view, liked, mine), (buy, liked, mine), (view, skipped, other)]
        steps += [(view, dud, z_cat), (view, hit, z_cat), (buy, hit, z_cat)]
        events += [_pb(user, t + 0.01 * j, kind, item, cat) for j, (kind, item, cat) in enumerate(steps)]
        t += 0.25
    before = {y: _metric(server, "portrait_labels_total", {"label": y, "model": "item"}) for y in ("positive",
                                                                                                 "negative")}
    risk_before = _metric(server, "portrait_risk_score_count")
    r = await stub.TrackBatch(pb.TrackBatchRequest(events=events))
    assert (r.accepted, len(r.rejected)) == (len(events), 0)
    # Events past the horizon resolve the negatives, at most PORTRAIT_LABELS_PER_EVENT per event: send
    # some until they are all learnt (a few batches; the bound keeps the loop finite).
    trailing = 0
    for _ in range(40):
        await stub.TrackBatch(pb.TrackBatchRequest(events=[
            _pb(uid(), now + 120.0 + 0.001 * k, view, f"{run}-other", z_cat) for k in range(50)]))
        trailing += 50
        if _metric(server, "portrait_labels_total", {"label": "negative", "model": "item"}) \
                - before["negative"] >= 160 * 3:
            break
    after = {y: _metric(server, "portrait_labels_total", {"label": y, "model": "item"}) for y in before}
    assert after["positive"] - before["positive"] >= 160 * 3
    assert after["negative"] - before["negative"] >= 160 * 3  # the watermark passed them
    assert _metric(server, "portrait_risk_score_count") - risk_before == len(events) + trailing

    async def rank(user: str, cands: list[tuple[str, str]]) -> list[tuple[str, float]]:
        resp = await stub.Score(pb.ScoreRequest(user_id=user, candidates=[
            pb.Candidate(item_id=i, category=c, price=25.0) for i, c in cands]))
        return [(s.item_id, s.probability) for s in resp.items]

    got = await rank(uid("stranger"), [(dud, z_cat), (hit, z_cat)])  # an unknown user: cold start
    assert [i for i, _ in got] == [hit, dud]
    assert all(0.0 < p < 1.0 for _, p in got)
    fresh_x, fresh_y = (f"{run}-x-new", x_cat), (f"{run}-y-new", y_cat)  # never seen items
    assert [i for i, _ in await rank(f"{run}-u0", [fresh_y, fresh_x])] == [fresh_x[0], fresh_y[0]]
    assert [i for i, _ in await rank(f"{run}-u1", [fresh_x, fresh_y])] == [fresh_y[0], fresh_x[0]]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Score(pb.ScoreRequest(user_id="u", candidates=[pb.Candidate(item_id="a")] * 501))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "candidates" in info.value.details()
    server.core.worker.refresh_gauges()  # the server does this every second; done here to not wait
    assert 0.5 < _metric(server, "portrait_model_roc_auc", {"model": "item"}) <= 1.0
    assert _metric(server, "portrait_model_log_loss", {"model": "item"}) > 0.0


# -- Recommend over gRPC ------------------------------------------------------------------------
async def test_recommend_learns_from_purchases_and_answers_unknown_users(stub: Any, server: Any) -> None:
    """Shoppers view a few items of their category and buy the one they carted (the carted item is never the
    latest one they viewed). Recommend ranks, for a new shopper who did the same minus the purchase, the carted
    item first (learnt from the others' purchases, not recency); an unknown user gets the popular items."""
    run = uid("r")
    t = time.time() - 3600.0
    view, cart, buy = pb.EVENT_TYPE_VIEW, pb.EVENT_TYPE_ADD_TO_CART, pb.EVENT_TYPE_PURCHASE

    def session(user: str, u: int, purchase: bool) -> list[pb.Event]:
        cat = f"{run}-c{u % 3}"
        items = [f"{cat}-i{(u + j) % 12}" for j in range(4)]
        steps = [(view, items[0]), (cart, items[0]), (view, items[1]), (view, items[2]), (view, items[3])]
        if purchase:
            steps.append((buy, items[0]))
        return [_pb(user, t + 0.5 * j, kind, item, cat) for j, (kind, item) in enumerate(steps)]

    events = []
    for u in range(120):
        events += session(f"{run}-u{u}", u, purchase=True)
        t += 5.0
    newcomer = f"{run}-new"
    events += session(newcomer, 7, purchase=False)
    r = await stub.TrackBatch(pb.TrackBatchRequest(events=events, wait_visible=True))
    assert (r.accepted, len(r.rejected)) == (len(events), 0)

    got = await stub.Recommend(pb.RecommendRequest(user_id=newcomer, k=3))
    assert len(got.items) == 3
    assert got.items[0].item_id == f"{run}-c1-i7"  # the carted item, viewed three items ago
    assert [s.probability for s in got.items] == sorted((s.probability for s in got.items), reverse=True)
    assert all(0.0 < s.probability < 1.0 for s in got.items)

    default = await stub.Recommend(pb.RecommendRequest(user_id=newcomer))
    assert len(default.items) == 10 and len({s.item_id for s in default.items}) == 10  # k = 0: the default, 10

    stranger = await stub.Recommend(pb.RecommendRequest(user_id=uid("stranger"), k=5))  # cold start
    popular = server.core.worker.trainer.top_items.top("", 20)  # the most touched items (of every test so far)
    assert len(stranger.items) == 5 and {s.item_id for s in stranger.items} <= set(popular)

    for bad in (-1, 101):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recommend(pb.RecommendRequest(user_id=newcomer, k=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Recommend(pb.RecommendRequest(user_id="", k=3))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in info.value.details()
