"""Small statistics: percentiles, round summaries, Prometheus text parsing and histogram quantiles.

>>> percentile([1.0, 2.0, 3.0, 4.0], 50)
2.5
>>> summary([3.0, 1.0, 2.0])
{'median': 2.0, 'min': 1.0, 'max': 3.0, 'rounds': [3.0, 1.0, 2.0]}
>>> histogram_quantile([(0.01, 0.0), (0.05, 10.0), (0.1, 20.0), (math.inf, 20.0)], 0.5)
0.05
>>> round(histogram_quantile([(0.01, 0.0), (0.05, 10.0), (0.1, 20.0), (math.inf, 20.0)], 0.75), 6)
0.075
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (linear interpolation between closest ranks); NaN if empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max and count of latencies (seconds)."""
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else math.nan}


def summary(rounds: Sequence[float]) -> dict[str, Any]:
    """Median of the rounds with their spread (min/max)."""
    xs = [x for x in rounds if x is not None and not math.isnan(x)]
    if not xs:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "rounds": list(rounds)}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "rounds": list(rounds)}


# -- Prometheus text -------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    """One sample's value, or None."""
    return metrics.get((name, tuple(sorted(labels.items()))))


def total(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples carrying ``labels`` (among others: e.g. one per ``worker``), or None.

    >>> m = {("q", (("queue", "online"), ("worker", "0"))): 2.0, ("q", (("queue", "online"), ("worker", "1"))): 3.0}
    >>> total(m, "q", queue="online"), total(m, "q", queue="log")
    (5.0, None)
    """
    want = set(labels.items())
    found = [v for (n, ls), v in metrics.items() if n == name and want <= set(ls)]
    return sum(found) if found else None


def buckets(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
            **labels: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` of histogram ``name`` (without ``_bucket``), sorted by ``le``."""
    want = tuple(sorted(labels.items()))
    out = []
    for (n, lbls), v in metrics.items():
        if n != f"{name}_bucket":
            continue
        rest = tuple((k, x) for k, x in lbls if k != "le")
        if rest != want:
            continue
        le = dict(lbls)["le"]
        out.append((math.inf if le in ("+Inf", "inf") else float(le), v))
    return sorted(out)


def bucket_delta(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Bucket counts observed between two scrapes."""
    b = dict(before)
    return [(le, c - b.get(le, 0.0)) for le, c in after]


def histogram_quantile(cumulative: list[tuple[float, float]], q: float) -> float:
    """Quantile ``q`` from cumulative buckets, interpolating linearly inside a bucket (as Prometheus'
    ``histogram_quantile``; a quantile in the +Inf bucket is the highest finite bound)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    total = cumulative[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in cumulative:
        if c >= rank and c > prev_c:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le
