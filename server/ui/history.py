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


def read(registry: CollectorRegistry, t: float, version: int) -> Sample:
    """A sample of ``registry`` (a ``Metrics.registry``) at ``t``."""
    def value(name: str, labels: dict[str, str]) -> float:
        v = registry.get_sample_value(name, labels)
        return math.nan if v is None else v

    events = sum(registry.get_sample_value("portrait_events_total", {"event_type": e.name.lower(),
                                                                      "outcome": "accepted"}) or 0.0
                 for e in EventType)
    return Sample(
        t=t, events=events, version=version,
        auc={m: value("portrait_model_roc_auc", {"model": m}) for m in MODELS},
        log_loss={m: value("portrait_model_log_loss", {"model": m}) for m in MODELS},
        labels={m: {y: registry.get_sample_value("portrait_labels_total", {"model": m, "label": y}) or 0.0
                    for y in LABELS} for m in MODELS},
        pending={m: value("portrait_pending_labels", {"model": m}) for m in MODELS},
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
