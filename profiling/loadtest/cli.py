"""The command line: which kinds, how many clients for how long, against which socket;
then the loops one kind after another, the clean-up, the table or the JSON."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import uvloop

import profiling.loadtest as package
from profiling._daemon import server_info
from profiling.loadtest.loops import api_loop, cli_loop
from profiling.loadtest.kinds import KINDS, LONG, Plan, cleanup, unsupported
from profiling.loadtest.results import KindResult, render_table


def parse_kinds(text: str) -> list[str]:
    if text == "all":
        return list(KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind {bad[0]!r}: use one of {', '.join(KINDS)} or all")
    return kinds


def socket_path(flag: str | None) -> str | None:
    value = flag or os.environ.get("SKYD_HOST")
    if not value:
        return None
    return value[len("unix://"):] if value.startswith("unix://") else value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.loadtest", description=package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--api", metavar="KIND", help="kinds through the protocol (comma list or all)")
    mode.add_argument("-r", "--run", metavar="KIND", help="kinds as real skyctl processes (or all)")
    ap.add_argument("-n", "--clients", type=int, default=10, help="concurrent clients (default 10)")
    stop = ap.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, help="seconds of load per kind")
    stop.add_argument("--count", type=int, help="requests per kind (default: one per client)")
    ap.add_argument("--async", dest="async_", action="store_true",
                    help="long kinds: submit without waiting (latency until accepted)")
    ap.add_argument("--setup", help="setup command of the launched task (default: none)")
    ap.add_argument("--socket", help="the daemon's socket (default: SKYD_HOST=unix://...)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on a kind after this")
    ap.add_argument("--skyctl", default=f"{sys.executable} -m skyctl",
                    help="the skyctl command for -r (default: this Python's -m skyctl)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.clients < 1 or (args.count is not None and args.count < 1) \
            or (args.duration is not None and args.duration <= 0):
        ap.error("-n, --count and --duration must be positive")
    try:
        kinds = parse_kinds(args.api or args.run)
    except ValueError as e:
        ap.error(str(e))
    socket = socket_path(args.socket)
    if socket is None:
        ap.error("no server: give --socket PATH or set SKYD_HOST=unix:///path/skyd.sock")
    explicit = (args.api or args.run) != "all"
    notes = []
    for kind in list(kinds):
        why = unsupported(kind)
        if why:
            if explicit:
                print(f"loadtest: {why}", file=sys.stderr)
                return 2
            kinds.remove(kind)
            notes.append(why)
    info = server_info(socket, "loadtest")
    if info is None:
        return 4
    count = args.count if args.count or args.duration else args.clients

    def on_term(*_):
        raise KeyboardInterrupt          # clean up as on Ctrl-C
    signal.signal(signal.SIGTERM, on_term)
    plan = Plan(socket, args.setup)
    results: list[KindResult] = []
    clean: dict = {}
    try:
        for kind in kinds:
            wait = not (args.async_ and kind in LONG)
            print(f"loadtest: {kind} ({'api' if args.api else 'skyctl'}), {args.clients} clients, "
                  + (f"{args.duration:g} s" if args.duration else f"{count} requests")
                  + ("" if wait else ", --async"), file=sys.stderr, flush=True)
            plan.prepare(kind, args.clients)
            if args.api:
                r = uvloop.run(api_loop(socket, plan, kind, args.clients, count, args.duration,
                                        wait, args.timeout))
            else:
                r = uvloop.run(cli_loop(socket, plan, kind, args.clients, count, args.duration,
                                        wait, args.timeout, args.skyctl.split()))
            results.append(r)
    except RuntimeError as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    finally:
        if plan.created or plan.request_ids or plan.job_ids:
            print(f"loadtest: cleaning up ({len(set(plan.created))} clusters)", file=sys.stderr,
                  flush=True)
            clean = cleanup(socket, plan)
        plan.close()
    if args.json:
        print(json.dumps({"socket": socket, "server": {"version": info.version, "pid": info.pid,
                                                        "long_slots": info.long_slots,
                                                        "short_slots": info.short_slots},
                          "results": [r.to_json() for r in results], "cleanup": clean,
                          "notes": notes}, indent=1))
    else:
        print(render_table(results))
        for n in notes:
            print(n)
        if clean:
            print(f"cleanup: {clean['clusters']} clusters downed, "
                  f"{clean['requests_cancelled']} requests cancelled"
                  + (f"; errors: {clean['down_errors']}" if clean["down_errors"] else ""))
    return 1 if any(r.errors for r in results) or clean.get("down_errors") else 0
