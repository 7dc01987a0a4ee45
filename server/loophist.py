"""A Prometheus histogram for the event loop's hot path: one writer thread, no lock.

``prometheus_client.Histogram.observe`` takes two locks per observation (the sum and the bucket); the
worker observes 9 histograms per event, and those locks were 12–30 µs of its ~220 µs per event (measured
against a no-op client, docs/benchmarks.md). ``LoopHistogram`` keeps per-bucket counts in a plain list
(``bisect`` finds the bucket) and exports the same series through a custom collector: ``name_bucket{le}``
(cumulative), ``name_count``, ``name_sum`` — what Prometheus, Grafana and ``histogram_quantile`` read.

Only one thread may observe (Portrait's event loop; recovery replays before the loop serves). A scrape,
from the metrics server's thread, copies the counts first, so each scrape's buckets and count agree.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> r = CollectorRegistry()
>>> h = LoopHistogram("demo_seconds", "Demo.", ["kind"], buckets=(0.1, 1.0), registry=r)
>>> h.labels(kind="a").observe(0.05); h.labels(kind="a").observe(0.5); h.labels(kind="a").observe(7.0)
>>> r.get_sample_value("demo_seconds_bucket", {"kind": "a", "le": "1.0"}), r.get_sample_value(
...     "demo_seconds_count", {"kind": "a"}), r.get_sample_value("demo_seconds_sum", {"kind": "a"})
(2.0, 3.0, 7.55)
>>> b'demo_seconds_bucket{kind="a",le="+Inf"} 3.0' in generate_latest(r)
True
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Child:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count one observation (Prometheus' ``le``: a value equal to a bound falls in that bucket)."""
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LoopHistogram:
    """A labelled histogram observed from one thread, exported like ``prometheus_client.Histogram``
    (``_name``, ``_type``, ``_documentation`` and ``_labelnames`` as it has them, for the metrics table)."""

    _type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = (), registry: CollectorRegistry | None = None) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self._children: dict[tuple[str, ...], _Child] = {}
        self._only = None if self._labelnames else self._child(())
        if registry is not None:
            registry.register(self)  # type: ignore[arg-type]

    def _child(self, key: tuple[str, ...]) -> _Child:
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _Child(self._bounds)
        return c

    def labels(self, **labels: str) -> _Child:
        """The child of these label values (created at 0 on first use)."""
        if set(labels) != set(self._labelnames):
            raise ValueError(f"{self._name}: labels {sorted(labels)} != {sorted(self._labelnames)}")
        return self._child(tuple(str(labels[n]) for n in self._labelnames))

    def observe(self, amount: float) -> None:
        """Observe on the unlabelled histogram."""
        if self._only is None:
            raise ValueError(f"{self._name} has labels: use .labels(...).observe")
        self._only.observe(amount)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum  # one copy: buckets and count agree
            running, buckets = 0, []
            for bound, n in zip((*self._bounds, float("inf")), counts):
                running += n
                buckets.append((floatToGoString(bound), float(running)))
            family.add_metric(list(key), buckets, total)
        yield family
