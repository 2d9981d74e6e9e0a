"""The daemon's requests, and the daemon itself: `api status|logs|cancel|watch|info`.

JSON (--json): status: [request record]; logs: the request's record (its log then goes to
stderr); cancel: [request id] of the requests cancelled; info: the server's info record. watch
always prints JSON lines, one event each (skyd.protocol.Event's fields).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterator

import msgspec

from skyctl import output
from skyctl.commands import add_parser
from skyctl.commands.common import common, completes, yes
from skyctl.context import Ctx
from skyctl.connection import Connection, ServerError
from skyctl.exits import OK, UNREACHABLE, UsageError, exit_code
from skyctl.follow import follow_request
from skyctl.output import LogWriter
from skyd import protocol

_json = msgspec.json.Encoder()


def add_api(parser: argparse.ArgumentParser) -> None:
    api = parser.add_subparsers(dest="api_command", required=True, metavar="API_COMMAND",
                                prog="skyctl api")
    p = add_parser(api, "status", "list requests (pending and running; -a: finished too)")
    completes(p.add_argument("request_ids", nargs="*", metavar="ID",
                             help="ids or unique prefixes"), "request")
    p.add_argument("-a", "--all", "--all-status", action="store_true",
                   help="include finished requests")
    p.add_argument("-u", "--all-users", action="store_true",
                   help="every user's requests (admins only)")
    p.add_argument("-l", "--limit", type=int, default=50, help="at most this many (default 50)")
    common(p)
    p.set_defaults(func=run_status)

    p = add_parser(api, "logs", "follow a request's log, then print its result")
    completes(p.add_argument("request_id", metavar="ID"), "request")
    p.add_argument("--no-follow", action="store_true", help="print what is there and return")
    common(p, json_help="print the request's record as JSON (its log goes to stderr)")
    p.set_defaults(func=run_logs)

    p = add_parser(api, "cancel", "cancel requests (pending ones never start)")
    completes(p.add_argument("request_ids", nargs="*", metavar="ID"), "request")
    p.add_argument("-a", "--all", action="store_true", help="all of your pending and running requests")
    p.add_argument("-u", "--all-users", action="store_true", help="everyone's (admins only)")
    yes(p)
    common(p)
    p.set_defaults(func=run_cancel)

    p = add_parser(api, "watch", "print your requests', managed jobs' and clusters' changes "
                                 "as they happen: one JSON line each, until Ctrl-C")
    p.add_argument("-u", "--all-users", action="store_true", help="everyone's (admins only)")
    common(p, json_help="accepted: the events are always JSON lines")
    p.set_defaults(func=run_watch)

    p = add_parser(api, "info", "server and client versions, endpoint, queues, limits")
    common(p)
    p.set_defaults(func=run_info)


ARGUMENTS = {"api": add_api}


def run_status(ctx: Ctx, args: argparse.Namespace) -> int:
    reqs = ctx.call(protocol.ApiStatus(request_ids=args.request_ids, all_statuses=args.all,
                                       all_users=args.all_users, limit=args.limit))
    if ctx.json:
        output.print_json(reqs)
        return OK
    if not reqs:
        output.info("No requests." if args.all else "No pending or running requests "
                    "(skyctl api status -a shows finished ones).")
        return OK
    output.table(["ID", "USER", "NAME", "CLUSTER", "CREATED", "STATUS"],
                 [[r.id, r.user, r.name, r.cluster or "-", output.age(r.created_at),
                   output.status_text(r.status.value) + (f" ({r.waiting})" if r.waiting else "")]
                  for r in reqs])
    return OK


def run_logs(ctx: Ctx, args: argparse.Namespace) -> int:
    log = LogWriter(sys.stderr.buffer if ctx.json else None)
    sub = follow_request(ctx, protocol.ApiLogs(request_id=args.request_id,
                                               follow=not args.no_follow), log=log)
    if ctx.json and sub.result is not None:
        output.print_json(ctx.call(protocol.ApiStatus(request_ids=[sub.result.request_id],
                                                      all_statuses=True))[0])
    return sub.code


def run_cancel(ctx: Ctx, args: argparse.Namespace) -> int:
    if not (args.request_ids or args.all or args.all_users):
        raise UsageError("name the requests to cancel, or pass -a/--all")
    ids = list(args.request_ids)
    if ids:
        # Asking to cancel a request that has ended changes nothing: say so, and go on.
        admin = bool(ctx.conn.welcome and ctx.conn.welcome.admin)
        found = ctx.call(protocol.ApiStatus(request_ids=ids, all_statuses=True, all_users=admin,
                                            limit=len(ids)))
        for r in found:
            if r.status.finished:
                output.info(f"Request {r.id} already finished ({r.status.value.upper()}); "
                            "nothing to cancel.")
        ids = [r.id for r in found if not r.status.finished]
    done: list[str] = []
    if ids or args.all or args.all_users:
        done = ctx.call(protocol.ApiCancel(request_ids=ids, all=args.all, all_users=args.all_users))
    if ctx.json:
        output.print_json(done)
    elif done:
        output.info("\n".join(f"Cancelled {rid}" for rid in done))
    elif args.all or args.all_users:
        output.info("Nothing to cancel.")
    return OK


def events(conn: Connection, all_users: bool = False,
           on_notice: Callable[[str], None] = output.info) -> Iterator[protocol.Event]:
    """The watch op's events, as they come (its notice first: the watch is on); ServerError
    when the daemon refuses or drops the watch, ConnectionError when it ends the stream."""
    for msg in conn.submit(protocol.Watch(all_users=all_users)):
        if isinstance(msg, protocol.Event):
            yield msg
        elif isinstance(msg, protocol.Notice):
            on_notice(msg.message)
        elif isinstance(msg, protocol.Error):
            raise ServerError(msg)
    raise ConnectionError("the daemon ended the stream")


def run_watch(ctx: Ctx, args: argparse.Namespace) -> int:
    try:
        for event in events(ctx.conn, args.all_users):
            line = msgspec.structs.asdict(event)
            line["status"] = event.status.upper()       # as every listing shows it
            sys.stdout.write(_json.encode(line).decode() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return OK
    except ServerError as e:
        output.error(e.error.message, e.error.hint)
        return exit_code(e.error.code)
    except (ConnectionError, OSError):
        output.error("skyd ended the stream (it stopped or is restarting)",
                     "watch again once it is back: skyctl api watch")
        return UNREACHABLE
    return OK


def _size(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % k == 0:
            return f"{n // k} {unit}"
    return _cap(n, " bytes")


def _cap(n: int, unit: str = "") -> str:
    return "no cap" if not n else f"{n:,}{unit}"


def _secs(t: float) -> str:
    return "none" if not t else f"{t:g} s"


def run_info(ctx: Ctx, args: argparse.Namespace) -> int:
    info = ctx.call(protocol.ApiInfo())
    if ctx.json:
        output.print_json(info)
        return OK
    from skyd import __version__
    rows = [("server", f"skyd {info.version} (protocol v{info.protocol}, pid {info.pid})"),
            ("client", f"skyctl {__version__} (protocol v{protocol.PROTOCOL_VERSION})"),
            ("endpoint", f"unix://{ctx.path} ({ctx.source})"),
            ("user", f"{info.user} (uid {info.uid}{', admin' if info.admin else ''})"),
            ("state", info.state_dir),
            ("node pools", info.node_pools or f"{info.state_dir}/ssh_node_pools.yaml"),
            ("long queue", f"{info.long_running}/{info.long_slots} running, {info.long_pending} pending"),
            ("short queue", f"{info.short_running}/{info.short_slots} running, "
                            f"{info.short_pending} pending"),
            ("sized from", info.slots_source),
            ("up since", output.age(info.started_at))]
    lim = info.limits
    if lim is not None:
        rows += [("limits", (f"per user: {_cap(lim.connections_per_user)} connections, "
                             f"{_cap(lim.user_long_slots)} long slots, "
                             f"{_cap(lim.user_pending)} waiting long requests (operators: none)")),
                 ("", (f"long request time limit: {_secs(lim.long_timeout)}; "
                       f"request log: {_size(lim.request_log_bytes)}; "
                       f"job log: {_size(lim.job_log_bytes)} per node")),
                 ("", (f"handshake: {_secs(lim.handshake_timeout)}, frames up to "
                       f"{_size(lim.handshake_max_frame)}, then {_size(lim.max_frame)}; "
                       f"in flight: {_size(lim.inflight_bytes)}"))]
    for key, value in rows:
        print(f"{key + ':' if key else '':13}{value}")
    return OK
