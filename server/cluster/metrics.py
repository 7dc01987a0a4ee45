"""The front end's /metrics with several workers: its own metrics and every worker actor's, one family each.

Each worker keeps its own registry (its events, users, models, queues, process); the front end fetches their
text every second (``server.app``) and serves them merged into its own families, every worker sample labelled
``worker="<i>"``. A family a worker has samples of is served from the workers (the front end's copy of it is
idle: it applies nothing), except ``process_*`` / ``python_*`` and ``portrait_rejected`` (requests its
interceptors refuse: undecodable, over the time limit, too many in flight), which the front end has of its own
(``worker="frontend"``). So ``sum(portrait_users)`` is the deployment's users and the dashboards work as with one
worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

OWN = ("process_", "python_", "portrait_rejected")  # families the front end adds to: kept beside the workers'


def _labelled(fam: Metric, worker: str) -> list[Sample]:
    return [s._replace(labels={**s.labels, "worker": worker}) for s in fam.samples]


class WorkerMetrics:
    """A collector: ``own`` (the front end's registry) merged with the workers' texts (``texts()``, one per
    worker, b"" for a worker that did not answer).

    >>> from prometheus_client import Gauge, generate_latest
    >>> own = CollectorRegistry(); _ = Gauge("portrait_users", "users", registry=own)
    >>> worker = b"# HELP portrait_users users\\n# TYPE portrait_users gauge\\nportrait_users 5.0\\n"
    >>> served = CollectorRegistry(); served.register(WorkerMetrics(own, lambda: [worker, worker]))
    >>> [l for l in generate_latest(served).decode().splitlines() if not l.startswith("#")]
    ['portrait_users{worker="0"} 5.0', 'portrait_users{worker="1"} 5.0']

    What the front end's interceptors refuse is counted beside the workers' refusals:

    >>> from prometheus_client import Counter
    >>> Counter("portrait_rejected", "refused", ["reason"], registry=own).labels(reason="inflight").inc()
    >>> theirs = CollectorRegistry()
    >>> Counter("portrait_rejected", "refused", ["reason"], registry=theirs).labels(reason="inflight").inc(2)
    >>> worker = generate_latest(theirs)
    >>> for line in generate_latest(served).decode().splitlines():
    ...     if line.startswith("portrait_rejected_total"):
    ...         print(line)
    portrait_rejected_total{reason="inflight",worker="frontend"} 1.0
    portrait_rejected_total{reason="inflight",worker="0"} 2.0
    portrait_rejected_total{reason="inflight",worker="1"} 2.0
    """

    def __init__(self, own: CollectorRegistry, texts: Callable[[], list[bytes]]) -> None:
        self.own = own
        self.texts = texts

    def describe(self) -> list[Any]:
        return []  # names are known only at collection (and may repeat the front end's: merged, not registered)

    def collect(self) -> Iterator[Metric]:
        workers: dict[str, Metric] = {}
        for i, text in enumerate(self.texts()):
            if not text:
                continue
            for fam in text_string_to_metric_families(text.decode()):
                if not fam.samples:
                    continue
                merged = workers.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
                merged.samples.extend(_labelled(fam, str(i)))
        for fam in self.own.collect():
            theirs = workers.pop(fam.name, None)
            if theirs is None:
                yield fam
                continue
            if fam.name.startswith(OWN):
                theirs.samples[:0] = _labelled(fam, "frontend")
            yield theirs
        yield from workers.values()
