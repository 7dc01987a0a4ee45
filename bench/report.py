"""One table (rich if importable, else plain text) and the JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TARGETS = {
    "e2e_vs_limit": 0.7,  # sustained end-to-end events/s >= 0.7 x the in-process limit
    "e2e_vs_naive": 25.0,  # ... and >= 25 x the naive peer
    "e2e_abs": 5000.0,  # ... and >= 5,000 events/s
    "freshness_p99_s": 0.100,  # event sent -> row readable, p99, at 2k events/s offered
    "unary_p99_s": 0.005,  # Track p99 at 1k calls/s
    "rss_per_user": 2048.0,  # bytes of RSS per user (profiles + models + pending labels)
}


def _get(d: Any, *path: str | int) -> Any:
    """``d[p0][p1]...``, or None where a key or index is missing."""
    for p in path:
        if isinstance(d, dict):
            if p not in d:
                return None
            d = d[p]
        elif isinstance(d, list | tuple) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def _ok(x: Any) -> bool:
    return isinstance(x, int | float) and not math.isnan(x)


def eps(s: dict[str, Any] | None) -> str:
    """``8,100/s [7,900–8,300]`` from a round summary."""
    if not s or not _ok(s.get("median")):
        return "—"
    if len(s.get("rounds", [])) > 1:
        return f"{s['median']:,.0f}/s [{s['min']:,.0f}–{s['max']:,.0f}]"
    return f"{s['median']:,.0f}/s"


def ms(s: dict[str, Any] | float | None) -> str:
    """Milliseconds (with the rounds' spread for a summary)."""
    if isinstance(s, dict):
        if not _ok(s.get("median")):
            return "—"
        if len(s.get("rounds", [])) > 1:
            return f"{s['median'] * 1e3:.1f} ms [{s['min'] * 1e3:.1f}–{s['max'] * 1e3:.1f}]"
        return f"{s['median'] * 1e3:.1f} ms"
    return f"{s * 1e3:.1f} ms" if s is not None and _ok(s) else "—"


def nbytes(x: Any) -> str:
    if not _ok(x):
        return "—"
    return f"{x / 1024:,.1f} KB" if x >= 1024 else f"{x:,.0f} B"


def check(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "FAIL")


def rows(doc: dict[str, Any]) -> list[list[str]]:
    """metric, Portrait, naive peer, limit, ratio, target (verdict)."""
    T = TARGETS
    out: list[list[str]] = []
    lim = _get(doc, "limit", "eps", "median")
    e2e = _get(doc, "portrait", "batch", "eps", "median")
    naive = _get(doc, "naive", "batch", "eps", "median")
    ratios, verdict = [], []
    if _ok(e2e) and _ok(lim):
        ratios.append(f"{e2e / lim:.2f}× limit")
        verdict.append(e2e / lim >= T["e2e_vs_limit"])
    if _ok(e2e) and _ok(naive) and naive > 0:
        ratios.append(f"{e2e / naive:,.0f}× naive")
        verdict.append(e2e / naive >= T["e2e_vs_naive"])
    if _ok(e2e):
        verdict.append(e2e >= T["e2e_abs"])
    out.append(["events/s, TrackBatch ×500, until visible", eps(_get(doc, "portrait", "batch", "eps")),
                eps(_get(doc, "naive", "batch", "eps")), eps(_get(doc, "limit", "eps")), " · ".join(ratios) or "—",
                f"≥0.7× limit, ≥25× naive, ≥5,000/s: {check(all(verdict) if verdict else None)}"])
    pc = _get(doc, "portrait", "batch", "eps_per_server_cpu_s", "median")
    lc = _get(doc, "limit", "eps_per_cpu_s", "median")
    out.append(["events per CPU-second (TrackBatch server / limit)", eps(_get(doc, "portrait", "batch",
                "eps_per_server_cpu_s")), "—", eps(_get(doc, "limit", "eps_per_cpu_s")),
                f"{pc / lc:.2f}× limit" if _ok(pc) and _ok(lc) else "—", "(less sensitive to machine load)"])
    st = _get(doc, "portrait", "stream", "eps", "median")
    out.append(["events/s, TrackStream, until visible", eps(_get(doc, "portrait", "stream", "eps")), "—",
                eps(_get(doc, "limit", "eps")), f"{st / lim:.2f}× limit" if _ok(st) and _ok(lim) else "—",
                "(same as TrackBatch)"])
    u99 = _get(doc, "portrait", "unary", "p99", "median")
    rate = _get(doc, "sizes", "unary_rate") or 1000
    out.append([f"Track latency p50 @{rate:,.0f}/s", ms(_get(doc, "portrait", "unary", "p50")), "—", "—", "—", ""])
    errors: dict[str, int] = {}
    for run in _get(doc, "portrait", "unary", "runs") or []:
        for code, n in (run.get("errors") or {}).items():
            errors[code] = errors.get(code, 0) + n
    err = (" + errors: " + ", ".join(f"{n:,} {c}" for c, n in errors.items())) if errors else ""
    out.append([f"Track latency p99 @{rate:,.0f}/s", ms(_get(doc, "portrait", "unary", "p99")) + err, "—", "—", "—",
                f"≤5 ms: {check(u99 <= T['unary_p99_s'] and not errors if _ok(u99) else None)}"])
    us = _get(doc, "portrait", "unary_server")
    out.append(["Track p50 / p99, server histogram (handler time)",
                f"{ms(_get(us, 'p50'))} / {ms(_get(us, 'p99'))}" if us else "—", "—", "—", "—",
                "(without the client's own queueing)"])
    f99 = _get(doc, "portrait", "freshness", "p99", "median")
    fe = _get(doc, "sizes", "fresh_eps") or 2000
    out.append([f"freshness p50 @{fe:,.0f} ev/s (sent→readable)", ms(_get(doc, "portrait", "freshness", "p50")),
                "—", "—", "—", ""])
    missing = sum(r.get("missing", 0) for r in _get(doc, "portrait", "freshness", "runs") or [])
    miss = f" ({missing:,} never seen: counted at give-up time)" if missing else ""
    out.append([f"freshness p99 @{fe:,.0f} ev/s (sent→readable)",
                ms(_get(doc, "portrait", "freshness", "p99")) + miss, "—", "—", "—",
                f"≤100 ms: {check(f99 <= T['freshness_p99_s'] if _ok(f99) else None)}"])
    fs = _get(doc, "portrait", "freshness_server")
    out.append(["freshness p50 / p99, server histogram",
                f"{ms(_get(fs, 'p50'))} / {ms(_get(fs, 'p99'))}" if fs else "—", "—", "—", "—", ""])
    bpu = _get(doc, "memory", "bytes_per_user")
    out.append(["RSS per user: profiles+models+labels",
                f"{nbytes(bpu)} ({bpu * 1e5 / 2**20:,.0f} MB/100k users)" if _ok(bpu) else "—", "—", "—",
                f"{_get(doc, 'memory', 'events_per_user') or 0:.0f} events/user",
                f"≤2 KB: {check(bpu <= T['rss_per_user'] if _ok(bpu) else None)}"])
    out.append(["dedupe, RSS per remembered event id", nbytes(_get(doc, "memory", "dedupe_bytes_per_id")), "—", "—",
                "—", "(bounded by PORTRAIT_DEDUPE_CAPACITY)"])
    srv = _get(doc, "portrait", "server_rss_per_user")
    out.append(["server RSS growth per user added (whole run)",
                f"{nbytes(srv)} ({_get(doc, 'portrait', 'server_users') or 0:,.0f} users)" if _ok(srv) else "—",
                "—", "—", "—", "(incl. dedupe ids, allocator slack)"])
    rb = _get(doc, "portrait", "redis", "bytes_per_user")
    rd = _get(doc, "portrait", "redis", "used_memory_delta_per_user")
    out.append(["Redis bytes per user (MEMORY USAGE / used_memory Δ)",
                f"{nbytes(rb)} / {nbytes(rd)}" if _ok(rb) else "—", "—", "—", "—", ""])
    base = None
    for r in doc.get("scaling") or []:
        e = _get(r, "eps", "median")
        base = base or e
        out.append([f"limit events/s with {r['population']:,} users in memory", "—", "—", eps(r.get("eps")),
                    f"{e / base:.2f}× of {doc['scaling'][0]['population']:,}" if _ok(e) and base else "—",
                    f"RSS {nbytes(r.get('rss_per_user'))}/user, {r.get('rss_bytes', 0) / 2**20:,.0f} MB"
                    + (f", GC {100 * max(r['gc_share_rounds']):.0f}% of time" if r.get("gc_share_rounds") else "")])
    tm = doc.get("timers")
    if tm:
        out.append([f"timer firings, {tm['users']:,} users silent after 1 h ({tm['hours']:g} h of event time)",
                    f"{tm['fired_per_event_second']:,.1f}/s", "—", "—", f"{tm['fired_per_user']:.1f}/user",
                    f"extra online+offline writes; {tm['us_per_firing']:,.0f} µs loop time each (row built), "
                    f"worst minute {tm['worst_minute_s'] * 1000:,.0f} ms"])
    co = doc.get("costs")
    if co:
        out += cost_rows(co)
    cp = doc.get("components")
    if cp:
        out += component_rows(cp["us_per_event"])
    wk = doc.get("workers")
    if wk:
        out += worker_rows(wk)
    sv = doc.get("servers")
    if sv:
        out += server_rows(sv)
    ab = doc.get("abuse")
    if ab:
        out += abuse_rows(ab)
    return out


def server_rows(sv: dict[str, Any]) -> list[list[str]]:
    """The servers phase: the whole server with PORTRAIT_WORKERS = 1, 2, 4, TrackBatch until visible.

    >>> rows = server_rows({"cores": 2, "rows": [{"workers": 1, "events_per_s": 3000.0, "startup_s": 9.0},
    ...                                          {"workers": 2, "events_per_s": 3300.0, "startup_s": 70.0}]})
    >>> [(r[0], r[1], r[4]) for r in rows]
    [('server, PORTRAIT_WORKERS=1', '3,000/s', '1.00×'), ('server, PORTRAIT_WORKERS=2', '3,300/s', '1.10×')]
    """
    return _scaling_rows(sv["rows"], "server, PORTRAIT_WORKERS=", lambda r: (
        f"TrackBatch until visible; start {r['startup_s']:,.0f} s ({sv['cores']} cores; "
        f"{'one process' if r['workers'] == 1 else 'Ray actors'})"))


def _scaling_rows(rows: list[dict[str, Any]], label: str, note: Any) -> list[list[str]]:
    """One row per worker count: events/s and the ratio to the first row; ``note(row)`` the last column."""
    base = rows[0]["events_per_s"] if rows else 0.0
    return [[f"{label}{r['workers']}", f"{r['events_per_s']:,.0f}/s", "—", "—",
             f"{r['events_per_s'] / base:.2f}×" if base else "—", note(r)] for r in rows]


def worker_rows(wk: dict[str, Any]) -> list[list[str]]:
    """The workers phase (bench/workers.py): events/s through 1, 2, 4 partition-worker actors on Ray.

    >>> rows = worker_rows({"cores": 2, "rows": [
    ...     {"workers": 1, "events_per_s": 4000.0, "driver_cpu_s": 0.3, "worker_cpu_s": [6.0]},
    ...     {"workers": 2, "events_per_s": 6000.0, "driver_cpu_s": 0.4, "worker_cpu_s": [3.5, 3.5]}]})
    >>> [(r[0], r[1], r[4]) for r in rows]
    [('partition workers on Ray: 1', '4,000/s', '1.00×'), ('partition workers on Ray: 2', '6,000/s', '1.50×')]
    """
    return _scaling_rows(wk["rows"], "partition workers on Ray: ", lambda r: (
        f"worker CPU {sum(r['worker_cpu_s']):,.1f} s, driver {r['driver_cpu_s']:,.1f} s "
        f"({wk['cores']} cores; apply only: no gRPC, log, rows or learning)"))


TRAINER = "trainer: learn the shared models (not item statistics)"
EVERYWHERE = "item statistics: every worker learns every event's"
CORES = (8, 32, 128)
ASIDE = "log (file"  # components measured for comparison, not part of the scaled-out design's sum


def projected(us: dict[str, float]) -> dict[str, float]:
    """The components of the scaled-out design (the stream log, not the file log)."""
    return {k: v for k, v in us.items() if not k.startswith(ASIDE)}


def projection(us: dict[str, float], cores: int) -> tuple[float, str]:
    """Events/s the scaled-out design would reach on ``cores`` from per-event component costs, and the arithmetic.

    One core runs the trainer (the single writer of the shared models: it caps the whole system); the other
    cores run workers, each applying its share of the events (every component but the trainer and the item
    statistics) and learning the item statistics of every event (its own and the others', folded in): a worker
    core spends ``rest / (cores - 1) + everywhere`` µs per event of the deployment. An upper bound: one row per
    event (the server coalesces a user's rows within a flush), Ray's actor call counted per event at 500 events
    per call, Redis's own CPU not counted.

    >>> eps, how = projection({TRAINER: 50.0, EVERYWHERE: 10.0, "worker": 150.0, "online write": 100.0}, 8)
    >>> round(eps), how
    (20000, 'min(1e6/50 trainer = 20,000; 1e6/(250/(8-1) + 10) = 21,875)')
    """
    learn, everywhere = us[TRAINER], us.get(EVERYWHERE, 0.0)
    rest = sum(v for k, v in projected(us).items() if k not in (TRAINER, EVERYWHERE))
    trainer_cap, scaled = 1e6 / learn, 1e6 / (rest / (cores - 1) + everywhere)
    return min(trainer_cap, scaled), (f"min(1e6/{learn:,.0f} trainer = {trainer_cap:,.0f}; "
                                      f"1e6/({rest:,.0f}/({cores}-1) + {everywhere:,.0f}) = {scaled:,.0f})")


def component_rows(us: dict[str, float]) -> list[list[str]]:
    """The components phase (bench/inproc.py components) and the projection to 8, 32 and 128 cores."""
    out = [[f"component cost per event: {name}", f"{v:,.1f} µs", "—", "—", "—", ""] for name, v in us.items()]
    total = sum(projected(us).values())
    out.append(["projection: 1 core, every component in one process", f"{1e6 / total:,.0f}/s", "—", "—", "—",
                f"1e6/{total:,.0f} µs (today's server, before gRPC transport)"])
    for c in CORES:
        eps_c, how = projection(us, c)
        out.append([f"projection: {c} cores (1 trainer + the rest scaled out)", f"{eps_c:,.0f}/s", "—", "—", "—", how])
    return out


def cost_rows(co: dict[str, Any]) -> list[list[str]]:
    """The costs phase (bench/inproc.py costs): what each model and stage costs per event, calls, memory per item."""
    out = [["cost per event, all stages (one worker, scoring on)", f"{co['us_per_event_total']:,.0f} µs", "—", "—",
            "—", f"{co['events_per_s']:,.0f} events/s in process"]]
    for name, us in co["learn_us_per_event"].items():
        out.append([f"cost per event: {name}", f"{us:,.1f} µs", "—", "—", "—",
                    f"{co['messages_per_event'][name]:.2f} messages/event, {co['learn_us_per_message'][name]:,.1f} "
                    "µs each"])
    for name, us in co["worker_us_per_event"].items():
        out.append([f"cost per event: {name} (worker)", f"{us:,.1f} µs", "—", "—", "—", ""])
    out.append(["worker stages per event (incl. the learning they trigger)", "", "—", "—", "—",
                ", ".join(f"{k} {v:,.0f}" for k, v in sorted(co["stages_us"].items(), key=lambda kv: -kv[1]))
                + " µs"])
    for name, us in co["call_us"].items():
        out.append([f"cost per call: {name}", f"{us:,.0f} µs", "—", "—", "—", ""])
    out.append(["memory per item (popularity, co-visits, top items)", nbytes(co["item_state_bytes_per_item"]), "—",
                "—", "—", f"{co['items']:,} items (tracemalloc)"])
    return out


def _codes(r: dict[str, Any] | None) -> str:
    """``399 OK, 1 UNAVAILABLE`` (errors only, or empty) of a load's status codes."""
    errs = {c: n for c, n in ((r or {}).get("codes") or {}).items() if c != "OK"}
    return ", ".join(f"{n:,} {c}" for c, n in errs.items())


def abuse_rows(ab: dict[str, Any]) -> list[list[str]]:
    """The abuse phase (bench/abuse.py): Track at rest vs while idle connections and streams are held."""
    out: list[list[str]] = []
    rest, flood = ab.get("at_rest") or {}, ab.get("under_flood") or {}
    st = ab.get("settings") or {}
    ratio = ab.get("p99_ratio")
    load = (f"({ab.get('flood', 0):,} idle TCP + {ab.get('idle_streams', 0)} idle TrackStreams, "
            f"{ab.get('rate', 0):,.0f}/s offered)")
    out.append([f"abuse: Track p99 @{ab.get('rate', 0):,.0f}/s, at rest / under flood",
                f"{ms(rest.get('p99'))} / {ms(flood.get('p99'))}", "—", "—",
                f"{ratio:.2f}× at rest" if _ok(ratio) else "—", load])
    out.append(["abuse: Track p50, at rest / under flood", f"{ms(rest.get('p50'))} / {ms(flood.get('p50'))}",
                "—", "—", "—", ""])
    acc = [x.get("accepted_pct") for x in (rest, flood)]
    errs = "; ".join(f"{w}: {c}" for w, c in (("rest", _codes(rest)), ("flood", _codes(flood))) if c)
    out.append(["abuse: Track accepted, at rest / under flood",
                " / ".join(f"{x:.1f}%" if _ok(x) else "—" for x in acc) + (f" ({errs})" if errs else ""),
                "—", "—", "—", "(OK ÷ sent)"])
    nc = ab.get("new_channel_first_track") or {}
    out.append(["abuse: a new client's first Track during flood",
                f"{nc.get('code', '—')} after {ms(nc.get('seconds'))}" if nc else "—", "—", "—", "—",
                "(refused while the connection cap is full)"])
    c = ab.get("connections") or {}
    if c:
        failed = sum((c.get("failed") or {}).values())
        sh = _get(ab, "server", "connections_held") or {}
        held = (f"server held {sh['during_start']:,} → {sh['during_end']:,} in the window"
                if "during_start" in sh and "during_end" in sh else "")
        ca = c.get("close_after_connect") or {}
        cap = st.get("max_connections")
        cap_s = "auto" if cap in (0, "0") else f"{cap}" if cap is not None else "n/a"
        out.append(["abuse: idle TCP connections opened / closed by server",
                    f"{c.get('opened', 0):,} / {c.get('closed_by_server', 0):,}; {held}"
                    + (f"; {failed:,} connects failed" if failed else ""), "—", "—",
                    f"closed after connect p50 {ca.get('p50', math.nan):.1f} s, max {ca.get('max', math.nan):.1f} s"
                    if _ok(ca.get("p50")) else "—",
                    f"max_connections={cap_s}, handshake_timeout_s={st.get('handshake_timeout_s')}"])
        lq = _get(ab, "kernel_listen_queue", "until_window_end") or {}
        if lq.get("ListenOverflows"):
            out[-1][1] += f"; {lq['ListenOverflows']:,} listen-queue overflows"
        lg = ab.get("server_log") or {}
        if lg.get("emfile_lines"):
            out[-1][1] += f"; server logged {lg['emfile_lines']:,} out-of-fds lines"
    s = ab.get("streams") or {}
    if s:
        ended = ", ".join(f"{n} {k}" for k, n in (s.get("ended_by_server") or {}).items())
        out.append(["abuse: idle TrackStreams held through the window",
                    f"{s.get('open_at_window_end', 0)} of {s.get('opened', 0)}" + (f" ({ended})" if ended else ""),
                    "—", "—", "—", f"max_inflight_streams={st.get('max_inflight_streams')}, "
                    f"stream_idle_s={st.get('stream_idle_s')}"])  # None: not a setting of this server
    sv = ab.get("server") or {}
    if sv:
        def trio(key: str, fmt: Any) -> str:
            vals = [_get(sv, "rest", key), _get(sv, "peak", key), _get(sv, "after", key)]
            return " → ".join(fmt(v) if _ok(v) else "—" for v in vals)

        out.append(["abuse: server open fds / RSS, rest → peak → after",
                    f"{trio('fds', lambda v: f'{v:,.0f}')} fds; {trio('rss', lambda v: f'{v / 2**20:,.0f}')} MB",
                    "—", "—", "—", f"(open-file limit {_get(sv, 'rest', 'nofile') or '—'})"])
    af = ab.get("after") or {}
    alive = ab.get("server_alive_after")
    ok = bool(alive) and bool(af.get("answers_track"))
    nt = af.get("track") or {}
    out.append(["abuse: server alive after, answers Track",
                ("yes" if alive else "NO") + (f"; new channel {_get(af, 'new_channel', 'code')} "
                                              f"(try {_get(af, 'new_channel', 'tries')}), Track "
                                              f"{(nt.get('codes') or {}).get('OK', 0)}/{nt.get('sent', 0)} OK"
                                              if af else ""),
                "—", "—", "—", f"alive and answering: {check(ok if alive is not None else None)}"])
    return out


HEAD = ["metric", "Portrait", "naive peer", "limit", "ratio", "target"]


def print_table(doc: dict[str, Any]) -> None:
    """Print the table (and any phase errors)."""
    data = rows(doc)
    title = (f"Portrait benchmark — {doc.get('mode')} — {doc.get('timestamp')} — "
             f"{_get(doc, 'stream', 'events') or 0:,} events, {_get(doc, 'sizes', 'rounds')} round(s), "
             f"load {_get(doc, 'machine', 'load_before', 0) or 0:.2f}")
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, show_lines=False)
        for h in HEAD:
            t.add_column(h, overflow="fold")
        for r in data:
            t.add_row(*r)
        Console(width=200).print(t)
    except ImportError:
        widths = [max(len(r[i]) for r in [HEAD, *data]) for i in range(len(HEAD))]
        print(title)
        for r in [HEAD, *data]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    stages = _get(doc, "portrait", "stages")
    if stages:
        print("server time per stage (TrackBatch rounds): "
              + ", ".join(f"{k} {v['pct']}%" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]["seconds"])))
    for kind in ("batch", "stream"):
        busy = [r["server_cores_busy"] for r in _get(doc, "portrait", kind, "runs") or [] if "server_cores_busy" in r]
        if busy:
            print(f"server CPU during Track{kind.title()} rounds: {', '.join(f'{x:.2f}' for x in busy)} cores busy "
                  f"(of {_get(doc, 'machine', 'cpus')}; ~1.0 = the event loop + GIL saturated)")
    for where, key in (("limit", "profile"), ("portrait", "profile"), ("portrait", "profile_stream")):
        prof = _get(doc, where, key)
        if prof and prof.get("top_self"):
            name = f"{where} {key.replace('profile', '').strip('_') or ('TrackBatch' if where == 'portrait' else '')}"
            top = ", ".join(f"{x['function']} {x.get('pct_of_busy', x.get('own_pct'))}%" for x in prof["top_self"][:6])
            libs = ", ".join(f"{x['function']} {x['pct_of_busy']}%" for x in prof.get("self_by_library", [])[:6])
            print(f"hot spots ({name.strip()}, {prof.get('tool')}, own time): {top}")
            if libs:
                print(f"  by library: {libs}")
    for k, v in (doc.get("errors") or {}).items():
        print(f"ERROR in {k}: {v}")


def write_json(doc: dict[str, Any], results: Path, stamp: str, latest: str = "latest.json") -> list[Path]:
    """Write ``<stamp>.json`` and, unless ``latest`` is empty, ``latest``; NaN becomes null."""
    text = json.dumps(_clean(doc), indent=1, sort_keys=False) + "\n"
    paths = [results / f"{stamp}.json"]
    if latest:
        paths.append(results / latest)
    for p in paths:
        p.write_text(text)
    return paths


def _clean(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x
