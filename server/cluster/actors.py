"""Partition workers as Ray actors (``PORTRAIT_WORKERS=N>1``).

Worker *i* of *N* owns the partitions ``p % N == i`` (``owner``). Each is a Ray actor (``WorkerActor``) that
builds a whole ``WorkerRuntime`` in its own process: its users' state, its log and checkpoints under
``<data dir>/workers/<i>/`` (with ``PORTRAIT_LOG_STORE=redis``: its partitions' streams under
``<PORTRAIT_LOG_PREFIX>:w<i>``), its materializer writing rows through Feast into the shared online store and
offline parts named ``...-w<i>-...``, its trainer. Ray restarts an actor that dies (``max_restarts=-1``);
the new incarnation recovers from its checkpoint and log before it answers anything.

The actor applies and logs an event in the same step and answers once the log holds it (as the one-process
server does), so an event a caller saw acknowledged is durable in its owner's log. A call in flight when the
actor died, or sent while it restarts and not answered in ``call_timeout_s``, fails with ``Unavailable``: the
event is either in the log (applied once, when the owner is back; a retry is a duplicate by ``event_id``) or
was never applied (a retry applies it) — never lost, never counted twice.

``RayWorkers`` is the front end's side: it starts a local Ray (usage stats off, no dashboard), or joins the
cluster at ``PORTRAIT_RAY_ADDRESS``, creates the actors and stops them (a final checkpoint each) and the Ray
it started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

from server.config import Settings
from server.domain import errors
from server.domain.partition import partition_of

log = logging.getLogger("portrait")

RAY_NAMESPACE = "portrait"
TRAINER_NAME = "portrait-trainer"  # the shared trainer actor's name in RAY_NAMESPACE
TICK_S = 1.0


def owner(partition: int, workers: int) -> int:
    """The worker owning ``partition``.

    >>> [owner(p, 3) for p in range(7)]
    [0, 1, 2, 0, 1, 2, 0]
    """
    return partition % workers


def owned(index: int, workers: int, partitions: int) -> list[int]:
    """The partitions worker ``index`` owns.

    >>> owned(1, 3, 8)
    [1, 4, 7]
    """
    return [p for p in range(partitions) if owner(p, workers) == index]


def state_dir(data_dir: Path, index: int) -> Path:
    """Where worker ``index`` keeps its log and checkpoints."""
    return Path(data_dir) / "workers" / str(index)


def worker_tag(index: int) -> str:
    """Worker ``index``'s tag: in its offline parts' names and, after the log prefix, its streams' keys.

    >>> worker_tag(2), f"portrait:log:{worker_tag(2)}"
    ('w2', 'portrait:log:w2')
    """
    return f"w{index}"


class WorkerActor:
    """One partition worker in a Ray actor process. Every method waits until the worker has recovered.
    Domain errors come back as values (``("error", class name, message, field)``): the front end raises
    them again at its edge, where they map to status codes."""

    def __init__(self, settings: Settings, index: int, workers: int, feast_redis: str, redis_type: str,
                 embedded_url: str | None, trainer: str = TRAINER_NAME) -> None:
        logging.basicConfig(level=settings.log_level, format=f"%(asctime)s %(levelname)s worker-{index}: %(message)s")
        self.settings = settings
        self.index = index
        self.workers = workers
        self.feast_redis = feast_redis
        self.redis_type = redis_type
        self.embedded_url = embedded_url
        # the shared trainer actor, looked up by name at the start: a handle among the constructor's arguments made
        # Ray warn that they live in its object store, where a restart may not find them (ray-project/ray#53727)
        self.trainer_name = trainer
        self._runtime: Any = None
        self._ready: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def _core(self) -> Any:
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        await asyncio.shield(self._ready)
        return self._runtime.core

    async def _start(self) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        from server.metrics import Metrics
        from server.store.feast import open_store, set_feast_env
        from server.worker.runtime import WorkerRuntime

        s = self.settings
        data_dir = Path(s.data_dir)
        set_feast_env(data_dir, self.feast_redis, self.redis_type)
        metrics = Metrics(CollectorRegistry())
        ProcessCollector(registry=metrics.registry)
        from server.models.shared import TrainerStream, items_key, stream_key

        url = s.redis_url or self.embedded_url
        assert url, "the trainer stream needs a Redis"
        import ray

        trainer = ray.get_actor(self.trainer_name)
        stream = TrainerStream(url, s.redis_cluster, stream_key(s.log_prefix), items_key(s.log_prefix),
                               keep_items=s.log_retention_s < 0)
        shared = (trainer, stream, self.index)
        tag = worker_tag(self.index)
        runtime = WorkerRuntime(s, metrics, data_dir, state_dir(data_dir, self.index), self.feast_redis,
                                self.redis_type, self.embedded_url, log_prefix=f"{s.log_prefix}:{tag}",
                                tag=tag, fork_checkpoints=False, shared_trainer=shared)
        await runtime.spawn_writer()
        writer_store = await asyncio.to_thread(open_store, s.feature_repo)
        reader_store = await asyncio.to_thread(open_store, s.feature_repo)
        await runtime.start(writer_store, reader_store)
        runtime.run()
        self._runtime = runtime
        self._ticker = asyncio.create_task(self._tick())
        report = runtime.recovery
        log.info("worker %d of %d (pid %d) owns %d partitions; recovered %s", self.index, self.workers,
                 os.getpid(), len(owned(self.index, self.workers, s.partitions)), report)

    async def _tick(self) -> None:
        while True:
            try:
                await self._runtime.tick()
            except Exception:
                log.exception("worker tick failed")
            await asyncio.sleep(TICK_S)

    async def _do(self, name: str, *args: Any) -> Any:
        core = await self._core()
        try:
            return ("ok", await getattr(core, name)(*args))
        except errors.PortraitError as exc:
            return ("error", type(exc).__name__, exc.message, exc.field)

    # -- the core's calls (stored ids) ---------------------------------------------------------------
    async def track(self, e: Any, wait_visible: bool) -> Any:
        return await self._do("track", e, wait_visible)

    async def track_many(self, events: list[Any], wait_visible: bool) -> Any:
        return await self._do("track_many", events, wait_visible)

    async def update_attributes(self, user_id: str, age: int, gender: str, region: str) -> Any:
        return await self._do("update_attributes", user_id, age, gender, region)

    async def score(self, user_id: str, candidates: list[tuple[str, str, float]]) -> Any:
        return await self._do("score", user_id, candidates)

    async def recommend(self, user_id: str, k: int) -> Any:
        return await self._do("recommend", user_id, k)

    async def delete_user(self, user_id: str) -> Any:
        return await self._do("delete_user", user_id)

    async def unsuppress_user(self, user_id: str) -> Any:
        return await self._do("unsuppress_user", user_id)

    async def compact(self) -> Any:
        return await self._do("compact")

    # -- what the explorer reads (server.worker.inspect) ---------------------------------------------
    async def inspect_user(self, stored: str, row: dict[str, Any]) -> Any:
        return await self._do("inspect_user", stored, row)

    async def inspect_population(self, show_ids: bool) -> Any:
        return await self._do("inspect_population", show_ids)

    async def inspect_system(self) -> Any:
        return await self._do("inspect_system")

    # -- operations ---------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """pid, host, owned partitions, the log offset applied, the model versions it scores with, online health."""
        core = await self._core()
        rt = self._runtime
        return {"index": self.index, "pid": os.getpid(), "host": socket.gethostname(),
                "partitions": owned(self.index, self.workers, self.settings.partitions),
                "applied_offset": rt.durability.log.next_offset,
                "model_versions": dict(core.worker.trainer.versions),
                "online_healthy": core.materializer.online_healthy, "users": len(core.worker.profiles)}

    async def metrics(self) -> bytes:
        """The worker's metrics in the Prometheus text format."""
        from prometheus_client import generate_latest

        await self._core()
        return bytes(generate_latest(self._runtime.metrics.registry))

    async def stop(self, grace_s: float) -> bool:
        """Flush rows, final checkpoint, stop the children (then the front end kills the actor)."""
        if self._ready is None:
            return False
        await self._core()
        if self._ticker:
            self._ticker.cancel()
        await self._runtime.stop(grace_s)
        return True


def raise_error(kind: str, message: str, field: str | None) -> None:
    """Raise the domain error a worker returned as a value."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PortraitError)):
        cls = errors.PortraitError
    raise cls(message, field=field)


class RayWorkers:
    """The front end's handle on the N worker actors."""

    def __init__(self, settings: Settings, feast_redis: str, redis_type: str, embedded_url: str | None) -> None:
        self.settings = settings
        self.n = settings.workers
        self.feast_redis = feast_redis
        self.redis_type = redis_type
        self.embedded_url = embedded_url
        self.actors: list[Any] = []
        self.trainer: Any = None
        self.down: set[int] = set()  # workers the front end's health check found not answering
        self._started_ray = False

    def start(self) -> None:
        """Start (or join) Ray and create the actors (they recover in the background; ``wait_ready``)."""
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every worker's lines in our log, not "[repeated 3x]"
        import ray

        s = self.settings
        if not ray.is_initialized():
            if s.ray_address:
                ray.init(address=s.ray_address, namespace=RAY_NAMESPACE, include_dashboard=False,
                         configure_logging=False)
            else:
                ray.init(namespace=RAY_NAMESPACE, include_dashboard=False, configure_logging=False,
                         num_cpus=max(os.cpu_count() or 1, self.n))
                self._started_ray = True
        # absolute paths: an actor's working directory is Ray's, not ours
        absolute = s.model_copy(update={"data_dir": Path(s.data_dir).resolve(),
                                        "feature_repo": Path(s.feature_repo).resolve()})
        from server.cluster.trainer import TrainerActor
        from server.models.shared import stream_key
        from server.worker.runtime import worker_config

        url = s.redis_url or self.embedded_url
        assert url, "the trainer stream needs a Redis"
        trainer = ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=s.worker_cpus)(TrainerActor)
        self.trainer = trainer.options(name=TRAINER_NAME).remote(  # type: ignore[attr-defined]
            worker_config(s).trainer, url, s.redis_cluster, stream_key(s.log_prefix),
            Path(absolute.data_dir) / "trainer", s.checkpoint_interval_s, s.log_retention_s < 0, s.log_level)
        remote = ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=s.worker_cpus)(WorkerActor)
        self.actors = [remote.options(name=f"portrait-worker-{i}-of-{self.n}").remote(  # type: ignore[attr-defined]
            absolute, i, self.n, self.feast_redis, self.redis_type, self.embedded_url, TRAINER_NAME)
            for i in range(self.n)]

    async def wait_ready(self, timeout_s: float = 300.0) -> list[dict[str, Any]]:
        """Wait until the trainer and every worker recovered; the workers' statuses."""
        await asyncio.wait_for(self.trainer.status.remote(), timeout_s)
        return list(await asyncio.wait_for(asyncio.gather(*(a.status.remote() for a in self.actors)), timeout_s))

    async def trainer_status(self, timeout_s: float) -> dict[str, Any] | None:
        """The trainer's status, or None if it does not answer in ``timeout_s``."""
        try:
            status: dict[str, Any] = await asyncio.wait_for(self.trainer.status.remote(), timeout_s)
        except Exception:
            return None
        return status

    def owner_of(self, stored_id: str) -> int:
        """The worker owning a stored user id."""
        return owner(partition_of(stored_id, self.settings.partitions), self.n)

    async def call(self, index: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call a worker's method; its domain errors raised again here; a dead or restarting worker (or one
        that does not answer in ``timeout_s``, default ``PORTRAIT_WORKER_CALL_TIMEOUT_S``) -> ``Unavailable``.
        While the health check finds the worker not answering (``down``), its calls are refused at once (a
        call Ray would hold for the restarted actor would otherwise wait out the restart)."""
        import ray.exceptions

        if index in self.down and method not in ("status", "metrics"):
            raise errors.Unavailable(f"partition worker {index} is restarting; retry: what it acknowledged is in "
                                     "its log, a retried event is deduplicated by event_id")
        timeout = self.settings.worker_call_timeout_s if timeout_s is None else timeout_s
        try:
            out = await asyncio.wait_for(getattr(self.actors[index], method).remote(*args), timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, TimeoutError) as exc:
            raise errors.Unavailable(f"partition worker {index} is unavailable ({type(exc).__name__}); "
                                     "retry: what it acknowledged is in its log, a retried event is "
                                     "deduplicated by event_id") from None
        if isinstance(out, tuple) and len(out) == 4 and out[0] == "error":
            raise_error(out[1], out[2], out[3])
        return out[1] if isinstance(out, tuple) and len(out) == 2 and out[0] == "ok" else out

    async def call_owner(self, stored_id: str, method: str, *args: Any) -> Any:
        """``method(stored_id, *args)`` on the worker owning ``stored_id``."""
        return await self.call(self.owner_of(stored_id), method, stored_id, *args)

    async def stop(self, grace_s: float) -> None:
        """A final checkpoint in every worker, then the actors and the Ray this started are stopped."""
        import ray

        if self.actors:
            try:
                await asyncio.wait_for(asyncio.gather(*(a.stop.remote(grace_s) for a in self.actors),
                                                      return_exceptions=True), grace_s + 30.0)
            except TimeoutError:
                log.error("workers did not stop within %.0f s; their logs hold every acknowledged event", grace_s)
            for a in self.actors:
                ray.kill(a, no_restart=True)
        if self.trainer is not None:  # after the workers: they handed it every message (their drain)
            try:
                await asyncio.wait_for(self.trainer.stop.remote(), grace_s + 30.0)
            except Exception as exc:
                log.error("the trainer did not checkpoint at stop (%s): it restarts from its last checkpoint and "
                          "learns the stream after it again", type(exc).__name__)
            ray.kill(self.trainer, no_restart=True)
        if self._started_ray:
            ray.shutdown()
