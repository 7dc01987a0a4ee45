"""What the explorer's charts over time are drawn from: samples of the server's own metrics, kept in memory.

Every ``PORTRAIT_UI_HISTORY_INTERVAL_S`` (60 s) the explorer reads, from the same Prometheus registry that
``/metrics`` exports, the accepted-event total, each model's rolling ROC AUC and log loss (the gauges the
worker refreshes every 15 s), the resolved labels by model and outcome, the pending decisions and the
trainer's version. The last ``MAX_SAMPLES`` (1440: a day at one a minute) are kept; nothing is written to
disk (a restart starts an empty history: Prometheus keeps the long one).

>>> h = History()
>>> h.add(Sample(t=0.0, events=0.0, version=0))
>>> h.add(Sample(t=60.0, events=1200.0, version=5))
>>> h.events_per_s(), h.rate_series()
(20.0, [(60.0, 20.0)])
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from server.domain.events import EventType
from server.metrics import LABELS, MODELS

MAX_SAMPLES = 1440


@dataclass(frozen=True)
class Sample:
    """One reading of the server's metrics at unix time ``t``."""

    t: float
    events: float
    """Accepted events since the start (``portrait_events_total{outcome="accepted"}``, all types)."""
    version: int
    """The trainer's version (messages learnt)."""
    auc: dict[str, float] = field(default_factory=dict)
    log_loss: dict[str, float] = field(default_factory=dict)
    labels: dict[str, dict[str, float]] = field(default_factory=dict)
    """Resolved labels since the start, by model and ``positive``/``negative``."""
    pending: dict[str, float] = field(default_factory=dict)


Samples = list[tuple[str, dict[str, str], float]]


def collect(registry: CollectorRegistry) -> Samples:
    """Every sample of ``registry`` once, as (name, labels, value) (with workers, collecting parses their texts)."""
    return [(s.name, s.labels, s.value) for fam in registry.collect() for s in fam.samples]


def _matching(samples: Samples, name: str, labels: dict[str, str]) -> list[float]:
    """The values of ``name``'s samples whose labels include ``labels`` (with workers, one per worker)."""
    return [v for n, have, v in samples if n == name and all(have.get(k) == x for k, x in labels.items())]


def total(samples: Samples, name: str, labels: dict[str, str]) -> float:
    """The sum of ``name``'s samples carrying ``labels`` (NaN if none): a counter or a depth over every worker.

    >>> from prometheus_client import Gauge
    >>> r = CollectorRegistry(); g = Gauge("depth", "d", ["queue", "worker"], registry=r)
    >>> g.labels("rows", "0").set(2); g.labels("rows", "1").set(3); g.labels("log", "0").set(7)
    >>> total(collect(r), "depth", {"queue": "rows"}), total(collect(r), "depth", {"queue": "none"})
    (5.0, nan)
    """
    values = _matching(samples, name, labels)
    return sum(values) if values else math.nan


def _mean(samples: Samples, name: str, labels: dict[str, str]) -> float:
    """The mean of ``name``'s measured samples carrying ``labels`` (a model's quality over every worker; NaN
    while none has measured it)."""
    values = [v for v in _matching(samples, name, labels) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def read(samples: Samples, t: float, version: int) -> Sample:
    """A sample at ``t`` of ``samples`` (``collect`` of the registry ``/metrics`` serves: with workers, every
    worker's samples, which are added up — a model's quality averaged)."""
    def count(name: str, labels: dict[str, str]) -> float:
        v = total(samples, name, labels)
        return 0.0 if math.isnan(v) else v

    return Sample(
        t=t, events=sum(count("portrait_events_total", {"event_type": e.name.lower(), "outcome": "accepted"})
                        for e in EventType),
        version=version,
        auc={m: _mean(samples, "portrait_model_roc_auc", {"model": m}) for m in MODELS},
        log_loss={m: _mean(samples, "portrait_model_log_loss", {"model": m}) for m in MODELS},
        labels={m: {y: count("portrait_labels_total", {"model": m, "label": y}) for y in LABELS} for m in MODELS},
        pending={m: total(samples, "portrait_pending_labels", {"model": m}) for m in MODELS},
    )


class History:
    """The last ``MAX_SAMPLES`` samples, oldest first; written by the sampler on the event loop, read by the
    pages' builders on the same loop."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self.samples: deque[Sample] = deque(maxlen=max_samples)
        self.learnt_at: dict[str, float] = {}  # per model: the first sample that saw its label total grow

    def add(self, s: Sample) -> None:
        """Append a sample (and note which models learnt since the previous one)."""
        if self.samples:
            before = self.samples[-1]
            for m, counts in s.labels.items():
                if sum(counts.values()) > sum(before.labels.get(m, {}).values()):
                    self.learnt_at[m] = s.t
        self.samples.append(s)

    def rate_series(self) -> list[tuple[float, float]]:
        """Accepted events per second between consecutive samples, at the later one's time."""
        out = []
        pairs = list(self.samples)
        for a, b in itertools.pairwise(pairs):
            if b.t > a.t:
                out.append((b.t, max(0.0, b.events - a.events) / (b.t - a.t)))
        return out

    def events_per_s(self) -> float | None:
        """The latest rate (None before two samples)."""
        rates = self.rate_series()
        return rates[-1][1] if rates else None

    def quality_series(self, model: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """(ROC AUC, log loss) samples of ``model`` over time."""
        return ([(s.t, s.auc.get(model, math.nan)) for s in self.samples],
                [(s.t, s.log_loss.get(model, math.nan)) for s in self.samples])
