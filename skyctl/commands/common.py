"""Options many commands share, named as SkyPilot names them, and what completes them in
the shell (an action's `complete`: cluster, job, managed_job, request, pool, path)."""

from __future__ import annotations

import argparse

from skyctl.context import Ctx
from skyctl.exits import UsageError
from skyd import protocol


def completes(action: argparse.Action, kind: str) -> argparse.Action:
    setattr(action, "complete", kind)
    return action


def job_id(text: str) -> int:
    """A job id as argparse reads it: within what the protocol carries."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= protocol.MAX_WIRE_INT:
        raise argparse.ArgumentTypeError(f"{text} is not a job id (1 to {protocol.MAX_WIRE_INT})")
    return n


def host(p: argparse.ArgumentParser, default=None) -> None:
    p.add_argument("--host", metavar="ADDRESS", default=default,
                   help="the daemon: unix:///path/to/skyd.sock (default: SKYD_HOST, "
                        "~/.config/skyctl/config.toml, then the per-user or system socket)")


def common(p: argparse.ArgumentParser, json_help: str | None = "print machine-readable JSON "
           "(only that, on stdout)") -> None:
    """--host, and --json (every command but the shell)."""
    host(p, default=argparse.SUPPRESS)      # unless given here: the top level's
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(parser_=p)


def yes(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask (accepted as in SkyPilot; skyctl never asks)")


def async_(p: argparse.ArgumentParser) -> None:
    p.add_argument("--async", dest="async_", action="store_true",
                   help="print the request id and return at once")


def clusters(p: argparse.ArgumentParser, verb: str, all_users: bool = True) -> None:
    """CLUSTER... (names or glob patterns), -a/--all, -u/--all-users."""
    completes(p.add_argument("clusters", nargs="*", metavar="CLUSTER",
                             help="cluster names or glob patterns (quote them: 'dev-*')"),
              "cluster")
    p.add_argument("-a", "--all", action="store_true", help=f"{verb} all your clusters")
    if all_users:
        p.add_argument("-u", "--all-users", action="store_true",
                       help=f"with -a or a pattern: {verb} every user's clusters (admins only)")


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def resolve_clusters(ctx: Ctx, names: list[str], every: bool = False,
                     all_users: bool = False) -> list[protocol.ClusterRecord]:
    """The clusters named (a name or a glob pattern each), or all of them with `every`;
    a name that does not exist, or a pattern that matches none, is a usage error."""
    if not names and not every:
        raise UsageError("name a cluster (or a glob pattern), or pass -a/--all")
    exact = [n for n in names if not is_pattern(n)]
    if not every and exact == names:
        # The daemon says which name does not exist (another's answers as a missing one).
        return ctx.call(protocol.ClusterStatus(clusters=list(dict.fromkeys(names)),
                                               all_users=all_users))
    import fnmatch
    known = ctx.call(protocol.ClusterStatus(all_users=all_users))
    if every:
        return known
    chosen: dict[str, protocol.ClusterRecord] = {}
    if exact:
        for rec in ctx.call(protocol.ClusterStatus(clusters=list(dict.fromkeys(exact)),
                                                   all_users=all_users)):
            chosen[rec.name] = rec
    for pattern in (n for n in names if is_pattern(n)):
        hits = [c for c in known if fnmatch.fnmatchcase(c.name, pattern)]
        if not hits:
            raise UsageError(f"no cluster matches {pattern!r} (see skyctl status)")
        chosen.update((c.name, c) for c in hits)
    return list(chosen.values())
