"""Clusters: `status`, `stop`, `start`, `down`, `autostop`. Clusters are named, matched by
glob patterns, or all taken with -a/--all, as in SkyPilot.

JSON (--json): status: [cluster record]; stop, start, down: [{"cluster", "request_id",
"status", "error"}] (status SKIPPED: it already was in that state); autostop: [cluster
record].
"""

from __future__ import annotations

import argparse

from skyctl import output
from skyctl.commands.common import async_, clusters, common, completes, resolve_clusters, yes
from skyctl.context import Ctx
from skyctl.exits import OK, UsageError
from skyd import protocol


def add_status(p: argparse.ArgumentParser) -> None:
    completes(p.add_argument("clusters", nargs="*", metavar="CLUSTER",
                             help="only these clusters (names or glob patterns)"), "cluster")
    p.add_argument("-u", "--all-users", action="store_true",
                   help="every user's clusters (admins only)")
    common(p)
    p.set_defaults(func=run_status)


def _lifecycle(p: argparse.ArgumentParser, verb: str) -> None:
    clusters(p, verb)
    async_(p)
    yes(p)
    common(p)
    p.set_defaults(func=run_lifecycle)


def add_stop(p: argparse.ArgumentParser) -> None:
    _lifecycle(p, "stop")


def add_down(p: argparse.ArgumentParser) -> None:
    _lifecycle(p, "tear down")


def add_start(p: argparse.ArgumentParser) -> None:
    _lifecycle(p, "start")
    p.add_argument("-i", "--idle-minutes-to-autostop", type=float, metavar="MINUTES",
                   help="once it is up, stop it after this many idle minutes")
    p.add_argument("--down", action="store_true",
                   help="with -i: tear it down when idle instead of stopping it")


def add_autostop(p: argparse.ArgumentParser) -> None:
    p.description = ("A cluster with no job and no request for --idle-minutes is stopped (or "
                     "torn down with --down) by the daemon.")
    clusters(p, "set autostop of")
    p.add_argument("-i", "--idle-minutes", type=float, metavar="MINUTES",
                   help="idle minutes before it stops (default 5)")
    p.add_argument("--down", action="store_true", help="tear down instead of stopping")
    p.add_argument("--cancel", action="store_true", help="cancel autostop")
    async_(p)
    yes(p)
    common(p)
    p.set_defaults(func=run_autostop)


ARGUMENTS = {"status": add_status, "stop": add_stop, "start": add_start, "down": add_down,
             "autostop": add_autostop}


def autostop_text(c: protocol.ClusterRecord) -> str:
    if c.autostop < 0:
        return "-"
    return f"{c.autostop:g}m" + (" (down)" if c.autostop_down else "")


def run_status(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.clusters:
        found = resolve_clusters(ctx, args.clusters, all_users=args.all_users)
    else:
        found = ctx.call(protocol.ClusterStatus(all_users=args.all_users))
    if ctx.json:
        output.print_json(found)
        return OK
    if not found:
        output.info("No existing clusters.")
        return OK
    head = ["NAME", "INFRA", "NODES", "RESOURCES", "STATUS", "AUTOSTOP"] + \
        (["USER"] if args.all_users else []) + ["LAUNCHED"]
    output.table(head, [[c.name, c.infra, c.num_nodes, c.resources or "-",
                         output.status_text(c.status), autostop_text(c)] +
                        ([c.user] if args.all_users else []) + [output.age(c.launched_at)]
                        for c in found])
    reasons = [f"  {c.name}: {c.status_reason}" for c in found
               if c.status_reason and c.status != "UP"]
    if reasons:
        output.info("\n".join(["Why:"] + reasons))
    return OK


# What each verb makes, and the status in which asking for it changes nothing.
_LIFECYCLE = {"stop": (protocol.Stop, "STOPPED"), "start": (protocol.Start, "UP"),
              "down": (protocol.Down, None)}


def run_lifecycle(ctx: Ctx, args: argparse.Namespace) -> int:
    from skyctl.follow import follow_request      # not on `status`'s path: its cold start
    make, done_state = _LIFECYCLE[args.command]
    autostop = getattr(args, "idle_minutes_to_autostop", None)
    if getattr(args, "down", False) and autostop is None:
        raise UsageError("--down needs -i/--idle-minutes-to-autostop")
    every = args.all or (args.all_users and not args.clusters)
    targets = resolve_clusters(ctx, args.clusters, every, args.all_users)
    if not targets:
        output.info("No existing clusters.")
    worst = OK
    report: list[dict] = []
    for c in targets:
        if done_state is not None and c.status == done_state:
            output.info(f"Cluster {c.name} is already {done_state}; nothing to do.")
            report.append({"cluster": c.name, "request_id": None, "status": "SKIPPED",
                           "error": None})
            if autostop is not None:
                ctx.call(protocol.Autostop(cluster=c.name, idle_minutes=autostop, down=args.down))
            continue
        sub = follow_request(ctx, make(cluster=c.name), wait=not args.async_)
        status = "PENDING" if args.async_ and sub.code == OK else \
            (sub.result.status if sub.result else "FAILED")
        report.append({"cluster": c.name, "request_id": sub.request_id, "status": status,
                       "error": sub.result.error if sub.result else None})
        if args.async_ and sub.code == OK and not ctx.json:
            print(sub.request_id, flush=True)
        if sub.code == OK and autostop is not None and not args.async_:
            ctx.call(protocol.Autostop(cluster=c.name, idle_minutes=autostop, down=args.down))
        worst = worst or sub.code
    if ctx.json:
        output.print_json(report)
    return worst


def run_autostop(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.cancel and args.idle_minutes is not None:
        raise UsageError("give either -i/--idle-minutes or --cancel")
    minutes = -1.0 if args.cancel else (5.0 if args.idle_minutes is None else args.idle_minutes)
    every = args.all or (args.all_users and not args.clusters)
    targets = resolve_clusters(ctx, args.clusters, every, args.all_users)
    records = []
    for c in targets:
        rec = ctx.call(protocol.Autostop(cluster=c.name, idle_minutes=minutes, down=args.down))
        records.append(rec)
        if minutes < 0:
            output.info(f"Autostop cancelled for {c.name}.")
        else:
            what = "torn down" if args.down else "stopped"
            output.info(f"{c.name} will be {what} after {minutes:g} idle minute(s).")
    if ctx.json:
        output.print_json(records)
    return OK
