"""Every Prometheus metric Portrait exports, in one place.

Naming follows Prometheus conventions: ``portrait_`` prefix, base units
(seconds, bytes), ``_total`` for counters, and never a user id in a label.
The registry is passed in (no import-time globals), so tests and embedded
uses get their own.

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.events.labels(event_type="view", outcome="accepted").inc()
>>> m.registry.get_sample_value("portrait_events_total", {"event_type": "view", "outcome": "accepted"})
1.0
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from server.loophist import LoopHistogram

# Sub-millisecond work up to multi-second outliers.
FAST_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
# Event -> visible in the online store: a flush interval plus a Redis round trip, up to outages.
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Risk scores live in [0, 1]; the suspicious threshold is near the top.
RISK_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)

# The label values known in advance: their series are exported from the start (at 0, or NaN for a quality
# not measured yet), so that a fresh server's dashboards show 0 rather than "No data".
OUTCOMES = ("accepted", "duplicate", "rejected", "suppressed")
REJECT_REASONS = ("bad_credentials", "decode", "inflight", "log_backlog", "no_credentials", "permission_denied",
                  "stream_idle", "time_limit", "trainer_backlog")
MODELS = ("propensity", "item")
#: Every shared model with a version (``server.models.trainer.VERSIONED``; a test keeps them equal).
VERSIONED_MODELS = ("propensity", "item", "recommend", "segments", "risk", "item_stats")
LABELS = ("positive", "negative")
WORKER_STAGES = ("validate", "dedupe", "profile", "labels", "ranking", "risk", "models")
STAGES = (*WORKER_STAGES, "online_write", "offline_write")
QUEUES = ("online", "timers", "offline", "log", "trainer")


class Metrics:
    """The metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "portrait_events", "Events received, by type and outcome (accepted|duplicate|rejected|suppressed).",
            ["event_type", "outcome"], registry=r,
        )
        # observed per event on the event loop: lock-free (server/loophist.py)
        self.update_latency = LoopHistogram(
            "portrait_update_latency_seconds", "Event received -> profile and models updated.",
            buckets=FAST_BUCKETS, registry=r,
        )
        self.freshness = Histogram(
            "portrait_freshness_seconds", "Event received -> its profile row visible in the online store.",
            buckets=FRESHNESS_BUCKETS, registry=r,
        )
        self.stage_duration = LoopHistogram(
            "portrait_stage_duration_seconds", "Time spent per pipeline stage (per event or per flush).",
            ["stage"], buckets=FAST_BUCKETS, registry=r,
        )
        self.online_write_rows = Counter(
            "portrait_online_write_rows", "Profile rows written to the online store.", registry=r,
        )
        self.online_write_errors = Counter(
            "portrait_online_write_errors", "Failed online-store write attempts (rows are kept and retried).",
            registry=r,
        )
        self.offline_write_rows = Counter(
            "portrait_offline_write_rows", "Profile rows appended to the offline store.", registry=r,
        )
        self.offline_write_errors = Counter(
            "portrait_offline_write_errors", "Failed offline-store write attempts (rows are kept and retried).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "portrait_queue_depth", "Work waiting, by queue: online (users an event changed), timers (users "
            "time alone changed), offline (rows), log (bytes), trainer (messages the models do not cover yet).",
            ["queue"], registry=r,
        )
        self.rejected = Counter(
            "portrait_rejected", "Requests or events refused, by reason.", ["reason"], registry=r,
        )
        self.pending_labels = Gauge(
            "portrait_pending_labels", "Model decisions waiting for their delayed label, by model.",
            ["model"], registry=r,
        )
        self.labels = Counter(
            "portrait_labels", "Delayed labels resolved, by model and label (positive|negative).",
            ["model", "label"], registry=r,
        )
        self.model_roc_auc = Gauge(
            "portrait_model_roc_auc", "Rolling prequential ROC AUC from resolved labels, by model.",
            ["model"], registry=r,
        )
        self.model_log_loss = Gauge(
            "portrait_model_log_loss", "Rolling prequential log loss from resolved labels, by model.",
            ["model"], registry=r,
        )
        self.model_version = Gauge(
            "portrait_model_version", "Version of each shared model the workers score with (messages it has "
            "learnt; in one process every message publishes a version).", ["model"], registry=r,
        )
        self.model_staleness = Gauge(
            "portrait_model_staleness_seconds", "How far the version the workers score with lags the trainer's "
            "newest, by model (0 in one process: workers score with the live models).", ["model"], registry=r,
        )
        self.erasures = Counter(
            "portrait_erasures", "Users erased (DeleteUser calls that completed).", registry=r,
        )
        self.suppressed_users = Gauge(
            "portrait_suppressed_users", "Erased users whose events are dropped until an admin lifts it.", registry=r,
        )
        self.erasures_pending_compaction = Gauge(
            "portrait_erasures_pending_compaction",
            "Erased users still present in stored files (offline parquet, log, checkpoints) until compaction.",
            registry=r,
        )
        self.compaction_duration = Histogram(
            "portrait_compaction_duration_seconds", "Wall time of one compaction.",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800), registry=r,
        )
        self.online_store_up = Gauge(
            "portrait_online_store_up", "1 while online-store writes succeed, 0 while they fail and rows wait.",
            registry=r,
        )
        self.risk_score = LoopHistogram(
            "portrait_risk_score", "Anomaly score of each accepted event (0 ordinary .. 1 most unusual).",
            buckets=RISK_BUCKETS, registry=r,
        )
        self.users = Gauge("portrait_users", "Users with a profile in memory.", registry=r)
        self.timers_pending = Gauge(
            "portrait_timers_pending", "Users whose served values will change by time alone (one timer each).",
            registry=r)
        self.timers_fired = Counter(
            "portrait_timers_fired_total", "Profiles recomputed and re-materialized because time alone changed "
            "them (a window tile left, a tag started or stopped holding).", registry=r)
        self.watermark = Gauge(
            "portrait_watermark_seconds", "The watermark (unix seconds): max event time minus the allowed "
            "lateness, advanced by the wall clock while the stream is idle. Timers fire up to it.", registry=r)
        self.gc_frozen_objects = Gauge(
            "portrait_gc_frozen_objects", "Objects moved out of the cyclic collector's reach (gc.freeze).", registry=r,
        )
        self.segment_users = Gauge(
            "portrait_segment_users", "Users per segment (their latest segment).", ["segment"], registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by method and status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r,
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds", "RPC handling time on the server.",
            ["grpc_type", "grpc_service", "grpc_method"], buckets=FAST_BUCKETS, registry=r,
        )
        self._export_known_labels()

    def _export_known_labels(self) -> None:
        """Create the series of every label value known in advance (a labelled metric has no series until its
        first use otherwise)."""
        from server.domain.events import EventType

        for t in EventType:
            for outcome in OUTCOMES:
                self.events.labels(event_type=t.name.lower(), outcome=outcome)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for model in MODELS:
            self.pending_labels.labels(model=model).set(0)
            self.model_roc_auc.labels(model=model).set(float("nan"))  # not measured yet
            self.model_log_loss.labels(model=model).set(float("nan"))
            for label in LABELS:
                self.labels.labels(model=model, label=label)
        for model in VERSIONED_MODELS:
            self.model_version.labels(model=model).set(0)
            self.model_staleness.labels(model=model).set(0)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        for queue in QUEUES:
            self.queue_depth.labels(queue=queue).set(0)

    def export_segments(self, k: int) -> None:
        """Create the series of segments 0..k-1 (at 0 users) before the first refresh."""
        for i in range(k):
            self.segment_users.labels(segment=str(i)).set(0)

    def export_rpcs(self, rpcs: list[tuple[str, str, str]]) -> None:
        """Create the gRPC series of ``(grpc_type, grpc_service, grpc_method)`` (code OK) before the first call."""
        for kind, service, method in rpcs:
            self.grpc_handled.labels(grpc_type=kind, grpc_service=service, grpc_method=method, grpc_code="OK")
            self.grpc_handling.labels(grpc_type=kind, grpc_service=service, grpc_method=method)


def markdown_table() -> str:
    """The README's metrics table, generated from ``Metrics`` so it cannot drift."""
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    objs: list[Any] = [v for v in vars(Metrics()).values() if isinstance(v, MetricWrapperBase | LoopHistogram)]
    for m in sorted(objs, key=lambda m: m._name):
        name = m._name + ("_total" if m._type == "counter" else "")
        doc = m._documentation.replace("|", ", ")
        lines.append(f"| `{name}` | {m._type} | {', '.join(m._labelnames)} | {doc} |")
    return "\n".join(lines)


METRICS_MAX_CONNECTIONS = 64
"""Concurrent connections the /metrics port serves; more are closed at once (they fit in the reserved fds)."""
METRICS_IDLE_S = 5.0
"""A /metrics connection that sends nothing for this long is closed."""


def serve_metrics(port: int, addr: str, registry: CollectorRegistry) -> Any:
    """prometheus-client's HTTP server for /metrics, with a connection cap and an idle timeout: its server
    starts a thread per connection and waits for a request forever, so idle connections would take threads
    and file descriptors without bound. Returns the ``http.server`` instance (``server_port``, ``shutdown()``)."""
    import threading

    from prometheus_client import start_http_server

    httpd, _ = start_http_server(port, addr=addr, registry=registry)
    httpd.socket.listen(2 * METRICS_MAX_CONNECTIONS)  # socketserver listens with a backlog of 5
    slots = threading.Semaphore(METRICS_MAX_CONNECTIONS)
    start, run = httpd.process_request, httpd.process_request_thread  # type: ignore[attr-defined]

    def process_request(request: Any, client_address: Any) -> None:
        if not slots.acquire(blocking=False):
            httpd.shutdown_request(request)
            return
        try:
            request.settimeout(METRICS_IDLE_S)
            start(request, client_address)
        except BaseException:
            slots.release()
            raise

    def process_request_thread(request: Any, client_address: Any) -> None:
        try:
            run(request, client_address)
        finally:
            slots.release()

    def handle_error(request: Any, client_address: Any) -> None:  # socketserver prints a traceback to stderr
        import logging
        import sys

        logging.getLogger(__name__).debug("/metrics connection ended: %s", type(sys.exc_info()[1]).__name__)

    httpd.process_request = process_request  # type: ignore[method-assign]
    httpd.handle_error = handle_error  # type: ignore[method-assign]
    httpd.process_request_thread = process_request_thread  # type: ignore[attr-defined]
    return httpd
