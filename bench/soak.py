"""Soak: the real server at a steady offered rate for a long time, RSS sampled; reports growth.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 1000] [--users 20000]

Starts `portrait serve` (embedded Redis unless PORTRAIT_REDIS_URL is set) as a child process,
sends unique events with TrackBatch in small batches paced to ``--rate`` events/s from this
process, samples the server's RSS every ``--sample-s`` seconds, and prints a table plus JSON
(bench/results/soak-<time>.json and soak-latest.json). Growth is reported over the whole run
and over its second half (after the user population and windows have filled up).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.procs import ROOT, free_port, install_signal_handlers, rss_bytes, spawn, stop, stop_all, wait_serving
from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc

RESULTS = ROOT / "bench" / "results"


def _batch(rnd: random.Random, n: int, users: int, seq: int) -> pb.TrackBatchRequest:
    now = int(time.time())
    evs = []
    for i in range(n):
        m = pb.Event(event_id=f"soak-{seq}-{i}", user_id=f"soak-u{rnd.randrange(users)}",
                     type=rnd.choice((1, 1, 1, 2, 3, 5, 6)), item_id=f"i{rnd.randrange(5000)}",  # type: ignore[arg-type]
                     category=f"c{rnd.randrange(30)}", price=round(rnd.uniform(1, 300), 2), quantity=1)
        m.event_time.FromSeconds(now)
        evs.append(m)
    return pb.TrackBatchRequest(events=evs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="offered events/s")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--sample-s", type=float, default=10.0)
    a = ap.parse_args(argv)
    install_signal_handlers()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="portrait-soak-"))
    port = free_port()
    env = {"PORTRAIT_GRPC_PORT": str(port), "PORTRAIT_METRICS_PORT": str(free_port()), "PORTRAIT_UI_PORT": "0",
           "PORTRAIT_DATA_DIR": str(tmp / "data"), "PORTRAIT_EMBEDDED_REDIS_PORT": str(free_port())}
    log = tmp / "serve.log"
    proc = spawn([str(Path(ROOT) / ".venv" / "bin" / "python"), "-m", "server", "serve"], log, env=env)
    samples: list[tuple[float, int, int]] = []
    sent = errors = 0
    try:
        wait_serving(f"127.0.0.1:{port}", proc, log)
        rnd = random.Random(1)
        interval = a.batch / a.rate
        start = time.monotonic()
        end = start + a.minutes * 60
        next_sample = start
        seq = 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.ProfileServiceStub(ch)
            while time.monotonic() < end:
                due = start + seq * interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the offered load, not synchronisation
                try:
                    stub.TrackBatch(_batch(rnd, a.batch, a.users, seq), timeout=30)
                    sent += a.batch
                except grpc.RpcError:
                    errors += 1
                seq += 1
                if time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - start, rss_bytes(proc.pid), sent))
                    next_sample += a.sample_s
        samples.append((time.monotonic() - start, rss_bytes(proc.pid), sent))
    finally:
        code = stop(proc)
        stop_all()
    first, last = samples[0], samples[-1]
    mid = min(samples, key=lambda s: abs(s[0] - last[0] / 2))
    elapsed = last[0]
    doc: dict[str, Any] = {
        "minutes": a.minutes, "offered_eps": a.rate, "achieved_eps": sent / elapsed if elapsed else 0.0,
        "users": a.users, "events": sent, "errors": errors, "exit_code": code,
        "rss_start": first[1], "rss_mid": mid[1], "rss_end": last[1],
        "growth_total_bytes": last[1] - first[1], "growth_second_half_bytes": last[1] - mid[1],
        "growth_second_half_pct": 100.0 * (last[1] - mid[1]) / mid[1] if mid[1] else 0.0,
        "samples": [{"t": t, "rss": r, "events": n} for t, r, n in samples],
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name in (f"soak-{stamp}.json", "soak-latest.json"):
        (RESULTS / name).write_text(json.dumps(doc, indent=1))
    mb = 1024 * 1024
    print(f"{'metric':<34} value")
    print(f"{'duration':<34} {elapsed / 60:.1f} min at {a.rate:.0f} events/s offered "
          f"({doc['achieved_eps']:.0f} achieved, {errors} failed calls)")
    print(f"{'RSS start / mid / end':<34} {first[1] / mb:.0f} / {mid[1] / mb:.0f} / {last[1] / mb:.0f} MiB")
    print(f"{'growth, whole run':<34} {(last[1] - first[1]) / mb:+.1f} MiB")
    print(f"{'growth, second half':<34} {(last[1] - mid[1]) / mb:+.1f} MiB ({doc['growth_second_half_pct']:+.1f} %)")
    print(f"{'server exit code':<34} {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
