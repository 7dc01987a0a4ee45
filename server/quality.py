"""Rolling prequential model quality from resolved labels.

Exact ROC AUC over the last ``window`` labels (River's ``metrics.ROCAUC``
with its default 10 thresholds badly underestimates AUC at a ~2% base rate,
so it is not used here), and the mean log loss over the same window.

>>> q = RollingQuality(window=100)
>>> for p, y in [(0.9, True), (0.8, False), (0.3, True), (0.1, False)]:
...     q.add(p, y)
>>> q.roc_auc()
0.75
>>> round(q.log_loss(), 4)
0.756
"""

from __future__ import annotations

import math
from collections import deque

EPS = 1e-15


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """Exact ROC AUC (ties count half); NaN when only one class is present."""
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return math.nan
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if labels[order[k]])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


class RollingQuality:
    """The last ``window`` (probability, label) pairs of one model."""

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._pairs: deque[tuple[float, bool]] = deque(maxlen=window)

    def add(self, p: float, y: bool) -> None:
        """Record one prediction with its resolved label."""
        self._pairs.append((p, y))

    def __len__(self) -> int:
        return len(self._pairs)

    def roc_auc(self) -> float:
        """Exact ROC AUC over the window (NaN until both classes are seen)."""
        return roc_auc([p for p, _ in self._pairs], [y for _, y in self._pairs])

    def log_loss(self) -> float:
        """Mean log loss over the window (NaN when empty)."""
        if not self._pairs:
            return math.nan
        total = 0.0
        for p, y in self._pairs:
            p = min(max(p, EPS), 1 - EPS)
            total -= math.log(p if y else 1 - p)
        return total / len(self._pairs)
