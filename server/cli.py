"""The ``portrait`` command: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid

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

    from server import backfill, training

    backfill.add_arguments(sub.add_parser("replay", help=backfill.HELP))
    training.add_arguments(sub.add_parser("training-set", help=training.HELP))
    replay_log = sub.add_parser("replay-log", help="rebuild every profile from the retained event log (offline; "
                                                    "the server must be stopped) and write them to the stores")
    replay_log.add_argument("--from-start", action="store_true",
                            help="ignore checkpoints: replay the log from its oldest retained record")

    sub.add_parser("settings", help="print the configuration table (markdown, as in README)")
    sub.add_parser("metrics", help="print the metrics table (markdown, as in README)")

    sim = sub.add_parser("simulate", help="write a synthetic, seeded event file (CSV or Parquet)")
    sim.add_argument("--users", type=int, default=1000)
    sim.add_argument("--days", type=int, default=14)
    sim.add_argument("--drift-day", type=int, default=None)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", required=True, help="output file, .csv or .parquet")
    return p


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
        from server.logs import configure_logging

        settings = Settings()
        configure_logging(settings.log_level, settings.log_json)
        asyncio.run(serve(settings))
        return 0
    if args.command == "profile":
        return _profile(args)
    if args.command == "send":
        return _send(args)
    if args.command in ("replay", "training-set"):
        from server import backfill, training

        return (backfill if args.command == "replay" else training).run(args)
    if args.command == "replay-log":
        from server.config import Settings
        from server.rebuild import rebuild

        settings = Settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return rebuild(settings, from_start=args.from_start)
    if args.command == "settings":
        from server.config import markdown_table

        print(markdown_table())
        return 0
    if args.command == "metrics":
        from server.metrics import markdown_table as metrics_table

        print(metrics_table())
        return 0
    if args.command == "simulate":
        from server.simulate import simulate_to_file

        n = simulate_to_file(args.out, users=args.users, days=args.days, drift_day=args.drift_day, seed=args.seed)
        print(f"wrote {n} events to {args.out}")
        return 0
    return 2


def _profile(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from server.client import PortraitClient

    with PortraitClient(_target(args.target)) as c:
        try:
            prof = c.get_profile(args.user_id)
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(prof, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
    return 0


def _send(args: argparse.Namespace) -> int:
    import grpc

    from server.client import PortraitClient
    from server.events import Event, EventType

    etype = EventType[args.type.upper()]
    with PortraitClient(_target(args.target)) as c:
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
