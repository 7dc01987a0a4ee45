"""River online models: purchase propensity and user segments.

Both are River's math — ``StandardScaler | LogisticRegression`` (AdaGrad) and
``StandardScaler | KMeans`` — over compact float lists instead of dicts: the inputs are
dense vectors of fixed names (``PROPENSITY_INPUTS``, ``SEGMENT_INPUTS``), so every
per-feature dict River keeps (counts, means, variances, weights, AdaGrad sums, centres)
is a list indexed like the vector. ``tests/unit/models/test_user.py`` checks them against River's
own estimators on the same streams. State is plain lists and floats: small, picklable,
and summed in a fixed order (exact replays; see ``DenseKMeans``).

>>> from server.domain.profile import UserProfile
>>> prop = Propensity()
>>> x = prop.vector(UserProfile().features(), event_type=1, t=0.0)
>>> 0.0 < prop.predict(x) < 1.0
True
>>> prop.learn(x, True)
>>> seg = Segmenter(k=4)
>>> v = seg.vector(UserProfile().features(), 0, 0.0)
>>> seg.learn(v)
>>> 0 <= seg.predict(v) < 4
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from operator import mul
from typing import Any

import numpy as np

from server.domain.events import EventType
from server.domain.profile import COUNT_FEATURES
from server.domain.units import DAY, HOUR

_LOG_FEATURES = (
    *COUNT_FEATURES,
    "spend_7d", "spend_30d", "lifetime_events", "lifetime_purchases", "lifetime_spend", "avg_order_value",
    "sessions_7d", "avg_viewed_price_30d", "avg_purchased_price_30d",
)
PROPENSITY_INPUTS = (
    *(f"log_{n}" for n in _LOG_FEATURES),
    "conversion_rate_30d", "log_hours_since_purchase", "never_purchased", "log_days_since_first_seen",
    *(f"is_{t.name.lower()}" for t in EventType), "hour_sin", "hour_cos",
)
_TYPE_VALUES = tuple(int(t) for t in EventType)  # iterating an Enum is slow on the hot path
_COUNTS_30D = tuple(f"{t.plural}_30d" for t in EventType)
SEGMENT_INPUTS = (
    "log_days_since_purchase", "log_events_30d", "log_spend_30d", "log_avg_order_value", "log_categories",
    "log_sessions_7d", "log_purchases_30d",
)
_INTERCEPT_LR = 0.01  # River's LogisticRegression default (a constant schedule, whatever the optimizer)
_ADAGRAD_EPS = 1e-8  # River's optim.AdaGrad default
_CLIP_GRADIENT = 1e12  # River's LogisticRegression default


def _since(now: float, then: float, unit: float) -> float:
    return math.log1p(max(0.0, now - then) / unit)


class DenseScaler:
    """River's ``preprocessing.StandardScaler`` (running Welford mean and variance, ``x / 0`` is 0) for
    vectors that always carry every feature: one count, and per-feature lists instead of dicts.

    >>> s = DenseScaler(2)
    >>> for x in ([1.0, 5.0], [3.0, 5.0]):
    ...     s.learn(x)
    >>> s.transform([3.0, 7.0])   # (3 - 2) / 1; the second feature has no variance yet
    [1.0, 0.0]
    """

    __slots__ = ("means", "n", "stds", "vars")

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.means = [0.0] * dim
        self.vars = [0.0] * dim
        self.stds = [0.0] * dim  # vars ** 0.5, kept so that transform (every prediction) takes no root

    def learn(self, x: Sequence[float]) -> None:
        """Fold one vector into the running statistics (River's update, term for term)."""
        self.n = n = self.n + 1
        d = [xi - m for xi, m in zip(x, self.means)]
        self.means = means = [m + di / n for m, di in zip(self.means, d)]
        self.vars = vars_ = [v + (di * (xi - m) - v) / n for v, di, xi, m in zip(self.vars, d, x, means)]
        self.stds = [v**0.5 if v > 0 else 0.0 for v in vars_]

    def transform(self, x: Sequence[float]) -> list[float]:
        """``(x - mean) / std`` per feature, 0 where the variance is 0."""
        return [(xi - m) / s if s else 0.0 for xi, m, s in zip(x, self.means, self.stds)]

    def __getstate__(self) -> tuple[int, list[float], list[float]]:
        return self.n, self.means, self.vars

    def __setstate__(self, state: tuple[int, list[float], list[float]]) -> None:
        self.n, self.means, self.vars = state
        self.stds = [v**0.5 if v > 0 else 0.0 for v in self.vars]


class Propensity:
    """P(purchase within the horizon after this event): River's ``StandardScaler | LogisticRegression``,
    plus replay of recent labels.

    Per-feature adaptive steps (``optim.AdaGrad``, ``adaptive=True``) by default: on the simulator with
    drift they beat plain SGD at 0.005 and 0.01 before and after the drift (see docs/learning.md).
    The math of one step is River's (log loss, intercept step 0.01, gradient clip 1e12, AdaGrad eps 1e-8, L2
    added to the gradient) over lists; only the order of the dot product's terms may differ from River's.

    **Replay** (``replay`` > 0): after its own step, each label is followed by one mini-batch step on
    ``replay`` labels drawn (seeded) from the last ``replay_window`` labels, its steps ``replay_boost`` times
    the model's. One pass of SGD over delayed, rare labels (8 % positives) stays far from the optimum a
    batch fit reaches on the same inputs; revisiting recent labels closes most of that gap while staying
    online (bounded memory: the window; adapting: old labels leave it). On real shoppers (taobao-dev, user
    task) ROC AUC 0.580 → 0.625, level with a daily batch refit (0.626); see docs/learning.md.
    ``replay=0`` is River's model exactly.
    """

    def __init__(self, learning_rate: float = 0.05, l2: float = 0.0, adaptive: bool = True, replay: int = 64,
                 replay_window: int = 10_000, replay_boost: float = 8.0, seed: int = 0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.adaptive = adaptive
        self.replay = replay
        self.replay_window = replay_window
        self.replay_boost = replay_boost
        dim = len(PROPENSITY_INPUTS)
        self._scaler = DenseScaler(dim)
        self._weights = [0.0] * dim
        self._g2 = [0.0] * dim  # AdaGrad's running sums of squared gradients
        self._intercept = 0.0
        self._replay_x = np.zeros((replay_window if replay else 0, dim))
        self._replay_y = np.zeros(replay_window if replay else 0)
        self._labels = 0  # labels learnt (the replay window's write position is labels % window)
        self._rng = np.random.default_rng(seed)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Checkpoints from before replay (no replay fields) load with an empty window and replay on."""
        if "replay" not in state:
            fresh = Propensity()
            state = {**{k: v for k, v in fresh.__dict__.items() if k.startswith(("replay", "_replay", "_rng"))},
                     "_labels": 0, **state}
        self.__dict__.update(state)

    @staticmethod
    def vector(features: dict[str, float], event_type: int, t: float) -> tuple[float, ...]:
        """The model input for a decision at time ``t`` (order: ``PROPENSITY_INPUTS``)."""
        xs = [math.log1p(max(0.0, features[n])) for n in _LOG_FEATURES]
        last_purchase = features["last_purchase_ts"]
        xs.append(features["conversion_rate_30d"])
        xs.append(_since(t, last_purchase, HOUR) if last_purchase else 0.0)
        xs.append(0.0 if last_purchase else 1.0)
        xs.append(_since(t, features["first_seen_ts"], DAY))
        xs.extend(1.0 if v == event_type else 0.0 for v in _TYPE_VALUES)
        angle = 2 * math.pi * ((t % DAY) / DAY)
        xs.extend((math.sin(angle), math.cos(angle)))
        return tuple(xs)

    def _raw(self, z: list[float]) -> float:
        return sum(map(mul, self._weights, z)) + self._intercept

    def predict(self, x: Sequence[float]) -> float:
        """Probability of a purchase for input vector ``x``."""
        return _sigmoid(self._raw(self._scaler.transform(x)))

    def learn(self, x: Sequence[float], y: bool) -> None:
        """Learn one resolved label (the scaler first, then one step on the scaled input, as River's pipeline)."""
        self._scaler.learn(x)
        z = self._scaler.transform(x)
        g = _log_loss_gradient(y, self._raw(z))
        g = min(max(g, -_CLIP_GRADIENT), _CLIP_GRADIENT)
        self._intercept -= _INTERCEPT_LR * g
        w, l2, lr = self._weights, self.l2, self.learning_rate
        gs = [zi * g + l2 * wi for zi, wi in zip(z, w)] if l2 else [zi * g for zi in z]
        if self.adaptive:
            self._g2 = g2 = [a + gi * gi for a, gi in zip(self._g2, gs)]
            self._weights = [wi - lr / (a + _ADAGRAD_EPS) ** 0.5 * gi for wi, a, gi in zip(w, g2, gs)]
        else:
            self._weights = [wi - lr * gi for wi, gi in zip(w, gs)]
        if self.replay:
            self._replay_step(x, y)

    def _replay_step(self, x: Sequence[float], y: bool) -> None:
        """Remember the label in the window, then one mini-batch step on ``replay`` labels drawn from it."""
        window = self.replay_window
        self._replay_x[self._labels % window] = x
        self._replay_y[self._labels % window] = 1.0 if y else 0.0
        self._labels += 1
        rows = self._rng.integers(min(self._labels, window), size=self.replay)
        xs, ys = self._replay_x[rows], self._replay_y[rows]
        stds = np.array(self._scaler.stds)
        z = np.where(stds > 0, (xs - np.array(self._scaler.means)) / np.where(stds > 0, stds, 1.0), 0.0)
        w = np.array(self._weights)
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w + self._intercept, -30.0, 30.0)))
        g = p - ys  # the log loss' gradient per row, as _log_loss_gradient
        boost = self.replay_boost
        self._intercept -= _INTERCEPT_LR * boost * float(g.mean())
        gw = z.T @ g / len(g) + self.l2 * w
        if self.adaptive:
            g2 = np.array(self._g2) + gw * gw
            self._g2 = g2.tolist()
            w = w - self.learning_rate * boost / np.sqrt(g2 + _ADAGRAD_EPS) * gw
        else:
            w = w - self.learning_rate * boost * gw
        self._weights = w.tolist()

    @property
    def weights(self) -> dict[str, float]:
        """The weights by input name (and ``"intercept"``), for inspection."""
        return {**dict(zip(PROPENSITY_INPUTS, self._weights)), "intercept": self._intercept}


def _sigmoid(z: float) -> float:
    """River's ``utils.math.sigmoid`` (saturates beyond +-30)."""
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1 / (1 + math.exp(-z))


def _log_loss_gradient(y: bool, raw: float) -> float:
    """River's ``optim.losses.Log().gradient`` for a boolean label and a raw score."""
    s = 1 if y else -1
    z = raw * s
    if z > 18.0:
        return math.exp(-z) * -s
    if z < -18.0:
        return float(-s)
    return -s / (math.exp(z) + 1.0)


class DenseKMeans:
    """River's streaming ``cluster.KMeans`` (p = 2) over dense vectors: centres are lists.

    Same initialisation as River's (``random.Random(seed).gauss(mu, sigma)`` drawn centre by centre,
    feature by feature: the order River's lazy ``defaultdict`` centres are filled in by the first
    prediction), same update (the closest centre moves ``halflife`` of the way to ``x``), same
    tie-break (the lowest index). The distance is ``math.dist`` (C, one call per centre, summed in a
    fixed order: deterministic across processes, and more accurate than River's sum of squares).

    >>> km = DenseKMeans(n_clusters=2, dim=1, seed=1)
    >>> km.learn_predict([10.0]) == km.predict([10.0])
    True
    """

    __slots__ = ("centers", "halflife")

    def __init__(self, n_clusters: int, dim: int, halflife: float = 0.5, mu: float = 0.0, sigma: float = 1.0,
                 seed: int | None = None) -> None:
        rng = random.Random(seed)
        self.halflife = halflife
        self.centers = [[rng.gauss(mu, sigma) for _ in range(dim)] for _ in range(n_clusters)]

    def predict(self, x: Sequence[float]) -> int:
        """Index of the closest centre (the lowest one on a tie)."""
        dist = math.dist
        ds = [dist(c, x) for c in self.centers]
        return ds.index(min(ds))

    def learn_predict(self, x: Sequence[float]) -> int:
        """Move the closest centre towards ``x``; return its index.

        It is also what ``predict(x)`` returns afterwards: each coordinate of the moved centre lies between
        its old value and ``x``'s (rounding is monotone), so its distance can only shrink, and no other
        centre moved — River's ``learn_one`` followed by ``predict_one`` in one distance pass.
        """
        closest = self.predict(x)
        c, h = self.centers[closest], self.halflife
        for i, xi in enumerate(x):
            c[i] += h * (xi - c[i])
        return closest

    def __getstate__(self) -> tuple[float, list[list[float]]]:
        return self.halflife, self.centers

    def __setstate__(self, state: tuple[float, list[list[float]]]) -> None:
        self.halflife, self.centers = state


class Segmenter:
    """User segments: River's ``StandardScaler | KMeans(k)`` over lists; ids are the stable centre
    indices 0..k-1 (a centre moves but keeps its index)."""

    def __init__(self, k: int = 8, halflife: float = 0.5, seed: int = 42) -> None:
        self.k = k
        self.halflife = halflife
        self.seed = seed
        self._scaler = DenseScaler(len(SEGMENT_INPUTS))
        self._kmeans = DenseKMeans(k, len(SEGMENT_INPUTS), halflife=halflife, seed=seed)

    @staticmethod
    def vector(features: dict[str, float], categories: int, t: float) -> tuple[float, ...]:
        """Recency, frequency, monetary and breadth, log-scaled (order: ``SEGMENT_INPUTS``)."""
        last_purchase = features["last_purchase_ts"] or features["first_seen_ts"]
        return (
            _since(t, last_purchase, DAY),
            math.log1p(sum(map(features.__getitem__, _COUNTS_30D))),
            math.log1p(features["spend_30d"]),
            math.log1p(features["avg_order_value"]),
            math.log1p(categories),
            math.log1p(features["sessions_7d"]),
            math.log1p(features["purchases_30d"]),
        )

    def learn(self, x: Sequence[float]) -> None:
        """Move the nearest centre towards ``x`` (River's pipeline: the scaler learns ``x`` first, then KMeans
        learns the scaled ``x``); ``predict(x)`` afterwards is the id of the centre that moved."""
        self._scaler.learn(x)
        self._kmeans.learn_predict(self._scaler.transform(x))

    def predict(self, x: Sequence[float]) -> int:
        """The nearest centre's id, without learning."""
        return self._kmeans.predict(self._scaler.transform(x))

    def scale(self, x: Sequence[float]) -> list[float]:
        """``x`` in the units of the centres: standard scores against every user vector learnt so far (0 is
        the population's mean)."""
        return self._scaler.transform(x)

    @property
    def centers(self) -> list[list[float]]:
        """The centres, in scaled units (order: ``SEGMENT_INPUTS``)."""
        return [list(c) for c in self._kmeans.centers]
