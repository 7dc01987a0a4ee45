"""Unit tests of server.models.quality: exact ROC AUC against brute force (ties included), NaN for one class,
RollingQuality window eviction and log loss."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.models.quality import EPS, RollingQuality, roc_auc


def brute_auc(scores: list[float], labels: list[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


pairs = st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]) | st.floats(0, 1), st.booleans()),
                 min_size=2, max_size=60).filter(lambda ps: 0 < sum(y for _, y in ps) < len(ps))


@settings(deadline=None)  # no flaky deadline errors on a loaded CI machine
@given(pairs)
def test_roc_auc_equals_brute_force(ps: list[tuple[float, bool]]) -> None:
    scores, labels = [s for s, _ in ps], [y for _, y in ps]
    assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_roc_auc_known_values() -> None:
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0
    assert roc_auc([0.9, 0.1], [False, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert roc_auc([0.2, 0.2, 0.8, 0.1], [True, False, True, False]) == 0.875


def test_roc_auc_nan_for_one_class() -> None:
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))
    assert math.isnan(roc_auc([0.1, 0.2], [False, False]))
    assert math.isnan(roc_auc([], []))


def test_rolling_window_evicts_oldest() -> None:
    q = RollingQuality(window=4)
    q.add(0.9, False)  # a bad first prediction ...
    for p, y in [(0.8, True), (0.2, False), (0.7, True), (0.3, False)]:
        q.add(p, y)
    assert len(q) == 4  # ... evicted by the window
    assert q.roc_auc() == 1.0
    q.add(0.1, True)  # evicts (0.8, True)
    assert q.roc_auc() == roc_auc([0.2, 0.7, 0.3, 0.1], [False, True, False, True]) == 0.5


def test_rolling_auc_nan_until_both_classes() -> None:
    q = RollingQuality(window=10)
    assert math.isnan(q.roc_auc())
    q.add(0.4, True)
    assert math.isnan(q.roc_auc())
    q.add(0.3, False)
    assert q.roc_auc() == 1.0


def test_log_loss() -> None:
    q = RollingQuality(window=3)
    assert math.isnan(q.log_loss())
    q.add(0.8, True)
    q.add(0.4, False)
    assert q.log_loss() == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    q.add(1.0, True)  # a perfect prediction costs nothing
    q.add(0.5, False)  # window 3: evicts (0.8, True)
    assert q.log_loss() == pytest.approx(-(math.log(0.6) + 0.0 + math.log(0.5)) / 3)


def test_log_loss_is_clipped() -> None:
    q = RollingQuality(window=2)
    q.add(0.0, True)
    q.add(1.0, False)
    assert q.log_loss() == pytest.approx(-math.log(EPS), abs=0.01)  # 1 - (1 - EPS) is not exactly EPS
    assert math.isfinite(q.log_loss())
