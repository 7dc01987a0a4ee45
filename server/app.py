"""Builds and runs the Portrait server: gRPC (service, health, reflection), metrics, the explorer, stores.

``PortraitServer(settings)``: ``await start()``, ``await stop()``; ``serve(settings)``
runs until SIGTERM/SIGINT, then drains and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, ProcessCollector

from server import fdlimit
from server._gen.portrait.v1 import portrait_pb2, portrait_pb2_grpc
from server.api.interceptors import ServerInterceptor
from server.api.security import AuthInterceptor, SecurityConfigError, access_policy
from server.api.servicer import ProfileServicer
from server.cluster.actors import RayWorkers
from server.cluster.metrics import WorkerMetrics
from server.cluster.routed import RoutedCore
from server.cluster.status import ProcessStatus, in_process, ray_processes
from server.config import Settings
from server.domain.pseudonym import Pseudonymizer, PseudonymKeyError
from server.log.compaction import load_salt
from server.log.partitions import PartitionsChanged, ensure_partitions
from server.log.streams import LogOwnedElsewhere
from server.metrics import Metrics, serve_metrics
from server.models.remote import TrainerProcess
from server.models.shared import TrainerLink
from server.store.embedded_redis import EmbeddedRedis, online_redis
from server.store.feast import OnlineStore, apply_definitions, open_store, set_feast_env, upgrade_offline
from server.ui.data import Explorer
from server.ui.http import ExplorerServer, check_ui_policy
from server.worker.core import ProfileCore
from server.worker.durability import Durability, RecoveryReport
from server.worker.runtime import WorkerRuntime

log = logging.getLogger("portrait")

SERVICE_NAME = portrait_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
#: Health-check name that is NOT_SERVING while online-store writes fail (ingest keeps working).
ONLINE_STORE_HEALTH = "portrait.online_store"
#: SERVING while every partition has a live owner (one in-process worker: while the server runs; several: while
#: every worker actor answers)
WORKERS_HEALTH = "portrait.workers"
GAUGE_REFRESH_S = 1.0
# gc.get_freeze_count() walks the frozen objects' list while holding the GIL: 30 ms at 3M objects, measured. Every
# second that was a 30-140 ms pause of the loop (the freshness tail, docs/benchmarks.md); now once in 5 minutes.
GC_COUNT_EVERY_S = 300.0
WORKER_PING_TIMEOUT_S = 5.0  # a worker actor that does not answer its status in this long counts as down


def grpc_server_options(s: Settings, max_connections: int | None = None) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: message size, keepalive and ping enforcement, connection age,
    the connection cap (``max_connections``), the handshake deadline and the idle-connection limit."""
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", ms(s.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(s.min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", s.max_ping_strikes),
        ("grpc.keepalive_permit_without_calls", int(s.permit_idle_pings)),
    ]
    if s.max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", ms(s.max_connection_age_s)),
                    ("grpc.max_connection_age_grace_ms", ms(s.max_connection_age_grace_s))]
    # a connection that sends no HTTP/2 preface (or TLS handshake) is closed after this; grpc's default is 120 s
    options.append(("grpc.server_handshake_timeout_ms", ms(s.handshake_timeout_s)))
    if s.connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", ms(s.connection_idle_s)))
    if max_connections:  # enforced by gRPC's core before the handshake: extra connections are closed at once
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    return options


class PortraitServer:
    """One Portrait process: owns the stores, the partition worker (and its trainer) and the gRPC + metrics servers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(CollectorRegistry())
        ProcessCollector(registry=self.metrics.registry)  # process_open_fds, process_max_fds, memory, CPU
        self.max_connections = 0
        self.embedded: EmbeddedRedis | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self.ui_port = 0
        self.explorer: Explorer | None = None
        self._ui: ExplorerServer | None = None
        self.feast_redis = ""
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None  # PORTRAIT_HEALTH_PORT: plaintext, health only
        self.health_port = 0
        self._http: Any = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self.core: ProfileCore | None = None  # PORTRAIT_WORKERS=1; with more: ``routed``
        self.routed: RoutedCore | None = None
        self.ray_workers: RayWorkers | None = None
        self.runtime: WorkerRuntime | None = None
        self.durability: Durability | None = None
        self.recovery: RecoveryReport | None = None
        self._trainer: TrainerProcess | TrainerLink | None = None  # PORTRAIT_TRAINER=process
        self._worker_metrics: list[bytes] = []  # PORTRAIT_WORKERS>1: each worker's latest /metrics text

    async def start(self) -> None:
        """Bring everything up; when this returns the server answers on ``grpc_port``."""
        s = self.settings
        policy = access_policy(s)  # first: an unsafe or broken configuration refuses to start at once
        check_ui_policy(s, policy)  # the explorer's pages: never open on a public address
        try:
            ids = Pseudonymizer.load(s.pseudonym_key_file)
        except PseudonymKeyError as exc:
            raise SecurityConfigError(str(exc)) from None
        for line in policy.describe():
            log.info("%s", line)
        fd_limit = fdlimit.raise_open_file_limit()
        self.max_connections = fdlimit.connection_cap(fd_limit, s.reserved_fds, s.max_connections)
        if s.max_connections and self.max_connections < s.max_connections:
            log.warning("PORTRAIT_MAX_CONNECTIONS=%d does not fit the open-file limit %d minus %d reserved: "
                        "capped at %d", s.max_connections, fd_limit, s.reserved_fds, self.max_connections)
        if ids.enabled:
            log.info("user ids are stored as pseudonyms (key version %s of %d)", ids.keys[-1][0], len(ids.keys))
        data_dir = Path(s.data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        # before anything is written: a changed count refuses to start
        ensure_partitions(data_dir, s.partitions, s.workers)
        load_salt(data_dir)  # created once, here, before any worker reads it
        self.feast_redis, self.embedded = online_redis(s.configured_feast_redis(), data_dir, s.embedded_redis_port,
                                                       cluster=s.redis_cluster, holds_log=s.log_store == "redis")
        if self.embedded is not None:
            log.info("PORTRAIT_REDIS_URL is unset: using the embedded Redis at %s "
                     "(other processes: PORTRAIT_FEAST_REDIS=%s PORTRAIT_FEAST_REDIS_TYPE=redis PORTRAIT_DATA_DIR=%s)",
                     self.embedded.url, self.feast_redis, data_dir)
        elif s.redis_cluster:
            log.info("online store: a Redis Cluster, seed node %s (the other nodes and the slots are discovered)",
                     self.feast_redis.split(",")[0])
        set_feast_env(data_dir, self.feast_redis, s.feast_redis_type())
        embedded_url = self.embedded.url if self.embedded else None
        runtime: WorkerRuntime | None = None
        if s.workers == 1:
            runtime = self.runtime = WorkerRuntime(s, self.metrics, data_dir, data_dir, self.feast_redis,
                                                   s.feast_redis_type(), embedded_url, ids=ids)
            await runtime.spawn_writer()  # it imports Feast on the other core while this process applies
        upgraded = await asyncio.to_thread(upgrade_offline, data_dir)
        if upgraded:
            log.info("rewrote %d offline parts written before the schema gained columns (new columns null)", upgraded)
        writer_store = await asyncio.to_thread(apply_definitions, s.feature_repo, data_dir)
        reader_store = await asyncio.to_thread(open_store, s.feature_repo)
        log.info("applied Feast definitions from %s", Path(s.feature_repo).resolve())
        if runtime is not None:
            self.core = await runtime.start(writer_store, reader_store)
            self.durability, self.recovery = runtime.durability, runtime.recovery
            self._trainer = runtime.trainer_process
            service_core: ProfileCore | RoutedCore = self.core
        else:
            self.ray_workers = RayWorkers(s, self.feast_redis, s.feast_redis_type(), embedded_url)
            self.ray_workers.start()  # on the main thread: Ray installs its signal handlers there
            statuses = await self.ray_workers.wait_ready()
            log.info("%d partition workers on Ray: pids %s", s.workers, [st["pid"] for st in statuses])
            self.routed = service_core = RoutedCore(self.ray_workers, OnlineStore(reader_store), ids)

        # Outermost first: metrics, errors and time limits see every call, including refused ones.
        interceptors: list[grpc.aio.ServerInterceptor] = [ServerInterceptor(
            self.metrics, max_inflight=s.max_inflight_rpcs, rpc_timeout_s=s.rpc_timeout_s,
            stream_timeout_s=s.stream_timeout_s, max_inflight_streams=s.max_inflight_streams,
            stream_idle_s=s.stream_idle_s)]
        if policy.keys is not None:
            interceptors.append(AuthInterceptor(policy.keys, self.metrics))
        server = grpc.aio.server(interceptors=interceptors, options=grpc_server_options(s, self.max_connections))
        portrait_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(service_core, self._workers), server)
        service = portrait_pb2.DESCRIPTOR.services_by_name["ProfileService"]
        self.metrics.export_rpcs([("client_stream" if m.client_streaming else "unary", service.full_name, m.name)
                                  for m in service.methods])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if policy.reflection:
            reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
        address = f"{s.bind}:{s.grpc_port}"
        credentials = policy.credentials()
        if credentials is None:
            self.grpc_port = server.add_insecure_port(address)
        else:
            self.grpc_port = server.add_secure_port(address, credentials)
        served = self.metrics.registry
        if self.ray_workers is not None:  # the workers' metrics beside the front end's, labelled by worker
            served = CollectorRegistry()
            served.register(WorkerMetrics(self.metrics.registry, lambda: self._worker_metrics))
        self._http = serve_metrics(s.metrics_port, s.bind, served)
        self.metrics_port = self._http.server_port
        if s.ui_port:  # with workers, what only a worker holds is asked of its actor (server.worker.inspect)
            self.explorer = Explorer(service_core, served, s.ui_history_interval_s)
            self._ui = ExplorerServer(s, policy, self.explorer, asyncio.get_running_loop())
            self.ui_port = self._ui.port
            self._tasks.append(asyncio.create_task(self.explorer.run_sampler(), name="explorer-history"))
        # Feast, grpc and the recovered state are long-lived: move them out of the collector's way
        # (a full collection walked them all, pausing the loop; measured in docs/decisions.md)
        gc.collect()
        gc.freeze()
        if runtime is not None:
            runtime.run()
        await server.start()
        self._server = server
        if s.health_port:
            # Native Kubernetes gRPC probes speak plaintext only: the same HealthServicer (same statuses) on a
            # port of its own that serves nothing else, so TLS on the main port need not be given up.
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(f"{s.bind}:{s.health_port}")
            await self._health_server.start()
        self._tasks.append(asyncio.create_task(self._refresh_gauges() if runtime else self._watch_workers(),
                                               name="gauges"))
        for name in ("", SERVICE_NAME, ONLINE_STORE_HEALTH, WORKERS_HEALTH):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving portrait.v1.ProfileService on %s:%d (at most %d connections), metrics on "
                 "http://%s:%d/metrics", s.bind, self.grpc_port, self.max_connections, s.bind, self.metrics_port)
        if self._health_server is not None:
            log.info("plaintext health checks (grpc.health.v1 only) on %s:%d", s.bind, self.health_port)
        if self._ui is not None:
            log.info("explorer on %s://%s:%d/%s", self._ui.scheme, s.bind, self.ui_port,
                     " (sign in with a read key)" if policy.keys is not None else "")

    def _workers(self) -> tuple[int, list[ProcessStatus]] | Any:
        """Every process' status (``rpc Workers``): computed here with one worker, asked of the actors with more."""
        s = self.settings
        if self.ray_workers is not None:
            return self._ray_statuses()
        assert self.core is not None and self.durability is not None
        return s.partitions, in_process(self.core.worker.trainer, self.durability.log.next_offset, s.partitions,
                                        trainer_pid=self._trainer.pid if self._trainer else None)

    async def _ray_statuses(self) -> tuple[int, list[ProcessStatus]]:
        assert self.ray_workers is not None
        s = self.settings
        statuses = await asyncio.gather(*(self.ray_workers.call(i, "status", timeout_s=WORKER_PING_TIMEOUT_S)
                                          for i in range(self.ray_workers.n)), return_exceptions=True)
        trainer = await self.ray_workers.trainer_status(WORKER_PING_TIMEOUT_S)
        return s.partitions, ray_processes([st for st in statuses if isinstance(st, dict)], trainer)

    async def _watch_workers(self) -> None:
        """With worker actors: health ``portrait.workers`` NOT_SERVING while one does not answer (its partitions
        have no live owner), ``portrait.online_store`` while one cannot write rows; their metrics fetched."""
        assert self.ray_workers is not None
        workers = self.ray_workers
        up = {WORKERS_HEALTH: True, ONLINE_STORE_HEALTH: True}
        while True:
            statuses = await asyncio.gather(*(workers.call(i, "status", timeout_s=WORKER_PING_TIMEOUT_S)
                                              for i in range(workers.n)), return_exceptions=True)
            alive = [st for st in statuses if isinstance(st, dict)]
            workers.down = {i for i, st in enumerate(statuses) if not isinstance(st, dict)}
            now = {WORKERS_HEALTH: len(alive) == workers.n,
                   ONLINE_STORE_HEALTH: all(st["online_healthy"] for st in alive)}
            self.metrics.online_store_up.set(1 if now[ONLINE_STORE_HEALTH] else 0)
            for name, ok in now.items():
                if ok != up[name]:
                    up[name] = ok
                    if name == WORKERS_HEALTH:
                        down = [i for i, st in enumerate(statuses) if not isinstance(st, dict)]
                        log.warning("workers %s do not answer: their partitions have no live owner", down) \
                            if not ok else log.info("every partition has a live owner again")
                    await self._health.set(name, health_pb2.HealthCheckResponse.SERVING if ok else
                                           health_pb2.HealthCheckResponse.NOT_SERVING)
            texts = await asyncio.gather(*(workers.call(i, "metrics", timeout_s=WORKER_PING_TIMEOUT_S)
                                           for i in range(workers.n)), return_exceptions=True)
            self._worker_metrics = [t if isinstance(t, bytes) else b"" for t in texts]
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def _refresh_gauges(self) -> None:
        assert self.runtime is not None
        online_up = True
        frozen_at = time.monotonic()
        counted_at = -math.inf
        every = self.settings.gc_freeze_interval_s
        while True:
            healthy = await self.runtime.tick()
            if every and time.monotonic() - frozen_at >= every:  # see Settings.gc_freeze_interval_s
                gc.freeze()
                frozen_at = time.monotonic()
            if time.monotonic() - counted_at >= GC_COUNT_EVERY_S:
                self.metrics.gc_frozen_objects.set(gc.get_freeze_count())
                counted_at = time.monotonic()
            if healthy != online_up:  # degraded: ingest still works, the online store lags
                online_up = healthy
                status = health_pb2.HealthCheckResponse.SERVING if healthy else \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                await self._health.set(ONLINE_STORE_HEALTH, status)
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, stop accepting, finish in-flight RPCs, flush pending rows,
        final checkpoint, stop owned processes."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self._health.enter_graceful_shutdown()
        if self._ui:
            await asyncio.to_thread(self._ui.close)  # its pages read the state about to be flushed and closed
        if self._server:
            await self._server.stop(grace)
        if self._health_server:
            await self._health_server.stop(0)  # probes read NOT_SERVING until the main port closed
        for t in self._tasks:
            t.cancel()
        if self.runtime:
            await self.runtime.stop(grace)
        if self.ray_workers:
            await self.ray_workers.stop(grace)
        if self._http:
            self._http.shutdown()
        if self.embedded:
            self.embedded.stop()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    server = PortraitServer(settings)
    try:
        await server.start()
    except (SecurityConfigError, PartitionsChanged, LogOwnedElsewhere) as exc:
        log.error("refusing to start: %s", exc)
        raise SystemExit(2) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1f s)", settings.shutdown_grace_s)
    await server.stop()
