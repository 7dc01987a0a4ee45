"""The orchestrator: generate the stream, run every contender one after the other, report.

Contenders never overlap (the machine has 2 cores): limit loop, then the Portrait server
(+ its client, poller), then the naive peer (+ the same client), then memory and scaling, then the
abuse run (its own server, idle-connection holders and client; bench/abuse.py).
Every child process is stopped at the end, also on Ctrl-C or an error (``procs.stop_all``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procs, stream
from bench.procs import PYTHON, ROOT, fetch, free_port, run_json, spawn, stop, wait_serving
from bench.stats import (
    bucket_delta,
    buckets,
    histogram_quantile,
    latency_summary,
    parse_metrics,
    sample,
    summary,
)

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Sizes:
    """How much work each phase does."""

    mode: str
    users: int  # simulated users of the base stream
    days: int  # simulated days of the base stream
    rounds: int  # rounds of each throughput measurement (median, min, max)
    batch: int = 500  # events per TrackBatch
    window: int = 2  # TrackBatch calls in flight
    unary_rate: float = 1000.0  # offered Track calls/s
    unary_s: float = 5.0  # seconds per unary round
    fresh_eps: float = 2000.0  # offered events/s in the freshness phase
    fresh_batch: int = 20  # events per freshness batch (so 1 batch every 10 ms at 2k events/s)
    fresh_s: float = 5.0  # seconds per freshness round
    naive_events: int = 500  # events sent to the naive peer per round (a prefix of the stream)
    memory_users: int = 5_000
    memory_days: int = 2
    scaling: tuple[int, ...] = (10_000, 100_000)
    scaling_rounds: int = 2
    timer_users: int = 100_000
    timer_hours: float = 48.0


QUICK = Sizes("quick", users=500, days=3, rounds=1, unary_s=2.0, fresh_s=2.0, naive_events=200,
              memory_users=1_500, memory_days=2, scaling=(10_000,), scaling_rounds=1, timer_users=10_000,
              timer_hours=26.0)
DEFAULT = Sizes("default", users=1500, days=3, rounds=3)
FULL = replace(DEFAULT, mode="full", scaling=(10_000, 100_000, 1_000_000), unary_s=10.0, fresh_s=10.0)


class Bench:
    """State of one benchmark run."""

    def __init__(self, a: argparse.Namespace, sizes: Sizes, work: Path) -> None:
        self.a = a
        self.s = sizes
        self.work = work
        self.repo = Path(a.repo).resolve()
        self.events_file = work / "events.pkl"
        self.events: list[Any] = []
        self.span = 0.0
        self.slots = itertools.count(1)
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.phase_s: dict[str, float] = {}
        self.env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
        self.pyspy = find_pyspy() if a.profile else None
        # on every user/event id this run writes, so its rows can be told apart (and deleted from a given Redis)
        self.tag = f"bn{a.stamp[2:8]}{a.stamp[9:15]}-"

    # -- helpers ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def phase(self, name: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        self.log(f"{name} ...")
        try:
            fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            self.log(f"{name} FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
        finally:
            self.phase_s[name] = round(time.monotonic() - t0, 1)
            self.log(f"{name} done in {self.phase_s[name]:.0f} s")

    def py(self, module: str, *args: str) -> list[str]:
        return [PYTHON, "-m", module, *args]

    def child(self, name: str, module: str, *args: str, timeout_s: float = 600.0) -> dict[str, Any]:
        return run_json(self.py(module, *args), self.work / f"{name}.log", timeout_s, env=self.env, cwd=self.repo)

    def client(self, name: str, cmd: str, target: str, prefix: str, *extra: str, shift: bool = True,
               shift_s: float | None = None) -> dict[str, Any]:
        sh = shift_s if shift_s is not None else self.next_shift() if shift else 0.0
        return self.child(name, "bench.client", cmd, "--target", target, "--events", str(self.events_file),
                          "--prefix", self.tag + prefix, "--shift", str(sh), *extra)

    def next_shift(self) -> float:
        """The event-time shift of the next slot (each run of the stream gets its own span of time)."""
        sh = next(self.slots) * self.span
        if stream.stream_start(self.s.days) + sh + self.span > time.time():
            raise RuntimeError("ran out of event-time slots (event times would be in the future)")
        return sh

    def settle(self, name: str, target: str, murl: str, shift_s: float, rounds: int = 8) -> dict[str, Any]:
        """Before a latency round: move event time to the round's slot and let the models catch up.

        Each slot jumps event time by days, so every decision still pending from the previous phase is
        overdue at once; the server resolves at most PORTRAIT_LABELS_PER_EVENT of them per event, so a
        latency round right after the jump would measure that catch-up, not the steady state. Batches of
        the stream at the round's shift are sent until the pending count stops falling (< 5 %)."""
        pending: list[float] = []
        for k in range(rounds):
            self.client(f"{name}-{k}", "batch", target, f"{name}{k}-", "--limit", "3000", shift_s=shift_s)
            m = parse_metrics(fetch(murl))
            pending.append(sum(v for (n, _), v in m.items() if n == "portrait_pending_labels"))
            if len(pending) > 1 and pending[-1] >= 0.95 * pending[-2]:
                break
        self.log(f"{name}: pending labels {' -> '.join(f'{p:,.0f}' for p in pending)}")
        return {"batches": len(pending), "pending": pending}

    # -- phases ----------------------------------------------------------------------------
    def make_stream(self) -> None:
        t0 = time.perf_counter()
        self.events = stream.generate(self.s.users, self.s.days, self.a.seed)
        stream.save(self.events, self.events_file)
        self.span = stream.slot_span(self.events)
        self.results["stream"] = {
            "users": self.s.users, "days": self.s.days, "seed": self.a.seed, "events": len(self.events),
            "active_users": len({e.user_id for e in self.events}), "generate_s": round(time.perf_counter() - t0, 2),
        }
        self.log(f"stream: {len(self.events):,} events of {self.results['stream']['active_users']:,} users")

    def limit(self) -> None:
        r = self.child("limit", "bench.inproc", "limit", "--events", str(self.events_file),
                       "--rounds", str(self.s.rounds))
        r["eps"] = summary(r.pop("eps_rounds"))
        r["eps_per_cpu_s"] = summary(r.pop("eps_per_cpu_s_rounds"))
        self.results["limit"] = r
        if self.a.profile:
            self.results["limit"]["profile"] = self.profile_limit()

    def profile_limit(self) -> dict[str, Any]:
        """Hot spots of the limit loop: py-spy (sampling) if available, else cProfile."""
        args = ["limit", "--events", str(self.events_file), "--rounds", "1"]
        if self.pyspy:
            raw = RESULTS / f"{self.a.stamp}-limit.pyspy.txt"
            cmd = [*self.pyspy, "record", "--gil", "--format", "raw", "--rate", "250", "-o", str(raw), "--",
                   *self.py("bench.inproc", *args)]
            p = spawn(cmd, self.work / "pyspy-limit.log", env=self.env, cwd=self.repo)
            p.wait(timeout=600)
            procs.CHILDREN.remove(p)
            if raw.exists():
                return {"tool": "py-spy --gil", "file": str(raw), **collapsed_top(raw, focus="run_loop")}
            self.log("py-spy produced nothing (see pyspy-limit.log); falling back to cProfile")
        prof = RESULTS / f"{self.a.stamp}-limit.cprofile"
        r = self.child("limit-cprofile", "bench.inproc", *args, "--cprofile", str(prof))
        return {"tool": "cProfile", "file": str(prof), "top_self": r.get("cprofile", [])}

    def portrait(self) -> None:
        data = self.work / "portrait-data"
        grpc_port, metrics_port = free_port(), free_port()
        env = dict(self.env, PORTRAIT_GRPC_PORT=str(grpc_port), PORTRAIT_METRICS_PORT=str(metrics_port),
                   PORTRAIT_UI_PORT="0", PORTRAIT_DATA_DIR=str(data), PORTRAIT_BIND="127.0.0.1",
                   PORTRAIT_LOG_LEVEL=os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"))
        if self.a.redis_url:
            redis_url = self.a.redis_url
            env.update(PORTRAIT_REDIS_URL=redis_url, PORTRAIT_FEAST_REDIS="")
        else:
            port = free_port()
            redis_url = f"redis://127.0.0.1:{port}/0"
            env.update(PORTRAIT_REDIS_URL="", PORTRAIT_FEAST_REDIS="", PORTRAIT_EMBEDDED_REDIS_PORT=str(port))
        log = self.work / "portrait-server.log"
        t0 = time.monotonic()
        srv = spawn(self.py("server", "serve"), log, env=env, cwd=self.repo)
        out: dict[str, Any] = {"redis": "given" if self.a.redis_url else "embedded", "pid": srv.pid,
                               "trainer": os.environ.get("PORTRAIT_TRAINER", "inprocess"),
                               "log_store": os.environ.get("PORTRAIT_LOG_STORE", "file")}
        self.results["portrait"] = out
        try:
            target = f"127.0.0.1:{grpc_port}"
            wait_serving(target, srv, log)
            out["startup_s"] = round(time.monotonic() - t0, 1)
            murl = f"http://127.0.0.1:{metrics_port}/metrics"
            self.log(f"portrait serving on {target} after {out['startup_s']} s (redis {redis_url}, "
                     f"trainer {out['trainer']}, log {out['log_store']})")
            self.client("warmup", "batch", target, "warm-", "--limit", "5000", "--metrics-url", murl)
            time.sleep(1.2)  # portrait_users is refreshed every second
            rss0, users0 = procs.rss_bytes(srv.pid), sample(parse_metrics(fetch(murl)), "portrait_users") or 0
            out["server_rss_after_warmup"] = rss0
            self.portrait_phases(out, target, murl, redis_url, srv)
            time.sleep(1.2)
            out["server_rss_bytes"] = procs.rss_bytes(srv.pid)
            out["server_users"] = users = sample(parse_metrics(fetch(murl)), "portrait_users") or 0
            if users > users0:  # RSS growth per user added during the run (dedupe, queues, Python heap incl.)
                out["server_rss_per_user"] = (out["server_rss_bytes"] - rss0) / (users - users0)
        finally:
            rc = stop(srv, grace_s=30.0)
            out["exit_code"] = rc
            if self.a.redis_url:
                self.forget_rows(self.a.redis_url)
            if rc not in (0, None):
                self.log(f"portrait server exited with {rc}; see {log}")

    def portrait_phases(self, out: dict[str, Any], target: str, murl: str, redis_url: str,
                        srv: subprocess.Popen[bytes]) -> None:
        s = self.s
        common = ["--batch", str(s.batch), "--window", str(s.window), "--metrics-url", murl,
                  "--server-pid", str(srv.pid)]
        # TrackBatch rounds (first one also measures Redis memory per user and the server's stage split)
        runs = []
        before = parse_metrics(fetch(murl))
        mem0 = redis_used_memory(redis_url)
        for r in range(s.rounds):
            spy = self.start_pyspy_server(srv.pid) if (r == 0 and self.pyspy) else None
            try:
                runs.append(self.client(f"batch-{r}", "batch", target, f"b{r}-", *common))
            finally:
                if spy:
                    out["profile"] = self.stop_pyspy(spy)
            if r == 0:
                mem1 = redis_used_memory(redis_url)
                users = sorted({e.user_id for e in self.events})
                out["redis"] = {"used_memory_delta_per_user": (mem1 - mem0) / len(users) if mem0 >= 0 else None,
                                "shared_redis": bool(self.a.redis_url)}
                from bench.poller import memory_per_user

                sampled = [f"{self.tag}b0-{u}" for u in users[:: max(1, len(users) // 500)]]
                out["redis"].update(memory_per_user(redis_url, sampled))
        after = parse_metrics(fetch(murl))
        out["stages"] = stage_split(before, after)
        out["batch"] = {"eps": summary([x["eps"] for x in runs]),
                        "eps_per_server_cpu_s": summary([x.get("eps_per_server_cpu_s", math.nan) for x in runs]),
                        "runs": runs}
        self.log(f"TrackBatch: {out['batch']['eps']['median']:,.0f} events/s")
        runs = []
        for r in range(s.rounds):
            spy = self.start_pyspy_server(srv.pid, "stream") if (r == 0 and self.pyspy) else None
            try:
                runs.append(self.client(f"stream-{r}", "stream", target, f"s{r}-", "--metrics-url", murl,
                                        "--server-pid", str(srv.pid)))
            finally:
                if spy:
                    out["profile_stream"] = self.stop_pyspy(spy)
        out["stream"] = {"eps": summary([x["eps"] for x in runs]),
                         "eps_per_server_cpu_s": summary([x.get("eps_per_server_cpu_s", math.nan) for x in runs]),
                         "runs": runs}
        self.log(f"TrackStream: {out['stream']['eps']['median']:,.0f} events/s")
        before = parse_metrics(fetch(murl))
        runs = []
        for r in range(s.rounds):
            sh = self.next_shift()
            settled = self.settle(f"settle-unary-{r}", target, murl, sh)
            runs.append(self.client(f"unary-{r}", "unary", target, f"t{r}-", "--rate", str(s.unary_rate),
                                    "--duration", str(s.unary_s), shift_s=sh) | {"settle": settled})
        after = parse_metrics(fetch(murl))
        out["unary"] = {"p50": summary([x["p50"] for x in runs]), "p99": summary([x["p99"] for x in runs]),
                        "runs": runs}
        track = {"grpc_type": "unary", "grpc_service": "portrait.v1.ProfileService", "grpc_method": "Track"}
        h = bucket_delta(buckets(after, "grpc_server_handling_seconds", **track),
                         buckets(before, "grpc_server_handling_seconds", **track))
        out["unary_server"] = {"p50": histogram_quantile(h, 0.5), "p99": histogram_quantile(h, 0.99),
                               "count": h[-1][1] if h else 0}
        self.log(f"unary: p50 {out['unary']['p50']['median'] * 1e3:.2f} ms, "
                 f"p99 {out['unary']['p99']['median'] * 1e3:.2f} ms")
        runs = [self.freshness(r, target, redis_url, murl) for r in range(s.rounds)]
        out["freshness"] = {"p50": summary([x["p50"] for x in runs]), "p99": summary([x["p99"] for x in runs]),
                            "runs": runs}
        per_round = [dict(x.pop("server_buckets")) for x in runs]
        h = sorted((le, sum(b.get(le, 0.0) for b in per_round)) for le in per_round[0])
        out["freshness_server"] = {"p50": histogram_quantile(h, 0.5), "p99": histogram_quantile(h, 0.99),
                                   "count": h[-1][1] if h else 0, "buckets": h}
        self.log(f"freshness: p50 {out['freshness']['p50']['median'] * 1e3:.1f} ms, "
                 f"p99 {out['freshness']['p99']['median'] * 1e3:.1f} ms")

    def freshness(self, r: int, target: str, redis_url: str, murl: str) -> dict[str, Any]:
        s = self.s
        sh = self.next_shift()
        settled = self.settle(f"settle-fresh-{r}", target, murl, sh)  # its rows are written when it returns
        before = parse_metrics(fetch(murl))  # per round: the settle batches' own rows are not counted
        interval = s.fresh_batch / s.fresh_eps
        n_batches = int(s.fresh_s / interval)
        count = n_batches * s.fresh_batch
        prefix = f"f{r}-"
        start_at = time.time() + 3.0
        plog = self.work / f"poller-{r}.log"
        poller = spawn(self.py("bench.poller", "fresh", "--redis-url", redis_url, "--prefix", self.tag + prefix,
                               "--count", str(count), "--batch", str(s.fresh_batch), "--interval", str(interval),
                               "--start-at", str(start_at)),
                       plog, env=self.env, cwd=self.repo, stdout_path=plog.with_suffix(".out"))
        try:
            sent = self.client(f"fresh-{r}", "fresh", target, prefix, "--batch", str(s.fresh_batch),
                               "--interval", str(interval), "--duration", str(s.fresh_s),
                               "--start-at", str(start_at), shift_s=sh)
            poller.wait(timeout=120)
        finally:
            stop(poller, grace_s=2.0)
        lines = [ln for ln in plog.with_suffix(".out").read_text().splitlines() if ln.strip()]
        if not lines:
            raise RuntimeError(f"freshness poller printed nothing; see {plog}")
        seen = json.loads(lines[-1])
        # a row never seen before the poller gave up counts with the time it waited (a lower bound)
        lat = [(t if t is not None else seen["gave_up_at"]) - sent["sent"][i // s.fresh_batch]
               for i, t in enumerate(seen["seen"])]
        after = parse_metrics(fetch(murl))
        res: dict[str, Any] = {**latency_summary(lat), "settle": settled, "server_buckets": bucket_delta(
            buckets(after, "portrait_freshness_seconds"), buckets(before, "portrait_freshness_seconds"))}
        res.update(offered_eps=s.fresh_eps, events=count, missing=seen["missing"], notifications=seen["notifications"],
                   accepted=sent["accepted"], ack=sent["ack"], send_lag_max=sent["send_lag_max"])
        return res

    def forget_rows(self, redis_url: str) -> None:
        """Delete this run's rows from a Redis the benchmark was given (the embedded ones are thrown away)."""
        from bench.poller import delete_tagged

        n = delete_tagged(redis_url, self.tag)
        self.log(f"deleted this run's {n:,} rows from {redis_url}")

    def naive(self) -> None:
        data = self.work / "naive-data"
        port = free_port()
        log = self.work / "naive-peer.log"
        args = ["--port", str(port), "--data-dir", str(data), "--feature-repo", str(self.repo / "feature_repo")]
        if self.a.redis_url:
            args += ["--redis-url", self.a.redis_url]
        srv = spawn(self.py("bench.naive_peer", *args), log, env=self.env, cwd=self.repo)
        out: dict[str, Any] = {}
        self.results["naive"] = out
        try:
            target = f"127.0.0.1:{port}"
            wait_serving(target, srv, log)
            n = str(self.s.naive_events)
            self.client("naive-warmup", "batch", target, "nwarm-", "--limit", "50", "--batch", "50")
            runs = [self.client(f"naive-{r}", "batch", target, f"n{r}-", "--limit", n, "--batch",
                                str(min(self.s.batch, self.s.naive_events)), "--window", str(self.s.window))
                    for r in range(self.s.rounds)]
            out["batch"] = {"eps": summary([x["eps"] for x in runs]), "runs": runs, "events": self.s.naive_events}
            self.log(f"naive peer: {out['batch']['eps']['median']:,.0f} events/s")
        finally:
            out["exit_code"] = stop(srv, grace_s=15.0)
            if self.a.redis_url:
                self.forget_rows(self.a.redis_url)

    def memory(self) -> None:
        self.results["memory"] = self.child("memory", "bench.inproc", "memory", "--users", str(self.s.memory_users),
                                            "--days", str(self.s.memory_days), "--seed", str(self.a.seed))

    def scaling(self) -> None:
        rows: list[dict[str, Any]] = []
        self.results["scaling"] = rows
        for n in self.s.scaling:
            r = self.child(f"scaling-{n}", "bench.inproc", "scaling", "--events", str(self.events_file),
                           "--population", str(n), "--rounds", str(self.s.scaling_rounds), timeout_s=1800)
            r["eps"] = summary(r.pop("eps_rounds"))
            rows.append(r)
            self.log(f"scaling {n:,} users: {r['eps']['median']:,.0f} events/s, "
                     f"{r['rss_per_user']:,.0f} B/user")

    def timers(self) -> None:
        """Timer load (bench/inproc.py timers): firings when time alone changes N users' profiles."""
        r = self.child("timers", "bench.inproc", "timers", "--users", str(self.s.timer_users),
                       "--hours", str(self.s.timer_hours), "--seed", str(self.a.seed), timeout_s=1800)
        self.results["timers"] = r
        self.log(f"timers {r['users']:,} users: {r['fired_per_user']:.1f} firings/user over {r['hours']:g} h, "
                 f"{r['fired_per_event_second']:,.1f}/s of event time, {r['us_per_firing']:,.0f} µs each")

    def costs(self) -> None:
        """Per-model costs (bench/inproc.py costs): each model's learning and the worker's stages per event, Score /
        Recommend / row per call, item-side memory per item."""
        r = self.child("costs", "bench.inproc", "costs", "--events", str(self.events_file), timeout_s=1800)
        self.results["costs"] = r
        self.log(f"costs: {r['us_per_event_total']:,.0f} µs/event in all; "
                 + ", ".join(f"{k} {v:,.1f}" for k, v in r["learn_us_per_event"].items()) + " µs/event")

    def components(self) -> None:
        """Each component of the scaled-out design apart, per event (bench/inproc.py components; issue #16), and the
        projection to more cores in the table (bench/report.py projection)."""
        r = self.child("components", "bench.inproc", "components", "--events", str(self.events_file),
                       "--feature-repo", str(self.repo / "feature_repo"), timeout_s=1800)
        self.results["components"] = r
        self.log("components: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["us_per_event"].items()) + " µs/event")

    def workers(self) -> None:
        """1, 2 and 4 partition workers as Ray actors on this machine, the driver routing by partition
        (bench/workers.py; issue #16): how the worker part scales over actors here, Ray's calls included."""
        r = self.child("workers", "bench.workers", "--events", str(self.events_file), timeout_s=1800)
        self.results["workers"] = r
        self.log("workers: " + ", ".join(f"{w['workers']} -> {w['events_per_s']:,.0f}/s" for w in r["rows"]))

    def servers(self) -> None:
        """The whole server (gRPC, logs, rows, learning) with PORTRAIT_WORKERS = 1, 2 and 4 on this machine: the
        bench stream through TrackBatch until visible, one fresh server and data dir per count (issue #16)."""
        rows = []
        for n in (1, 2, 4):
            data = self.work / f"servers-{n}"
            grpc_port, metrics_port, redis_port = free_port(), free_port(), free_port()
            env = dict(self.env, PORTRAIT_GRPC_PORT=str(grpc_port), PORTRAIT_METRICS_PORT=str(metrics_port),
                       PORTRAIT_UI_PORT="0", PORTRAIT_DATA_DIR=str(data), PORTRAIT_BIND="127.0.0.1",
                       PORTRAIT_WORKERS=str(n), PORTRAIT_REDIS_URL="", PORTRAIT_FEAST_REDIS="",
                       PORTRAIT_EMBEDDED_REDIS_PORT=str(redis_port),
                       PORTRAIT_LOG_LEVEL=os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"))
            log = self.work / f"servers-{n}.log"
            t0 = time.monotonic()
            srv = spawn(self.py("server", "serve"), log, env=env, cwd=self.repo)
            try:
                target = f"127.0.0.1:{grpc_port}"
                wait_serving(target, srv, log, timeout_s=600.0)
                startup = time.monotonic() - t0
                murl = f"http://127.0.0.1:{metrics_port}/metrics"
                self.client(f"servers-{n}-warmup", "batch", target, f"sw{n}-", "--limit", "5000")
                r = self.client(f"servers-{n}", "batch", target, f"s{n}-", "--batch", str(self.s.batch),
                                "--window", str(2 * n), "--metrics-url", murl)
                rows.append({"workers": n, "events_per_s": r["eps"], "events": r["events"],
                             "accepted": r["accepted"], "seconds": r["seconds"], "startup_s": round(startup, 1)})
                self.log(f"servers: {n} workers -> {r['eps']:,.0f} events/s (startup {startup:.0f} s)")
            finally:
                rc = stop(srv, grace_s=60.0)
                if rc not in (0, None):
                    self.log(f"portrait server ({n} workers) exited with {rc}; see {log}")
        self.results["servers"] = {"cores": os.cpu_count(), "rows": rows}

    def abuse(self) -> None:
        """Track p99 at rest vs while 20k idle TCP connections and 256 idle TrackStreams are held (bench/abuse.py)."""
        from bench.abuse import run_phase

        run_phase(self)  # records self.results["abuse"]

    # -- py-spy on the server ------------------------------------------------------------------
    def start_pyspy_server(self, pid: int, tag: str = "batch") -> tuple[subprocess.Popen[bytes], Path] | None:
        assert self.pyspy
        raw = RESULTS / f"{self.a.stamp}-server-{tag}.pyspy.txt"
        cmd = [*self.pyspy, "record", "--gil", "--format", "raw", "--rate", "250", "--pid", str(pid), "-o", str(raw)]
        p = spawn(cmd, self.work / "pyspy-server.log", env=self.env, cwd=self.repo)
        time.sleep(1.0)
        return p, raw

    def stop_pyspy(self, spy: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any]:
        p, raw = spy
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop(p, grace_s=1.0)
        if p in procs.CHILDREN:
            procs.CHILDREN.remove(p)
        if not raw.exists():
            return {"tool": "py-spy", "error": procs.tail(self.work / "pyspy-server.log", 5)}
        return {"tool": "py-spy --gil", "file": str(raw), **collapsed_top(raw)}


# -- helpers -----------------------------------------------------------------------------------
def find_pyspy() -> list[str] | None:
    """py-spy on PATH, else through ``uvx`` (a tool environment of its own; never the project's venv)."""
    if shutil.which("py-spy"):
        return ["py-spy"]
    if shutil.which("uvx"):
        return ["uvx", "py-spy"]
    return None


def collapsed_top(path: Path, n: int = 20, focus: str = "") -> dict[str, Any]:
    """Top functions by own and by inclusive samples, and own samples per library, from py-spy's raw
    (collapsed) output. Stacks whose leaf is an idle wait are skipped; with ``focus`` only stacks
    through a frame containing it count (e.g. the timed loop, not the imports before it)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    area: dict[str, int] = {}
    total = idle = 0
    idle_marks = ("select (selectors.py", "wait (threading.py", "_worker (concurrent/futures/thread.py",
                  "get (queue.py", "sleep (")
    plumbing = ("<frozen", "asyncio/", "threading.py", "concurrent/futures", "bench/", "server/__main__.py",
                "server/cli.py")
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if focus and focus not in stack:
            continue
        c = int(count)
        raw_frames = stack.split(";")
        total += c
        if any(m in raw_frames[-1] for m in idle_marks):
            idle += c
            continue
        frames = []
        for f in raw_frames:
            func, _, loc = f.rpartition(" (")
            file = loc.rsplit(":", 1)[0] if loc else "?"
            frames.append((f"{func} ({file})", file))
        leaf, leaf_file = frames[-1]
        own[leaf] = own.get(leaf, 0) + c
        lib = leaf_file.split("/")[0] if "/" in leaf_file else leaf_file
        if lib == "server":
            lib = leaf_file
        area[lib] = area.get(lib, 0) + c
        for name in {name for name, file in frames if not any(p in file for p in plumbing)}:
            incl[name] = incl.get(name, 0) + c
    busy = max(total - idle, 1)

    def top(d: dict[str, int], k: int = n) -> list[dict[str, Any]]:
        return [{"function": name, "samples": v, "pct_of_busy": round(100 * v / busy, 1)}
                for name, v in sorted(d.items(), key=lambda kv: -kv[1])[:k]]

    return {"samples": total, "idle_samples": idle, "top_self": top(own), "top_inclusive": top(incl),
            "self_by_library": top(area, 15)}


def redis_used_memory(url: str) -> int:
    """INFO memory used_memory of the Redis at ``url`` (-1 if unreachable)."""
    import redis

    try:
        r = redis.Redis.from_url(url)
        try:
            info: dict[str, Any] = r.info("memory")  # type: ignore[assignment]
            return int(info["used_memory"])
        finally:
            r.close()
    except Exception:
        return -1


def stage_split(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any]:
    """Seconds spent per pipeline stage between two scrapes, and each stage's share."""
    out: dict[str, float] = {}
    for (name, labels), v in after.items():
        if name == "portrait_stage_duration_seconds_sum":
            out[dict(labels)["stage"]] = v - before.get((name, labels), 0.0)
    total = sum(out.values()) or 1.0
    return {k: {"seconds": round(v, 3), "pct": round(100 * v / total, 1)} for k, v in sorted(out.items())}


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "server"))}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("grpcio", "feast", "river", "redis", "protobuf", "prometheus-client"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description="Portrait benchmark: fast, measured against its "
                                 "limit. Prints one table; writes bench/results/<timestamp>.json and latest.json.")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="~1 minute smoke run (1 round, small sizes)")
    size.add_argument("--full", action="store_true", help="also 1M users in the scaling phase, 10 s latency rounds")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per throughput measurement (default 3, quick 1)")
    ap.add_argument("--redis-url", default=os.environ.get("PORTRAIT_REDIS_URL", ""),
                    help="redis://host:port/db for the online store (default $PORTRAIT_REDIS_URL; unset: the "
                         "server's embedded Redis on a free port)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="",
                    help="comma-separated phases: limit,portrait,naive,memory,scaling,timers,costs,components,workers,"
                         "abuse")
    ap.add_argument("--profile", action="store_true", help="py-spy (via uvx) the limit loop and the server during "
                    "the first TrackBatch round (cProfile for the limit loop if py-spy is missing)")
    ap.add_argument("--repo", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) after the run")
    a = ap.parse_args(argv)
    a.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return a


PHASES = ("limit", "portrait", "naive", "memory", "scaling", "timers", "costs", "components", "workers", "servers",
          "abuse")


def main(argv: list[str] | None = None) -> int:
    from bench.report import print_table, write_json

    a = parse_args(argv)
    sizes = QUICK if a.quick else FULL if a.full else DEFAULT
    if a.rounds:
        sizes = replace(sizes, rounds=a.rounds)
    only = set(filter(None, a.only.split(","))) or set(PHASES)
    if only - set(PHASES):
        raise SystemExit(f"unknown phases: {sorted(only - set(PHASES))}")
    procs.install_signal_handlers()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="portrait-bench-"))
    b = Bench(a, sizes, work)
    t0 = time.monotonic()
    load0 = os.getloadavg()
    b.log(f"mode {sizes.mode}, work dir {work}, load average {load0[0]:.2f}")
    if load0[0] > 0.7:
        b.log("WARNING: the machine is busy (load average > 0.7): numbers will be low and noisy")
    interrupted = False
    try:
        b.phase("stream", b.make_stream)
        if "stream" in b.errors:
            raise RuntimeError(b.errors["stream"])
        for name in PHASES:
            if name in only:
                b.phase(name, getattr(b, name))
    except KeyboardInterrupt:
        interrupted = True
        b.log("interrupted: stopping every child process")
    finally:
        procs.stop_all()
    doc = {
        "timestamp": a.stamp, "mode": sizes.mode, "sizes": asdict(sizes), "interrupted": interrupted,
        "redis": a.redis_url or "embedded", "git": git_info(), "versions": versions(),
        "machine": {"cpus": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg(),
                    "platform": platform.platform()},
        "total_s": round(time.monotonic() - t0, 1), "phase_s": b.phase_s, "errors": b.errors, **b.results,
    }
    complete = not interrupted and not a.only
    # a quick run never replaces the reference point latest.json
    latest = ("latest-quick.json" if a.quick else "latest.json") if complete else ""
    paths = write_json(doc, RESULTS, a.stamp, latest=latest)
    print_table(doc)
    print("JSON: " + " and ".join(str(p) for p in paths)
          + ("" if complete else " (partial run: latest.json not updated)"))
    if b.errors or interrupted or a.keep:
        print(f"logs: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 130 if interrupted else (1 if b.errors else 0)
