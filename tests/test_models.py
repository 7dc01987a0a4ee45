"""Unit tests of server.models: input vectors, Propensity learning a synthetic signal (held-out exact AUC),
and Segmenter ids, stability and separation of distinct user groups."""

from __future__ import annotations

import collections
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from server.events import Event, EventType
from server.models import PROPENSITY_INPUTS, SEGMENT_INPUTS, Propensity, Segmenter
from server.profile import DAY, FEATURE_NAMES, HOUR, UserProfile
from server.quality import roc_auc

T = 1_700_006_400.0  # midnight UTC


def features(**kw: float) -> dict[str, float]:
    f = dict.fromkeys(FEATURE_NAMES, 0.0)
    f.update(kw)
    return f


def test_vector_lengths_and_names() -> None:
    p = UserProfile()
    p.update(Event("e1", "u1", EventType.PURCHASE, T, item_id="i", category="c", price=10.0))
    for f in (UserProfile().features(), p.features()):
        for et in EventType:
            assert len(Propensity.vector(f, int(et), T)) == len(PROPENSITY_INPUTS)
        assert len(Segmenter.vector(f, 3, T)) == len(SEGMENT_INPUTS)
    assert len(set(PROPENSITY_INPUTS)) == len(PROPENSITY_INPUTS)
    assert len(set(SEGMENT_INPUTS)) == len(SEGMENT_INPUTS)


def test_propensity_vector_values() -> None:
    x = dict(zip(PROPENSITY_INPUTS, Propensity.vector(
        features(carts_1h=math.e - 1, first_seen_ts=T - DAY * (math.e - 1)), int(EventType.ADD_TO_CART), T + 6 * HOUR)))
    assert math.isclose(x["log_carts_1h"], 1.0)
    assert math.isclose(x["log_days_since_first_seen"], math.log1p(math.e - 1 + 0.25))
    assert x["never_purchased"] == 1.0
    assert x["log_hours_since_purchase"] == 0.0
    assert [x[f"is_{t.name.lower()}"] for t in EventType] == [1.0 if t == EventType.ADD_TO_CART else 0.0
                                                             for t in EventType]
    assert math.isclose(x["hour_sin"], 1.0) and abs(x["hour_cos"]) < 1e-9  # 06:00 is a quarter turn
    bought = dict(zip(PROPENSITY_INPUTS, Propensity.vector(features(last_purchase_ts=T - 2 * HOUR), 1, T)))
    assert bought["never_purchased"] == 0.0
    assert math.isclose(bought["log_hours_since_purchase"], math.log1p(2.0))


def _stream(n: int, seed: int) -> list[tuple[tuple[float, ...], bool]]:
    """Users whose purchase probability grows with their recent add-to-carts; views are noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        carts = float(rng.choice([0, 0, 0, 1, 2, 3, 5]))
        views = float(rng.randrange(0, 30))
        f = features(carts_1h=carts, carts_24h=carts, carts_7d=carts, carts_30d=carts, views_1h=views,
                     views_24h=views, views_7d=views, views_30d=views, first_seen_ts=T - rng.randrange(0, 30 * DAY))
        t = T + rng.randrange(0, DAY)
        out.append((Propensity.vector(f, rng.randrange(1, 8), t), rng.random() < 0.03 + 0.15 * carts))
    return out


def test_propensity_learns_carts_drive_purchases() -> None:
    data = _stream(4000, seed=11)
    train, test = data[:3000], data[3000:]
    model = Propensity()
    for x, y in train:
        model.learn(x, y)
    scores = [model.predict(x) for x, _ in test]
    assert all(0.0 < s < 1.0 for s in scores)
    assert roc_auc(scores, [y for _, y in test]) > 0.75


def test_untrained_propensity_is_uninformative() -> None:
    test = _stream(500, seed=12)
    scores = [Propensity().predict(x) for x, _ in test]
    assert roc_auc(scores, [y for _, y in test]) == 0.5  # all equal scores: the learning test is meaningful


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(*(st.floats(0.0, 20.0) for _ in SEGMENT_INPUTS)), min_size=1, max_size=30),
       st.integers(2, 10))
def test_segment_ids_in_range_and_stable(xs: list[tuple[float, ...]], k: int) -> None:
    seg = Segmenter(k=k)
    for x in xs:
        sid = seg.learn_predict(x)
        assert 0 <= sid < k
        assert seg.predict(x) == sid
        assert seg.learn_predict(x) == sid  # the same input again, after learning it


def test_well_separated_groups_get_different_segments() -> None:
    rng = random.Random(3)
    seg = Segmenter(k=8)

    def light() -> tuple[float, ...]:
        return tuple(rng.gauss(0.5, 0.1) for _ in SEGMENT_INPUTS)

    def heavy() -> tuple[float, ...]:
        return tuple(rng.gauss(5.0, 0.1) for _ in SEGMENT_INPUTS)

    for i in range(2000):
        seg.learn_predict(light() if i % 2 else heavy())
    a = collections.Counter(seg.predict(light()) for _ in range(200)).most_common(1)[0]
    b = collections.Counter(seg.predict(heavy()) for _ in range(200)).most_common(1)[0]
    assert a[0] != b[0]
    assert a[1] >= 180 and b[1] >= 180
