"""``portrait evaluate`` on the simulator with drift: online learning beats a frozen model after the drift and
recovers its pre-drift quality within a bounded number of events (assertions on seeded quality, not time);
the metric helpers against scikit-learn; the CLI's JSON and plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from server import cli
from server.domain.events import Event, EventType
from server.models.ranking import ITEM_INPUTS
from server.models.user import PROPENSITY_INPUTS
from server.tools.evaluate import (
    DAY,
    MODELS,
    Replay,
    _weighted_auc,
    evaluate,
    heuristic_scores,
    parse_duration,
    replay,
)
from server.tools.simulate import START, simulate, simulate_to_file
from server.worker.partition import ITEM, PROPENSITY

USERS, DAYS, DRIFT_DAY, STATIC_DAYS, SEED = 600, 14, 7, 3, 0


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(simulate(users=USERS, days=DAYS, drift_day=DRIFT_DAY, seed=SEED))


@pytest.fixture(scope="module")
def rep(events: list[Event]) -> Replay:
    return replay(events)


@pytest.fixture(scope="module", params=["item", "user"])
def result(request: pytest.FixtureRequest, rep: Replay) -> dict[str, Any]:
    return evaluate(rep, request.param, static_days=STATIC_DAYS, bootstrap=200, split_days=DRIFT_DAY)


def test_replay_runs_every_event_through_the_pipeline(events: list[Event], rep: Replay) -> None:
    assert (rep.events, rep.rejected, rep.duplicates) == (len(events), 0, 0)
    assert len(rep.worker.profiles) == len({e.user_id for e in events})
    assert rep.first_time == events[0].event_time and rep.last_time == events[-1].event_time
    for model, n_inputs in ((ITEM, len(ITEM_INPUTS)), (PROPENSITY, len(PROPENSITY_INPUTS))):
        d = rep.decisions[model]
        assert len(d.t) > 10_000 and 0.005 < np.mean(d.y) < 0.05
        assert all(len(x) == n_inputs for x in d.x[:100])
        assert all(g for g in d.group)  # every decision knows its user (for the bootstrap)
        assert all(k >= t for k, t in zip(d.known_at, d.t))  # labels are known after the decision


def test_online_beats_static_after_the_drift(result: dict[str, Any]) -> None:
    before, after = result["periods"]["before"], result["periods"]["after"]
    # the frozen model degrades at the drift; the online one does not
    assert after["static"]["roc_auc"] < before["static"]["roc_auc"] - 0.05
    assert after["online"]["roc_auc"] > after["static"]["roc_auc"] + 0.1
    # and it beats the daily batch retrain and the rule after the drift too
    assert after["online"]["roc_auc"] > after["periodic"]["roc_auc"] + 0.05
    assert after["online"]["roc_auc"] > after["heuristic"]["roc_auc"]
    assert after["online"]["log_loss"] < after["static"]["log_loss"]
    # over the whole evaluation: paired bootstrap over users, the interval excludes 0
    lo, hi = result["bootstrap"]["static"]["ci95"]
    assert 0.0 < lo < result["bootstrap"]["static"]["auc_diff"] < hi


def test_online_recovers_its_pre_drift_auc_within_three_days_of_events(result: dict[str, Any],
                                                                     events: list[Event]) -> None:
    pre = result["periods"]["before"]["online"]["roc_auc"]
    drift = START + DRIFT_DAY * DAY
    post = [d for d in result["per_day"] if d["day"] >= "2026-01-08"]
    recovered = next(i for i, d in enumerate(post) if d["online_auc"] >= pre - 0.02)
    assert recovered <= 2  # the drift day itself or one of the two after it
    end = drift + (recovered + 1) * DAY
    n_events = sum(1 for e in events if drift <= e.event_time < end)  # type: ignore[operator]
    assert n_events <= 12_000  # ~3 days of this shop's traffic
    # and it stays there, on average over the following days
    assert np.mean([d["online_auc"] for d in post[recovered:]]) >= pre - 0.02


def test_result_shape_and_consistency(result: dict[str, Any]) -> None:
    assert set(result["models"]) == set(MODELS)
    n = result["models"]["online"]["decisions"]
    for m in result["models"].values():
        assert m["decisions"] == n
        assert 0.5 < m["roc_auc"] < 1.0 and 0.0 < m["pr_auc"] < 1.0 and 0.0 < m["log_loss"] < 1.0
        assert 0.0 <= m["f1"] <= 1.0 and 0.0 < m["threshold"] < 1.0
        assert m["positive_rate"] == result["models"]["online"]["positive_rate"]
    assert sum(d["decisions"] for d in result["per_day"]) == n
    for name, cal in result["calibration"].items():  # equal-count bins covering every decision
        sizes = [b["n"] for b in cal["bins"]]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1, name
        predicted = [b["predicted"] for b in cal["bins"]]
        assert predicted == sorted(predicted) and 0.0 <= cal["ece"] < 0.5, name
        observed = sum(b["observed"] * b["n"] for b in cal["bins"]) / n
        assert observed == pytest.approx(result["models"]["online"]["positive_rate"])
    assert [d["day"] for d in result["per_day"]] == sorted(d["day"] for d in result["per_day"])
    assert result["per_day"][0]["day"] == "2026-01-04"  # after the 3 static days
    horizon = 86_400.0 if result["task"] == "item" else 3600.0
    assert result["horizon_s"] == horizon
    last_day = START + DAYS * DAY - horizon  # decisions closer to the end cannot settle: not evaluated
    assert result["per_day"][-1]["day"] <= cli_day(last_day)


def cli_day(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d")


def test_weighted_auc_matches_scikit_learn_with_ties_and_repeats() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.2
    p = np.round(rng.random(500) + 0.3 * y, 1)  # coarse scores: many ties
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ties = np.concatenate(([0], np.cumsum(sp[1:] != sp[:-1])))
    assert _weighted_auc(order, y, ties, np.ones(500)) == pytest.approx(roc_auc_score(y, p))
    w = rng.integers(0, 3, 500).astype(float)
    rows = np.repeat(np.arange(500), w.astype(int))
    assert _weighted_auc(order, y, ties, w) == pytest.approx(roc_auc_score(y[rows], p[rows]))


def test_heuristic_ranks_carted_above_viewed_above_unseen() -> None:
    def item_row(**kw: float) -> list[float]:
        return [kw.get(n, 0.0) for n in ITEM_INPUTS]

    x = np.array([item_row(), item_row(log_item_views=math.log1p(3)), item_row(is_add_to_cart=1.0),
                  item_row(log_item_favorites=math.log(2), conversion_rate_30d=0.5)])
    s = heuristic_scores("item", x)
    assert s[0] < s[1] < s[2] < s[3]


def test_parse_duration() -> None:
    assert [parse_duration(v) for v in ("24h", "90m", "45s", "2d", "3600")] == [86400.0, 5400.0, 45.0, 172800.0,
                                                                               3600.0]
    for bad in ("", "h", "-1h", "0", "nanh"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cli_evaluate_writes_json_of_the_documented_shape_and_a_plot(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.parquet"
    simulate_to_file(events, users=80, days=6, drift_day=3, seed=3)
    out, png, rel = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "rel.png"
    assert cli.main(["evaluate", str(events), "--task", "user", "--horizon", "2h", "--static-days", "2",
                     "--bootstrap", "20", "--json", str(out), "--plot", str(png), "--split-day", "3",
                     "--reliability", str(rel)]) == 0
    r = json.loads(out.read_text())
    assert (r["task"], r["horizon_s"]) == ("user", 7200.0)
    assert set(r["models"]) == {"online", "static", "periodic", "heuristic"}
    assert {"roc_auc", "log_loss", "pr_auc", "f1", "decisions"} <= set(r["models"]["online"])
    assert set(r["per_day"][0]) >= {"day", "online_auc", "static_auc"}
    assert set(r["periods"]) == {"before", "after"}
    assert png.read_bytes()[:8] == rel.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(r["calibration"]["online"]) == {"bins", "ece"}
    printed = capsys.readouterr().out
    assert "| online |" in printed and r["per_day"][0]["day"] in printed


def test_invalid_and_duplicate_events_are_counted_not_applied() -> None:
    t = START + 1000.0
    good = Event("e1", "u", EventType.VIEW, t, item_id="i")
    rep = replay([good, Event("e2", "u", EventType.VIEW, t, item_id="i", price=-1.0), good,
                  Event("e3", "u", EventType.VIEW, None, item_id="i")])
    assert (rep.events, rep.rejected, rep.duplicates) == (2, 2, 1)
    assert rep.worker.profiles["u"].version == 1
