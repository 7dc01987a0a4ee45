"""The abuse run (issue #12, "Hold under abuse"): unary Track p99 at rest vs under a flood of idle peers.

``python -m bench --only abuse [--quick]`` runs it as the phase ``abuse`` (``run_phase``). Against one fresh
server (free ports, temp data dir, embedded Redis unless ``--redis-url``; ``PORTRAIT_STREAM_IDLE_S`` = 120 s
unless set in the environment, so the idle streams are really held through the window; every other setting
is the server's default or the environment's):

1. **at rest**: a measurement channel is connected and warmed (50 Track), then unary Track, one valid event
   per call, open loop at ``RATE`` calls/s for the round length (5 s, 2 s quick); latency from the scheduled
   start to the reply; OK vs error codes counted.
2. **flood**: ``IDLE_STREAMS`` TrackStreams are opened over ``STREAM_CHANNELS`` channels of their own and send
   nothing; then ``FLOOD`` plain TCP connections that never send a byte are opened by ``FLOOD_PROCS`` holder
   processes (``hold`` below; one process may hold at most its RLIMIT_NOFILE sockets). Each holder reports
   connects that succeeded / failed and, per socket, when the server closed it (EOF or reset).
3. **under flood**: while all that is held, the same Track load on the same (already connected) channel,
   and, concurrently, the first Track of a *new* channel (a new client arriving during the flood: it may be
   refused while a connection cap is full; that is reported, not hidden).
4. **release**: holders close their sockets (RST), streams are cancelled; then the server must still be alive
   and answer Track on a new channel. Server RSS / open fds / threads are sampled at rest, every 0.5 s during
   the flood (peak) and after.

Subcommands (children of the phase; one JSON object per line on stdout):

``hold``   ``--count`` TCP connections to ``--target`` once ``--go`` exists; one ``ready`` line when every
           connect has finished (or ``--connect-s`` ran out), then watches them until ``--stop`` exists (or
           ``--max-s``), then one ``final`` line and the sockets are reset.
``drive``  the measurement above (steps 1-4); starts the flood by creating ``--go``, ends it with ``--stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.client import open_loop
from bench.stats import latency_summary, parse_metrics

if TYPE_CHECKING:
    from bench.run import Bench

FLOOD = 20_000  # idle TCP connections held against the server
FLOOD_PROCS = 4  # holder processes (each holds FLOOD / FLOOD_PROCS sockets; the open-file limit here is 20,000)
IDLE_STREAMS = 256  # TrackStreams that send nothing
STREAM_CHANNELS = 4  # channels (connections) carrying them
RATE = 200.0  # offered Track calls/s, at rest and under flood
CALL_TIMEOUT_S = 5.0  # deadline of each measured Track
NEW_CHANNEL_TIMEOUT_S = 10.0  # deadline of the new channel's first Track during the flood
CONNECT_S = 15.0  # holders: time allowed for all their connects to finish
STREAM_IDLE_S = "120"  # PORTRAIT_STREAM_IDLE_S for the run (unless set in the environment)
KNOBS = ("max_connections", "reserved_fds", "handshake_timeout_s", "connection_idle_s", "max_inflight_streams",
         "max_inflight_rpcs", "stream_idle_s", "stream_timeout_s")


# -- the phase (runs in the orchestrator) --------------------------------------------------------------
def run_phase(b: Bench) -> dict[str, Any]:
    """Spawn a fresh server and the holders, run ``drive`` against them, stop everything; the phase's JSON
    (registered as ``b.results["abuse"]`` at once, so a failed run still records what it got)."""
    from bench import procs
    from bench.procs import free_port, spawn, stop, wait_serving

    data = b.work / "abuse-data"
    grpc_port, metrics_port = free_port(), free_port()
    env = dict(b.env, PORTRAIT_GRPC_PORT=str(grpc_port), PORTRAIT_METRICS_PORT=str(metrics_port), PORTRAIT_UI_PORT="0",
               PORTRAIT_DATA_DIR=str(data), PORTRAIT_BIND="127.0.0.1",
               PORTRAIT_LOG_LEVEL=os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
               PORTRAIT_STREAM_IDLE_S=os.environ.get("PORTRAIT_STREAM_IDLE_S", STREAM_IDLE_S))
    if b.a.redis_url:
        env.update(PORTRAIT_REDIS_URL=b.a.redis_url, PORTRAIT_FEAST_REDIS="")
    else:
        env.update(PORTRAIT_REDIS_URL="", PORTRAIT_FEAST_REDIS="", PORTRAIT_EMBEDDED_REDIS_PORT=str(free_port()))
    out: dict[str, Any] = {"redis": "given" if b.a.redis_url else "embedded",
                           "flood": FLOOD, "flood_procs": FLOOD_PROCS, "idle_streams": IDLE_STREAMS,
                           "stream_channels": STREAM_CHANNELS, "rate": RATE, "seconds": b.s.unary_s}
    b.results["abuse"] = out
    log = b.work / "abuse-server.log"
    go, halt = b.work / "abuse.go", b.work / "abuse.stop"
    srv = spawn(b.py("server", "serve"), log, env=env, cwd=b.repo)
    holders: list[Any] = []
    try:
        target = f"127.0.0.1:{grpc_port}"
        wait_serving(target, srv, log)
        # the holders start now (before any grpc.aio channel exists in the driver) and wait for ``go``
        per = [FLOOD // FLOOD_PROCS + (1 if i < FLOOD % FLOOD_PROCS else 0) for i in range(FLOOD_PROCS)]
        max_s = 3 * b.s.unary_s + CONNECT_S + NEW_CHANNEL_TIMEOUT_S + 240.0  # a hard bound if nobody says stop
        outs = []
        for i, n in enumerate(per):
            hlog = b.work / f"abuse-hold-{i}.log"
            outs.append(hlog.with_suffix(".out"))
            holders.append(spawn(b.py("bench.abuse", "hold", "--target", target, "--count", str(n), "--go", str(go),
                                      "--stop", str(halt), "--connect-s", str(CONNECT_S), "--max-s", str(max_s)),
                                 hlog, env=b.env, cwd=b.repo, stdout_path=outs[-1]))
        murl = f"http://127.0.0.1:{metrics_port}/metrics"
        held = ",".join(f"{p.pid}:{o}" for p, o in zip(holders, outs))
        dlog = b.work / "abuse-drive.log"
        # the driver reports the server's settings as the server sees them: its default or this environment
        drv = spawn(b.py("bench.abuse", "drive", "--target", target, "--metrics-url", murl,
                         "--server-pid", str(srv.pid), "--events", str(b.events_file), "--prefix", b.tag + "ab-",
                         "--shift", str(b.next_shift()), "--seconds", str(b.s.unary_s), "--go", str(go),
                         "--stop", str(halt), "--holders", held),
                    dlog, env=dict(b.env, PORTRAIT_STREAM_IDLE_S=env["PORTRAIT_STREAM_IDLE_S"]), cwd=b.repo,
                    stdout_path=dlog.with_suffix(".out"))
        try:  # not procs.run_json: on Ctrl-C it would forget the driver without stopping it
            drv.wait(timeout=max_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"abuse driver did not finish within {max_s:.0f} s; see {dlog}") from None
        finally:
            stop(drv, grace_s=5.0)
        lines = read_lines(dlog.with_suffix(".out"))
        if drv.returncode != 0 or not lines:
            raise RuntimeError(f"abuse driver exited {drv.returncode}; see {dlog}:\n{procs.tail(dlog)}")
        out.update(lines[-1])
        out["server_alive_after"] = srv.poll() is None
        out["server_exit_code_during_run"] = srv.returncode
    finally:
        halt.touch()
        for p in holders:
            stop(p, grace_s=5.0)
        out["exit_code"] = stop(srv, grace_s=30.0)
        out["server_log"] = log_summary(log)
        if b.a.redis_url:
            b.forget_rows(b.a.redis_url)
        if procs.CHILDREN:
            b.log(f"abuse: {len(procs.CHILDREN)} children still registered (stopped at the end of the run)")
    a, f = out.get("at_rest", {}), out.get("under_flood", {})
    b.log(f"abuse: Track p99 at rest {a.get('p99', math.nan) * 1e3:.1f} ms, under flood "
          f"{f.get('p99', math.nan) * 1e3:.1f} ms, accepted under flood {f.get('accepted_pct', math.nan):.1f} %, "
          f"server alive after: {out.get('server_alive_after')}")
    return out


def server_settings(env: os._Environ[str] | dict[str, str]) -> dict[str, Any]:
    """The server's connection/stream limits for this run: the environment's value, else the server's default;
    None where this server has no such setting (yet)."""
    try:
        from server.config import Settings

        fields = Settings.model_fields
    except Exception:
        fields = {}
    out: dict[str, Any] = {}
    for name in KNOBS:
        key = "PORTRAIT_" + name.upper()
        if fields and name not in fields:
            out[name] = None  # this server has no such setting (whatever the environment says)
        else:
            value = env.get(key)
            out[name] = value if value is not None else fields[name].default if name in fields else None
    return out


def log_summary(path: Path, n: int = 5) -> dict[str, Any]:
    """How many lines the server logged (WARNING and up by default), how many mention running out of
    file descriptors, and the first few distinct ones."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    first: list[str] = []
    for ln in lines:
        short = ln.strip()[:200]
        if "nanobind" in short or short.startswith("- "):  # duckdb's noise at interpreter exit
            continue
        if short and short not in first and len(first) < n:
            first.append(short)
    marks = ("Too many open files", "EMFILE", "File descriptor limit reached")
    emfile = sum(1 for ln in lines if any(m in ln for m in marks))
    return {"lines": len(lines), "emfile_lines": emfile, "first": first}


# -- hold: idle TCP connections ------------------------------------------------------------------------
def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def cmd_hold(a: argparse.Namespace) -> int:
    nofile = raise_nofile()
    host, port = a.target.rsplit(":", 1)
    addr = (host, int(port))
    go, halt = Path(a.go), Path(a.stop)
    t_start = time.monotonic()
    while not go.exists():  # bounded: the orchestrator always creates ``stop`` (and we give up at max_s)
        if halt.exists() or time.monotonic() - t_start > a.max_s:
            emit({"final": True, "started": False})
            return 0
        time.sleep(0.01)
    deadline = time.monotonic() + a.max_s
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    pending: set[int] = set()
    opened_at: dict[int, float] = {}  # fd -> wall time the connect finished
    started_at: dict[int, float] = {}  # fd -> wall time connect() was called (while pending)
    connect_s: list[float] = []  # connect() -> established, per connection
    failed: dict[str, int] = {}
    closed: dict[str, int] = {}
    close_times: list[float] = []  # wall times the server closed a socket
    close_after: list[float] = []  # seconds from connect to the server's close
    got_data = 0
    bytes_in = 0
    seen_data: set[int] = set()  # fds the server sent bytes on (its HTTP/2 settings, a GOAWAY)
    watch = select.EPOLLIN | select.EPOLLRDHUP
    t_go = time.time()

    def fail(reason: str) -> None:
        failed[reason] = failed.get(reason, 0) + 1

    def drop(fd: int) -> None:
        with contextlib.suppress(OSError):
            ep.unregister(fd)
        s = socks.pop(fd)
        seen_data.discard(fd)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def handle(fd: int, ev: int) -> None:
        nonlocal got_data, bytes_in
        if fd in pending:
            pending.discard(fd)
            t_start = started_at.pop(fd)
            err = socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail(errno.errorcode.get(err, str(err)))
                drop(fd)
                return
            opened_at[fd] = time.time()
            connect_s.append(opened_at[fd] - t_start)
            ep.modify(fd, watch)
            return
        s = socks[fd]
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:  # ECONNRESET mostly
            reason = errno.errorcode.get(exc.errno or 0, "error")
        else:
            if data:
                if fd not in seen_data:
                    seen_data.add(fd)
                    got_data += 1
                bytes_in += len(data)
                return
            reason = "eof"
        now = time.time()
        closed[reason] = closed.get(reason, 0) + 1
        close_times.append(round(now, 3))
        close_after.append(round(now - opened_at.get(fd, now), 3))
        opened_at.pop(fd, None)
        drop(fd)

    def poll(timeout: float) -> None:
        for fd, ev in ep.poll(timeout, 4096):
            if fd in socks:
                handle(fd, ev)

    for i in range(a.count):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            fail(errno.errorcode.get(exc.errno or 0, "socket"))
            continue
        s.setblocking(False)
        fd = s.fileno()
        socks[fd] = s
        t = time.time()
        rc = s.connect_ex(addr)
        if rc == 0:
            opened_at[fd] = time.time()
            connect_s.append(opened_at[fd] - t)
            ep.register(fd, watch)
        elif rc in (errno.EINPROGRESS, errno.EAGAIN):
            pending.add(fd)
            started_at[fd] = t
            ep.register(fd, select.EPOLLOUT)
        else:
            fail(errno.errorcode.get(rc, str(rc)))
            drop(fd)
        if i % 256 == 255:
            poll(0)  # notice early closes while still connecting
    connect_deadline = time.monotonic() + a.connect_s
    while pending and time.monotonic() < min(connect_deadline, deadline) and not halt.exists():
        poll(0.05)
    for fd in list(pending):
        pending.discard(fd)
        started_at.pop(fd, None)
        fail("connect_timeout")
        drop(fd)
    connected = len(opened_at) + len(close_times)
    emit({"ready": True, "count": a.count, "connected": connected, "failed": failed, "t_go": t_go,
          "t_ready": time.time(), "open_at_ready": len(opened_at), "nofile": nofile,
          "connect_s": latency_summary(connect_s)})
    while not halt.exists() and time.monotonic() < deadline:
        poll(0.05)
    t_stop = time.time()
    still_open = len(opened_at)
    for fd in list(socks):
        drop(fd)  # SO_LINGER 0: reset, no TIME_WAIT left behind
    ep.close()
    emit({"final": True, "started": True, "count": a.count, "connected": connected, "failed": failed,
          "closed_by_server": closed, "close_times": close_times, "close_after": close_after,
          "still_open_at_stop": still_open, "got_data": got_data, "bytes_in": bytes_in, "t_go": t_go,
          "t_stop": t_stop, "stopped_by": "stop" if halt.exists() else "max_s"})
    return 0


# -- drive: the measurement ----------------------------------------------------------------------------
def proc_stats(pid: int) -> dict[str, Any]:
    """RSS, open fds, threads and CPU seconds of a process (None if it is gone)."""
    from bench.procs import cpu_seconds, rss_bytes

    try:
        threads = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            if line.startswith("State:") and line.split()[1] == "Z":
                return {"alive": False}
        return {"alive": True, "rss": rss_bytes(pid), "fds": len(os.listdir(f"/proc/{pid}/fd")), "nofile": nofile(pid),
                "threads": threads, "cpu_s": cpu_seconds(pid), "t": time.time()}
    except (OSError, ValueError):
        return {"alive": False}


def nofile(pid: int) -> int | None:
    """The soft open-file limit of a process (``Max open files`` in /proc/<pid>/limits)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            v = line.split()[3]
            return int(v) if v.isdigit() else None
    return None


NETSTAT = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv", "TCPReqQFullDoCookies",
           "TCPReqQFullDrop")


def netstat() -> dict[str, int]:
    """The kernel's listen-queue counters (TcpExt in /proc/net/netstat; for the whole network namespace)."""
    try:
        rows = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines() if ln.startswith("TcpExt:")]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:]) if k in NETSTAT}
    except (OSError, IndexError, ValueError):
        return {}


def rejected(murl: str) -> dict[str, float]:
    """``portrait_rejected_total`` by reason (empty if /metrics does not answer)."""
    from bench.procs import fetch

    try:
        m = parse_metrics(fetch(murl, timeout_s=3.0))
    except Exception:
        return {}
    return {dict(lbl).get("reason", ""): v for (n, lbl), v in m.items() if n == "portrait_rejected_total"}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for ln in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(ln))
    return out


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def wait_holders(holders: list[tuple[int, Path]], key: str, timeout_s: float) -> list[dict[str, Any] | None]:
    """Each holder's first line carrying ``key`` (None for a holder that died or did not answer in time)."""
    deadline = time.monotonic() + timeout_s
    got: list[dict[str, Any] | None] = [None] * len(holders)
    while time.monotonic() < deadline:
        for i, (_pid, path) in enumerate(holders):
            if got[i] is None:
                got[i] = next((x for x in read_lines(path) if x.get(key)), None)
        if all(g is not None or not pid_alive(pid) for g, (pid, _) in zip(got, holders)):
            for i, (_, path) in enumerate(holders):  # a last look (it may have written just before exiting)
                if got[i] is None:
                    got[i] = next((x for x in read_lines(path) if x.get(key)), None)
            break
        await asyncio.sleep(0.05)
    return got


async def track_load(stub: Any, reqs: list[Any], rate: float) -> dict[str, Any]:
    """Open-loop unary Track at ``rate`` calls/s; latency from the scheduled start to the reply."""
    import grpc

    ok: list[float] = []
    failed: list[float] = []
    codes: dict[str, int] = {}
    details: dict[str, str] = {}

    async def call(r: Any, scheduled: float) -> None:
        try:
            await stub.Track(r, timeout=CALL_TIMEOUT_S)
            ok.append(time.perf_counter() - scheduled)
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.aio.AioRpcError as exc:
            failed.append(time.perf_counter() - scheduled)
            name = exc.code().name
            codes[name] = codes.get(name, 0) + 1
            details.setdefault(name, str(exc.details())[:200])

    n = len(reqs)
    elapsed = await open_loop(call, reqs, rate, lead_s=0.02)
    out: dict[str, Any] = {"sent": n, "ok": len(ok), "accepted_pct": 100.0 * len(ok) / n if n else math.nan,
                           "codes": codes, "error_details": details, "offered_rate": rate,
                           "achieved_rate": len(ok) / elapsed, "failed_latency": latency_summary(failed)}
    out.update(latency_summary(ok))
    return out


async def first_track(target: str, req: Any, timeout_s: float) -> dict[str, Any]:
    """A new channel (its own connection) and its first Track: outcome and time from creating the channel."""
    import grpc

    from bench.client import OPTIONS
    from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc

    t0 = time.perf_counter()
    ch = grpc.aio.insecure_channel(target, options=[*OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
    try:
        await pb_grpc.ProfileServiceStub(ch).Track(req, timeout=timeout_s)
        return {"code": "OK", "seconds": time.perf_counter() - t0}
    except grpc.aio.AioRpcError as exc:
        return {"code": exc.code().name, "seconds": time.perf_counter() - t0, "details": str(exc.details())[:200]}
    finally:
        await ch.close()


async def sampler(pid: int, into: list[dict[str, Any]], stop: asyncio.Event, every_s: float = 0.5) -> None:
    """Sample the server's stats in a thread (listing 20k fds takes a few ms; not on the event loop)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        into.append(await loop.run_in_executor(None, proc_stats, pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def cmd_drive(a: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from bench import stream
    from bench.client import OPTIONS
    from server._gen.portrait.v1 import portrait_pb2 as pb
    from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
    from server.api import convert

    n = max(1, int(RATE * a.seconds))
    events = stream.variant(stream.load(a.events), a.prefix, shift_s=a.shift)
    need = 50 + 2 * n + 1 + 21
    if len(events) < need:
        raise SystemExit(f"the abuse run needs {need} events, the stream has {len(events)}")
    reqs = [pb.TrackRequest(event=convert.event_to_proto(e)) for e in events[:need]]
    warm, rest, flood = reqs[:50], reqs[50:50 + n], reqs[50 + n:50 + 2 * n]
    newcomer, after = reqs[50 + 2 * n], reqs[50 + 2 * n + 1:]
    holders = [(int(p), Path(f)) for p, _, f in (h.partition(":") for h in a.holders.split(",") if h)]
    go, halt = Path(a.go), Path(a.stop)
    pid = a.server_pid
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"settings": server_settings(os.environ)}
    stats: dict[str, Any] = {}
    opts = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]

    ch = grpc.aio.insecure_channel(a.target, options=opts)
    stub = pb_grpc.ProfileServiceStub(ch)
    stream_chs: list[Any] = []
    calls: list[Any] = []
    try:
        await asyncio.wait_for(ch.channel_ready(), 30.0)
        for r in warm:
            await stub.Track(r, timeout=30.0)
        # 1. at rest
        stats["rest"] = await loop.run_in_executor(None, proc_stats, pid)
        out["at_rest"] = await track_load(stub, rest, RATE)

        # 2. flood: idle streams first (clients that got in), then the idle TCP connections
        t_streams = time.perf_counter()
        for k in range(STREAM_CHANNELS):
            c = grpc.aio.insecure_channel(a.target, options=[*opts, ("bench.abuse_stream_channel", k)])
            stream_chs.append(c)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.channel_ready(), 10.0)
        for i in range(IDLE_STREAMS):
            calls.append(pb_grpc.ProfileServiceStub(stream_chs[i % STREAM_CHANNELS]).TrackStream(
                timeout=3600.0))

        async def connected(c: Any) -> bool:
            try:
                await asyncio.wait_for(c.wait_for_connection(), 10.0)
                return True
            except (TimeoutError, grpc.aio.AioRpcError):
                return False

        started = await asyncio.gather(*(connected(c) for c in calls))
        await asyncio.sleep(0.5)  # let the server start every handler (and refuse what it refuses)
        out["streams"] = {"opened": IDLE_STREAMS, "started": sum(started),
                          "open_after_start": sum(1 for c in calls if not c.done()),
                          "open_s": time.perf_counter() - t_streams}
        rej0 = await loop.run_in_executor(None, rejected, a.metrics_url)
        net0 = netstat()
        samples: list[dict[str, Any]] = []
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sampler(pid, samples, stop_sampling))
        go.touch()
        t_go, t_go_wall = time.perf_counter(), time.time()
        ready = await wait_holders(holders, "ready", CONNECT_S + 30.0)
        out["flood_setup_s"] = time.perf_counter() - t_go
        out["holders_ready"] = sum(1 for r in ready if r)
        net1 = netstat()
        stats["during_start"] = await loop.run_in_executor(None, proc_stats, pid)

        # 3. under flood: the same load on the connected channel, and a new client's first Track
        t_win0 = time.time()
        newcomer_task = asyncio.create_task(first_track(a.target, newcomer, NEW_CHANNEL_TIMEOUT_S))
        out["under_flood"] = await track_load(stub, flood, RATE)
        t_win1 = time.time()
        out["new_channel_first_track"] = await newcomer_task
        stats["during_end"] = await loop.run_in_executor(None, proc_stats, pid)
        codes: dict[str, int] = {}
        for c in calls:
            if c.done():
                name = (await c.code()).name
                codes[name] = codes.get(name, 0) + 1
        out["streams"].update(open_at_window_end=sum(1 for c in calls if not c.done()), ended_by_server=codes)
        out["rejected_during_flood"] = delta(await loop.run_in_executor(None, rejected, a.metrics_url), rej0)
        net2 = netstat()
        out["kernel_listen_queue"] = {"until_ready": {k: v - net0.get(k, 0) for k, v in net1.items()},
                                      "until_window_end": {k: v - net0.get(k, 0) for k, v in net2.items()}}

        # 4. release everything
        halt.touch()
        for c in calls:
            c.cancel()
        for c in stream_chs:
            await c.close()
        stream_chs.clear()
        final = await wait_holders(holders, "final", 30.0)
        stop_sampling.set()
        await sampling
        out["connections"] = flood_summary(ready, final, t_win0, t_win1)
        alive = [s for s in samples if s.get("alive")]
        fds0 = stats["rest"].get("fds") or 0
        # the server's view: connections it holds = its open fds - those at rest (the client cannot tell a socket
        # the server accepted from one the kernel completed while the listen queue was full: see ListenOverflows)
        stats["connections_held"] = {k: stats[k]["fds"] - fds0 for k in ("during_start", "during_end")
                                     if stats[k].get("fds") is not None}
        stats["fds_timeline"] = [(round(s["t"] - t_go_wall, 2), s["fds"]) for s in alive]
        stats["peak"] = {"fds": max((s["fds"] for s in alive), default=None),
                         "rss": max((s["rss"] for s in alive), default=None),
                         "threads": max((s["threads"] for s in alive), default=None), "samples": len(samples)}
        cpu0, cpu1 = stats["during_start"].get("cpu_s"), stats["during_end"].get("cpu_s")
        if cpu0 is not None and cpu1 is not None:
            stats["cores_busy_under_flood"] = (cpu1 - cpu0) / max(t_win1 - t_win0, 1e-9)
        await asyncio.sleep(1.0)
        out["after"] = await after_check(a.target, stub, after, pid)
        stats["after"] = await loop.run_in_executor(None, proc_stats, pid)
    finally:
        halt.touch()
        for c in calls:
            c.cancel()
        for c in stream_chs:
            await c.close()
        await ch.close()
    out["server"] = stats
    p_rest, p_flood = out["at_rest"]["p99"], out["under_flood"]["p99"]
    out["p99_ratio"] = p_flood / p_rest if p_rest and not math.isnan(p_rest) and not math.isnan(p_flood) else None
    return out


async def after_check(target: str, stub: Any, reqs: list[Any], pid: int) -> dict[str, Any]:
    """After the release: is the server alive, how soon does a new channel's Track succeed (up to 15 s),
    and do 20 Track on the measurement channel succeed."""
    import grpc

    out: dict[str, Any] = {"alive": pid_alive(pid)}
    t0 = time.perf_counter()
    first: dict[str, Any] = {}
    tries = 0
    while time.perf_counter() - t0 < 15.0:
        tries += 1
        first = await first_track(target, reqs[0], 2.0)
        if first["code"] == "OK":
            break
        await asyncio.sleep(0.5)
    out["new_channel"] = dict(first, tries=tries, until_ok_s=time.perf_counter() - t0)
    lat: list[float] = []
    codes: dict[str, int] = {}
    for r in reqs[1:]:
        t = time.perf_counter()
        try:
            await stub.Track(r, timeout=CALL_TIMEOUT_S)
            lat.append(time.perf_counter() - t)
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
    out["track"] = {"sent": len(reqs) - 1, "codes": codes, **latency_summary(lat)}
    out["answers_track"] = first.get("code") == "OK" and codes.get("OK", 0) == len(reqs) - 1
    return out


def flood_summary(ready: list[dict[str, Any] | None], final: list[dict[str, Any] | None], t0: float,
                  t1: float) -> dict[str, Any]:
    """Connections over all holders: opened, failed, closed by the server (when), held through the window."""
    failed: dict[str, int] = {}
    closed: dict[str, int] = {}
    close_times: list[float] = []
    close_after: list[float] = []
    opened = got_data = 0
    for r in ready:
        for k, v in (r or {}).get("failed", {}).items():
            failed[k] = failed.get(k, 0) + v
    connect = [r["connect_s"] for r in ready if r and r.get("connect_s", {}).get("count")]
    for f in final:
        f = f or {}
        opened += f.get("connected", 0)
        got_data += f.get("got_data", 0)
        for k, v in f.get("closed_by_server", {}).items():
            closed[k] = closed.get(k, 0) + v
        close_times += f.get("close_times", [])
        close_after += f.get("close_after", [])
    if not any(final):  # no final line: count what the ready lines said
        opened = sum((r or {}).get("connected", 0) for r in ready)
    t_go = min((r["t_go"] for r in ready if r), default=t0)
    after_go = sorted(t - t_go for t in close_times)
    return {"attempted": FLOOD, "opened": opened, "failed": failed, "closed_by_server": sum(closed.values()),
            "closed_how": closed, "got_server_bytes": got_data,
            "held_at_window_start": opened - sum(1 for t in close_times if t <= t0),
            "held_at_window_end": opened - sum(1 for t in close_times if t <= t1),
            "close_after_go": latency_summary(after_go), "close_after_connect": latency_summary(close_after),
            "connect_s": {"p50_max": max((c["p50"] for c in connect), default=math.nan),
                          "p99_max": max((c["p99"] for c in connect), default=math.nan),
                          "max": max((c["max"] for c in connect), default=math.nan)},
            "setup_s": max((r["t_ready"] - r["t_go"] for r in ready if r), default=math.nan), "window_s": t1 - t0,
            "holders_missing": sum(1 for f in final if not f)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--target", required=True)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--go", required=True)
    h.add_argument("--stop", required=True)
    h.add_argument("--connect-s", type=float, default=CONNECT_S)
    h.add_argument("--max-s", type=float, default=300.0)
    d = sub.add_parser("drive")
    d.add_argument("--target", required=True)
    d.add_argument("--metrics-url", required=True)
    d.add_argument("--server-pid", type=int, required=True)
    d.add_argument("--events", required=True)
    d.add_argument("--prefix", required=True)
    d.add_argument("--shift", type=float, default=0.0)
    d.add_argument("--seconds", type=float, default=5.0)
    d.add_argument("--go", required=True)
    d.add_argument("--stop", required=True)
    d.add_argument("--holders", required=True, help="pid:stdout-file,...")
    a = ap.parse_args(argv)
    if a.cmd == "hold":
        return cmd_hold(a)
    emit(asyncio.run(cmd_drive(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
