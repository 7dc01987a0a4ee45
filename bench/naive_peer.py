"""The naive peer: the design most people write first, as the benchmark's baseline.

A ``grpc.aio`` server implementing the same ``portrait.v1.ProfileService.TrackBatch`` that,
for every event, inline in the handler: validates it and runs the same profile + models
(``PartitionWorker.check`` + ``PartitionWorker.apply``, scoring every event), builds the profile row
(``PartitionWorker.row``) and pushes it through Feast with
``store.push("user_profile_push_source", <one-row DataFrame>)`` — one online write per event,
so the row is visible when the call returns (``wait_visible`` is implied). It writes no
offline log (less work than Portrait). Health is served so the benchmark can wait for it.

``python -m bench.naive_peer --port P --data-dir D --feature-repo R [--redis-url URL]``
(without ``--redis-url`` it starts its own embedded Redis on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api import convert
from server.config import redis_url_to_feast
from server.metrics import Metrics
from server.store.embedded_redis import EmbeddedRedis
from server.store.feast import apply_definitions, set_feast_env
from server.worker.partition import PartitionWorker, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
PUSH_SOURCE = "user_profile_push_source"
log = logging.getLogger("naive_peer")


def row_frame(row: dict[str, Any]) -> Any:
    """One profile row as the DataFrame Feast's push expects (timestamps as datetimes)."""
    import pandas as pd

    df = pd.DataFrame.from_records([row])
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp_us"], unit="us", utc=True)
    df["created_timestamp"] = pd.Timestamp.now(tz="UTC")
    return df.drop(columns=["event_timestamp_us"])


class NaiveServicer(pb_grpc.ProfileServiceServicer):
    """TrackBatch: per event, apply and push (blocking, on the event loop)."""

    def __init__(self, worker: PartitionWorker, store: Any) -> None:
        self.worker = worker
        self.store = store

    async def TrackBatch(self, request: pb.TrackBatchRequest,
                         context: grpc.aio.ServicerContext) -> pb.TrackBatchResponse:
        accepted = duplicates = 0
        rejected = []
        for i, m in enumerate(request.events):
            e = convert.event_from_proto(m)
            err = self.worker.check(e)
            if err:
                rejected.append(pb.EventError(index=i, event_id=e.event_id, field=err.field, message=err.message))
                continue
            out = self.worker.apply(e)
            if out.duplicate:
                duplicates += 1
                continue
            accepted += 1
            self.store.push(PUSH_SOURCE, row_frame(self.worker.row(e.user_id)))
        return pb.TrackBatchResponse(accepted=accepted, duplicates=duplicates, rejected=rejected)


async def serve(a: argparse.Namespace) -> None:
    data_dir = Path(a.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if a.redis_url:
        feast_redis = redis_url_to_feast(a.redis_url)
    else:
        embedded = EmbeddedRedis(data_dir, port=0)
        embedded.start()
        feast_redis = redis_url_to_feast(embedded.url)
    try:
        set_feast_env(data_dir, feast_redis)
        store = await asyncio.to_thread(apply_definitions, Path(a.feature_repo), data_dir)
        worker = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        pb_grpc.add_ProfileServiceServicer_to_server(NaiveServicer(worker, store), server)
        hs = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        port = server.add_insecure_port(f"127.0.0.1:{a.port}")
        await server.start()
        await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("naive peer serving on 127.0.0.1:%d (Feast Redis %s)", port, feast_redis)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(2.0)
    finally:
        if embedded:
            embedded.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.naive_peer")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--feature-repo", default=str(ROOT / "feature_repo"))
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    asyncio.run(serve(a))
    log.info("stopped after %.0f s", time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
