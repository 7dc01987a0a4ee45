"""The load generator: a separate process speaking gRPC to a server (Portrait or the naive peer).

Every request protobuf is built *before* the clock starts. Subcommands (one JSON object on
the last stdout line):

``batch``   TrackBatch in batches of ``--batch`` with ``--window`` calls in flight; the last
            batch goes alone with ``wait_visible=true``; then, with ``--metrics-url``, polls
            ``portrait_queue_depth{queue="online"}`` until 0. Sustained events/s = events / time
            from the first send until all rows are visible.
``stream``  TrackStream with all events, then a 1-event sentinel TrackBatch with wait_visible
            (its flush takes every dirty user, so all rows are visible when it returns), then the
            same queue-depth poll.
``unary``   Track, one event per call, open loop at ``--rate`` calls/s for ``--duration`` s
            (asyncio, calls launched on schedule whether or not earlier ones returned); latency
            is measured from the *scheduled* send time, so client lag is not hidden.
``fresh``   TrackBatch of ``--batch`` events every ``--interval`` s from wall-clock ``--start-at``
            (open loop); writes per batch the wall-clock time the call was started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench import stream
from bench.stats import latency_summary, parse_metrics, total
from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api import convert

OPTIONS = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def load_events(a: argparse.Namespace) -> list[Any]:
    events = stream.load(a.events)
    if a.limit:
        events = events[: a.limit]
    return stream.variant(events, a.prefix, shift_s=a.shift, users=a.users)


def protos(events: list[Any]) -> list[pb.Event]:
    return [convert.event_to_proto(e) for e in events]


async def open_loop(call: Any, reqs: Sequence[Any], rate: float, lead_s: float = 0.05) -> float:
    """Open loop: start ``call(req, scheduled_start)`` for each request at ``rate`` per second, whether or not
    earlier calls returned; await them all. Returns the seconds from the first scheduled start to the end."""
    interval = 1.0 / rate
    tasks = []
    t0 = time.perf_counter() + lead_s
    i, n = 0, len(reqs)
    while i < n:
        now = time.perf_counter()
        while i < n and t0 + i * interval <= now:
            tasks.append(asyncio.create_task(call(reqs[i], t0 + i * interval)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i * interval - time.perf_counter()))
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


async def queue_drained(metrics_url: str, timeout_s: float = 60.0) -> float:
    """Poll the server's online queue depth until 0; returns the seconds waited."""
    from bench.procs import fetch

    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    while time.perf_counter() - t0 < timeout_s:
        text = await loop.run_in_executor(None, fetch, metrics_url)
        depth = total(parse_metrics(text), "portrait_queue_depth", queue="online")  # over workers, if several
        if not depth:
            break
        await asyncio.sleep(0.005)
    return time.perf_counter() - t0


async def cmd_batch(a: argparse.Namespace) -> dict[str, Any]:
    msgs = protos(load_events(a))
    reqs = [pb.TrackBatchRequest(events=msgs[i:i + a.batch]) for i in range(0, len(msgs), a.batch)]
    last = reqs.pop()
    last.wait_visible = True
    accepted = duplicates = rejected = 0
    async with grpc.aio.insecure_channel(a.target, options=OPTIONS) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        await ch.channel_ready()
        sem = asyncio.Semaphore(a.window)
        results: list[pb.TrackBatchResponse] = []

        async def send(r: pb.TrackBatchRequest) -> None:
            try:
                results.append(await stub.TrackBatch(r, timeout=a.timeout))
            finally:
                sem.release()

        cpu0 = server_cpu(a.server_pid)
        t0 = time.perf_counter()
        tasks = []
        for r in reqs:
            await sem.acquire()
            tasks.append(asyncio.create_task(send(r)))
        await asyncio.gather(*tasks)
        results.append(await stub.TrackBatch(last, timeout=a.timeout))
        t_ack = time.perf_counter() - t0
        drain = await queue_drained(a.metrics_url) if a.metrics_url else 0.0
        dt = time.perf_counter() - t0
        cpu = server_cpu(a.server_pid) - cpu0
    for res in results:
        accepted += res.accepted
        duplicates += res.duplicates
        rejected += len(res.rejected)
    return {"events": len(msgs), "seconds": dt, "eps": len(msgs) / dt, "ack_seconds": t_ack, "drain_wait_s": drain,
            "accepted": accepted, "duplicates": duplicates, "rejected": rejected, "batches": len(reqs) + 1,
            **cpu_fields(a, cpu, dt, len(msgs))}


async def cmd_stream(a: argparse.Namespace) -> dict[str, Any]:
    events = load_events(a)
    msgs = protos(events)
    sentinel = stream.variant(events[-1:], "sentinel-")
    sreq = pb.TrackBatchRequest(events=protos(sentinel), wait_visible=True)
    async with grpc.aio.insecure_channel(a.target, options=OPTIONS) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        await ch.channel_ready()
        cpu0 = server_cpu(a.server_pid)
        t0 = time.perf_counter()
        res = await stub.TrackStream(iter(msgs), timeout=a.timeout)
        t_ack = time.perf_counter() - t0
        await stub.TrackBatch(sreq, timeout=a.timeout)
        drain = await queue_drained(a.metrics_url) if a.metrics_url else 0.0
        dt = time.perf_counter() - t0
        cpu = server_cpu(a.server_pid) - cpu0
    return {"events": len(msgs), "seconds": dt, "eps": len(msgs) / dt, "ack_seconds": t_ack, "drain_wait_s": drain,
            "accepted": res.accepted, "duplicates": res.duplicates, "rejected": len(res.rejected),
            **cpu_fields(a, cpu, dt, len(msgs))}


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server process (0 if no pid was given)."""
    from bench.procs import cpu_seconds

    return cpu_seconds(pid) if pid else 0.0


def cpu_fields(a: argparse.Namespace, cpu: float, dt: float, n: int) -> dict[str, float]:
    """Server CPU over the timed window: cores busy (~1.0 = the event loop and the GIL saturated) and
    events per server CPU-second (less sensitive to other load on the machine than events/s)."""
    if not a.server_pid or cpu <= 0:
        return {}
    return {"server_cpu_s": cpu, "server_cores_busy": cpu / dt, "eps_per_server_cpu_s": n / cpu}


async def cmd_unary(a: argparse.Namespace) -> dict[str, Any]:
    n = int(a.rate * a.duration)
    a.limit = n
    events = load_events(a)
    if len(events) < n:
        raise SystemExit(f"need {n} events for unary, the stream has {len(events)}")
    reqs = [pb.TrackRequest(event=m) for m in protos(events)]
    latencies: list[float] = []
    send_lag: list[float] = []
    errors: dict[str, int] = {}
    details: dict[str, str] = {}
    async with grpc.aio.insecure_channel(a.target, options=OPTIONS) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        await ch.channel_ready()
        for r in reqs[:50]:  # warm the channel and the server's unary path (not measured)
            await stub.Track(pb.TrackRequest(event=stream_warm(r.event)), timeout=a.timeout)

        async def call(r: pb.TrackRequest, scheduled: float) -> None:
            send_lag.append(time.perf_counter() - scheduled)
            try:
                await stub.Track(r, timeout=a.timeout)
                latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                details.setdefault(exc.code().name, str(exc.details())[:200])

        elapsed = await open_loop(call, reqs, a.rate, lead_s=0.05)
    out: dict[str, Any] = {"calls": n, "offered_rate": a.rate, "achieved_rate": len(latencies) / elapsed,
                           "errors": errors, "error_details": details,
                           "send_lag_p99": latency_summary(send_lag)["p99"]}
    out.update(latency_summary(latencies))
    return out


def stream_warm(m: pb.Event) -> pb.Event:
    w = pb.Event()
    w.CopyFrom(m)
    w.event_id = "warm-" + m.event_id
    w.user_id = "warm-" + m.user_id
    return w


async def cmd_fresh(a: argparse.Namespace) -> dict[str, Any]:
    n_batches = int(a.duration / a.interval)
    a.limit = n_batches * a.batch
    a.users = "unique"
    events = load_events(a)
    msgs = protos(events)
    reqs = [pb.TrackBatchRequest(events=msgs[i:i + a.batch]) for i in range(0, len(msgs), a.batch)]
    sent: list[float] = [0.0] * len(reqs)
    acked: list[float] = [0.0] * len(reqs)
    accepted = 0
    async with grpc.aio.insecure_channel(a.target, options=OPTIONS) as ch:
        stub = pb_grpc.ProfileServiceStub(ch)
        await ch.channel_ready()

        async def call(j: int) -> None:
            nonlocal accepted
            sent[j] = time.time()
            res = await stub.TrackBatch(reqs[j], timeout=a.timeout)
            acked[j] = time.time()
            accepted += res.accepted

        # wall clock to mono: the poller uses the same wall-clock schedule
        delay = a.start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        m0 = time.perf_counter()
        tasks = []
        for j in range(len(reqs)):
            wait = m0 + j * a.interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(call(j)))
        await asyncio.gather(*tasks)
    ack = [x - s for s, x in zip(sent, acked)]
    return {"batches": len(reqs), "batch": a.batch, "events": len(msgs), "accepted": accepted, "sent": sent,
            "offered_eps": a.batch / a.interval, "ack": latency_summary(ack),
            "send_lag_max": max(s - (a.start_at + j * a.interval) for j, s in enumerate(sent))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.client")
    ap.add_argument("cmd", choices=("batch", "stream", "unary", "fresh"))
    ap.add_argument("--target", required=True)
    ap.add_argument("--events", required=True, help="pickled events (bench.stream.save)")
    ap.add_argument("--prefix", required=True, help="prefix of user/event ids (one per round)")
    ap.add_argument("--shift", type=float, default=0.0, help="seconds added to every event time")
    ap.add_argument("--users", default="prefix", choices=("prefix", "keep", "unique"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N events")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--window", type=int, default=2, help="TrackBatch calls in flight")
    ap.add_argument("--metrics-url", default="")
    ap.add_argument("--server-pid", type=int, default=0, help="measure this process' CPU over the timed window")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock start (fresh)")
    ap.add_argument("--timeout", type=float, default=300.0, help="deadline per call (s)")
    a = ap.parse_args(argv)
    fn = {"batch": cmd_batch, "stream": cmd_stream, "unary": cmd_unary, "fresh": cmd_fresh}[a.cmd]
    print(json.dumps(asyncio.run(fn(a))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
