"""The ``portrait`` command: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from typing import Any

from server import __version__

EVENT_TYPES = ("view", "click", "add_to_cart", "remove_from_cart", "favorite", "purchase", "search")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portrait", description="Real-time e-commerce user profiles.")
    p.add_argument("--version", action="version", version=f"portrait {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the server (settings from PORTRAIT_* environment variables)")

    prof = sub.add_parser("profile", help="print a user's profile (read through the online store)")
    prof.add_argument("user_id")
    prof.add_argument("--target", default=None, help="HOST:PORT of the server (default 127.0.0.1:$PORTRAIT_GRPC_PORT)")
    _connection_arguments(prof)
    rec = sub.add_parser("recommend", help="print a user's top items (Recommend)")
    rec.add_argument("user_id")
    rec.add_argument("-k", type=int, default=10, help="how many items, 1..100 (default 10)")
    rec.add_argument("--target", default=None, help="HOST:PORT of the server (default 127.0.0.1:$PORTRAIT_GRPC_PORT)")
    _connection_arguments(rec)

    send = sub.add_parser("send", help="send a few events, for trying the service")
    send.add_argument("user_id")
    send.add_argument("type", choices=EVENT_TYPES)
    send.add_argument("--item", default="sku-1", help="item_id (default sku-1)")
    send.add_argument("--category", default="", help="item category")
    send.add_argument("--price", type=float, default=0.0)
    send.add_argument("--quantity", type=int, default=0)
    send.add_argument("--query", default="", help="search query (for type search)")
    send.add_argument("--session", default="", help="session_id")
    send.add_argument("--count", type=int, default=1, help="send this many such events (default 1)")
    send.add_argument("--wait-visible", action="store_true", help="reply once the profile is readable online")
    send.add_argument("--target", default=None)
    _connection_arguments(send)

    from server.tools import backfill, training

    backfill.add_arguments(sub.add_parser("replay", help=backfill.HELP))
    training.add_arguments(sub.add_parser("training-set", help=training.HELP))
    replay_log = sub.add_parser("replay-log", help="rebuild every profile from the retained event log (offline; "
                                                    "the server must be stopped) and write them to the stores")
    replay_log.add_argument("--from-start", action="store_true",
                            help="ignore checkpoints: replay the log from its oldest retained record (one worker "
                                 "only: with PORTRAIT_WORKERS>1 each worker replays from its newest checkpoint)")

    for name, help_ in (("delete-user", "erase a user (admin key): online row and memory now, stored files at the "
                                        "next compaction; later events are suppressed"),
                        ("unsuppress", "accept an erased user's events again (admin key)")):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("user_id")
        cmd.add_argument("--target", default=None)
        _connection_arguments(cmd)
    workers = sub.add_parser("workers", help="list the processes serving (role, pid, host, partitions with applied "
                                              "offset and lag, model versions; admin key)")
    workers.add_argument("--json", action="store_true", help="one JSON document (processes, partitions)")
    workers.add_argument("--target", default=None)
    _connection_arguments(workers)
    compact = sub.add_parser("compact", help="rewrite stored files without erased users now (admin key)")
    compact.add_argument("--target", default=None)
    _connection_arguments(compact)
    pseud = sub.add_parser("pseudonym", help="print the stored id (pseudonym) of a user id under "
                                              "$PORTRAIT_PSEUDONYM_KEY_FILE, e.g. to read Feast directly")
    pseud.add_argument("user_id")

    sub.add_parser("settings", help="print the configuration table (markdown, as in README)")
    sub.add_parser("metrics", help="print the metrics table (markdown, as in README)")

    sim = sub.add_parser("simulate", help="write a synthetic, seeded event file (CSV or Parquet)")
    sim.add_argument("--users", type=int, default=1000)
    sim.add_argument("--days", type=int, default=14)
    sim.add_argument("--drift-day", type=int, default=None)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", required=True, help="output file, .csv or .parquet")

    ev = sub.add_parser("evaluate", help="replay an event file through the pipeline in-process and compare "
                                         "online / static / periodic / heuristic learners")
    ev.add_argument("events", help="event file, .csv, .csv.gz or .parquet")
    ev.add_argument("--task", choices=("item", "user", "recommend"), default="item",
                    help="item: P(buys this item within H), user: P(buys anything within H), recommend: is the item "
                         "bought next in Recommend's top --k, against popular and recently touched items "
                         "(default item)")
    ev.add_argument("--k", type=int, default=10, help="recommend task: list length (default 10)")
    ev.add_argument("--horizon", default=None,
                    help="label horizon H, e.g. 24h, 30m, 3600 (default: 24h for item, 1h for user)")
    ev.add_argument("--static-days", type=float, default=3.0,
                    help="days that train the static model; evaluation starts after them (default 3)")
    ev.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples over users (default 200)")
    ev.add_argument("--split-day", type=float, default=None,
                    help="also score the decisions before / after this day (counted like --static-days), "
                         "e.g. the day behaviour changed")
    ev.add_argument("--json", default=None, help="also write the result as JSON to this file")
    ev.add_argument("--plot", default=None, help="also write a PNG of per-day ROC AUC to this file")
    ev.add_argument("--reliability", default=None,
                    help="also write a PNG reliability diagram (calibration) of every learner to this file")
    ev.add_argument("--through-server", action="store_true",
                    help="item task, end to end: start a server on loopback, send the events in time order and ask "
                         "Score(user, [item]) before each view after --static-days; compare with baselines")

    seg = sub.add_parser("segments", help="describe each user segment in human terms (from an event file "
                                          "replayed in-process, or the newest checkpoint of a data dir)")
    src = seg.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", default=None, help="event file to replay (.csv, .csv.gz, .parquet)")
    src.add_argument("--data-dir", default=None, help="a server's data dir: read its newest checkpoint")
    seg.add_argument("--json", default=None, help="also write the report as JSON to this file")
    return p


def _connection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", default=None,
                   help="API key (default: $PORTRAIT_CLIENT_API_KEY, which other local users cannot see in ps)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (implied by the certificate options)")
    p.add_argument("--ca-cert", default=None, help="PEM file of the CA that signed the server's certificate")
    p.add_argument("--client-cert", default=None, help="PEM client certificate, for mutual TLS")
    p.add_argument("--client-key", default=None, help="PEM key of --client-cert")


def _client(args: argparse.Namespace) -> Any:
    """A PortraitClient for ``--target`` and the connection options."""
    from pathlib import Path

    from server.api.client import PortraitClient

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return PortraitClient(_target(args.target), api_key=args.api_key or os.environ.get("PORTRAIT_CLIENT_API_KEY"),
                          tls=args.tls, root_certificates=read(args.ca_cert),
                          client_certificate=read(args.client_cert), client_key=read(args.client_key))


def _target(arg: str | None) -> str:
    if arg:
        return arg
    from server.config import Settings

    return f"127.0.0.1:{Settings().grpc_port}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``portrait``."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from server.app import serve
        from server.config import Settings
        from server.logs import configure_logging, exit_quietly

        settings = Settings()
        configure_logging(settings.log_level, settings.log_json)
        asyncio.run(serve(settings))
        exit_quietly(0)
    if args.command == "profile":
        return _profile(args)
    if args.command == "recommend":
        return _recommend(args)
    if args.command == "send":
        return _send(args)
    if args.command in ("replay", "training-set"):
        from server.tools import backfill, training

        return (backfill if args.command == "replay" else training).run(args)
    if args.command == "replay-log":
        from server.config import Settings
        from server.tools.rebuild import rebuild

        settings = Settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return rebuild(settings, from_start=args.from_start)
    if args.command in ("delete-user", "unsuppress", "compact"):
        return _admin(args)
    if args.command == "workers":
        return _workers(args)
    if args.command == "pseudonym":
        from server.config import Settings
        from server.domain.pseudonym import Pseudonymizer

        print(Pseudonymizer.load(Settings().pseudonym_key_file).map(args.user_id))
        return 0
    if args.command == "settings":
        from server.config import markdown_table

        print(markdown_table())
        return 0
    if args.command == "metrics":
        from server.metrics import markdown_table as metrics_table

        print(metrics_table())
        return 0
    if args.command == "simulate":
        from server.tools.simulate import simulate_to_file

        n = simulate_to_file(args.out, users=args.users, days=args.days, drift_day=args.drift_day, seed=args.seed)
        print(f"wrote {n} events to {args.out}")
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "segments":
        return _segments(args)
    return 2


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from server.tools import evaluate

    horizon = evaluate.parse_duration(args.horizon) if args.horizon else None
    if args.through_server:
        from server.tools import score_protocol

        if args.task != "item":
            print("--through-server measures Score: use it with --task item", file=sys.stderr)
            return 2
        result = score_protocol.evaluate_through_server(args.events, horizon or 86_400.0, args.static_days,
                                                        args.bootstrap, progress=sys.stderr.isatty())
        print(score_protocol.format_table(result))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=2)
        return 0
    if args.task == "recommend":
        from server.tools import recommend_eval
        from server.tools.eventfile import read_events

        result = recommend_eval.evaluate_recommend(read_events(args.events), args.static_days, args.k, args.bootstrap,
                                                   progress=sys.stderr.isatty())
        print(recommend_eval.format_table(result))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=2)
        return 0
    result = evaluate.evaluate_file(args.events, args.task, horizon, args.static_days, args.bootstrap,
                                    progress=sys.stderr.isatty(), split_days=args.split_day)
    print(evaluate.format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    if args.plot:
        evaluate.plot(result, args.plot)
    if args.reliability:
        evaluate.plot_reliability(result, args.reliability)
    return 0


def _segments(args: argparse.Namespace) -> int:
    import json

    from server.tools import segments

    if args.events:
        pipeline = segments.from_events(args.events, progress=sys.stderr.isatty())
    else:
        loaded = segments.from_checkpoint(args.data_dir)
        if loaded is None:
            print(f"no checkpoint under {args.data_dir}", file=sys.stderr)
            return 1
        pipeline = loaded
    report = segments.segment_report(pipeline)
    print(segments.format_report(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(segments.to_json(report), fh, indent=2)
    return 0


def _profile(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    with _client(args) as c:
        try:
            prof = c.get_profile(args.user_id)
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(prof, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    import grpc

    with _client(args) as c:
        try:
            items = c.recommend(args.user_id, args.k)
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    for item, p in items:
        print(f"{p:.4f}  {item}")
    return 0


def _admin(args: argparse.Namespace) -> int:
    import grpc

    with _client(args) as c:
        try:
            if args.command == "delete-user":
                print(f"erased (held data: {'yes' if c.delete_user(args.user_id) else 'no'}); stored files are "
                      "rewritten at the next compaction (`portrait compact`)")
            elif args.command == "unsuppress":
                print("suppression lifted" if c.unsuppress_user(args.user_id) else "the user was not suppressed")
            else:
                r = c.compact()
                print(f"compacted {r.erased_users} erased users: {r.offline_files} offline files, "
                      f"{r.log_segments} log segments, {r.checkpoints} checkpoints rewritten")
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


def _send(args: argparse.Namespace) -> int:
    import grpc

    from server.domain.events import Event, EventType

    etype = EventType[args.type.upper()]
    with _client(args) as c:
        for _ in range(args.count):
            e = Event(f"cli-{uuid.uuid4()}", args.user_id, etype, time.time(),
                      item_id="" if etype == EventType.SEARCH and args.item == "sku-1" else args.item,
                      category=args.category, price=args.price, quantity=args.quantity,
                      session_id=args.session, query=args.query)
            try:
                r = c.track(e, wait_visible=args.wait_visible)
            except grpc.RpcError as err:
                print(f"{err.code().name}: {err.details()}", file=sys.stderr)
                return 1
            print(f"{e.event_id}: version={r.profile_version} propensity={r.purchase_propensity:.4f} "
                  f"segment={r.segment} duplicate={r.duplicate}")
    return 0


def _workers(args: argparse.Namespace) -> int:
    import json

    import grpc
    from google.protobuf.json_format import MessageToDict

    try:
        with _client(args) as c:
            r = c.workers()
    except grpc.RpcError as exc:
        print(f"portrait workers: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        doc = MessageToDict(r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{'role':<9} {'pid':>8}  {'host':<20} {'partitions':>10} {'applied (min)':>13} {'lag (max)':>9}  models")
    for p in r.processes:
        applied = min((s.applied_offset for s in p.partitions), default=None)
        lag = max((s.lag for s in p.partitions), default=None)
        models = ", ".join(f"{k} {v:,}" for k, v in sorted(p.model_versions.items())) or "-"
        print(f"{p.role:<9} {p.pid:>8}  {p.host[:20]:<20} {len(p.partitions):>10} "
              f"{'-' if applied is None else f'{applied:,}':>13} {'-' if lag is None else f'{lag:,}':>9}  {models}")
    return 0
