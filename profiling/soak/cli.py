"""The command line: which runs, at which sizes; a Markdown table (RELIABILITY.md's columns)
and, with --json, everything measured. Exits 1 when any promise broke."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import profiling.soak as package
from profiling.soak import runs


@dataclass(frozen=True)
class Sizes:
    """How big `all` runs each part."""
    requests: int
    clients: int
    kills: int
    duration: float
    wire: int
    tasks: int
    pools: int
    launches: int
    seconds: float


FULL = Sizes(requests=10_000, clients=8, kills=20, duration=400.0, wire=100_000, tasks=20_000,
             pools=20_000, launches=50, seconds=600.0)
# CI-sized runs of everything, to check the soak itself works (tests/reliability).
SMOKE = Sizes(requests=24, clients=4, kills=1, duration=3.0, wire=30, tasks=20, pools=20, launches=1,
              seconds=4.0)


def _table(rows: list[runs.Row]) -> str:
    head = ("| test | cases | faults injected | accepted | lost | duplicated | run twice | orphans "
            "| crashes | verdict |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {r.test} | {r.cases:,} | {r.faults} | {r.accepted:,} | {r.lost} | {r.duplicated} | "
             f"{r.run_twice} | {r.orphans} | {r.crashes} | {'ok' if r.ok else 'BROKEN'} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m profiling.soak", description=package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="run", required=True)
    crash = sub.add_parser("crash", help="bursts of --async requests, kill -9 at random moments, SIGTERM")
    crash.add_argument("--requests", type=int, default=10_000)
    crash.add_argument("--clients", type=int, default=8)
    crash.add_argument("--kills", type=int, default=20, help="kill -9 moments (then one SIGTERM)")
    crash.add_argument("--duration", type=float, help="seconds the burst lasts (default: requests / 25)")
    crash.add_argument("--clusters", type=int, default=8)
    crash.add_argument("--seed", type=int)
    fuzz = sub.add_parser("fuzz", help="hypothesis: frames and messages, task YAML, node-pool files")
    fuzz.add_argument("--cases", type=int, default=100_000, help="wire cases (default 100,000)")
    fuzz.add_argument("--task-cases", type=int, default=20_000)
    fuzz.add_argument("--pool-cases", type=int, default=20_000)
    fuzz.add_argument("--launches", type=int, default=50, help="accepted tasks really launched")
    fuzz.add_argument("--kind", default="wire,task,pools", help="comma list of wire, task, pools")
    steady = sub.add_parser("steady", help="a steady mix; latency and memory every second")
    steady.add_argument("--minutes", type=float, default=10.0)
    steady.add_argument("--short-rate", type=float, default=40.0, help="short requests a second")
    steady.add_argument("--long-rate", type=float, default=1.0, help="launches and execs a second")
    steady.add_argument("--managed-rate", type=float, default=0.3, help="managed jobs a second")
    steady.add_argument("--csv", type=Path, help="every second's sample as CSV")
    every = sub.add_parser("all", help="crash, fuzz and steady at their default sizes")
    every.add_argument("--smoke", action="store_true", help="tiny sizes: check the soak itself works")
    for parser in (crash, fuzz, steady, every):
        parser.add_argument("--json", type=Path, help="write every figure as JSON to this file")
        parser.add_argument("--keep", action="store_true", help="keep the state directories (under /tmp)")
    args = ap.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows: list[runs.Row] = []
    if args.run == "crash":
        duration = args.duration or args.requests / 25
        rows.append(runs.crash(args.requests, args.clients, args.kills, duration, args.clusters,
                               args.seed, args.keep, log))
    elif args.run == "fuzz":
        kinds = {k.strip() for k in args.kind.split(",")}
        if "wire" in kinds:
            rows.append(runs.fuzz_wire(args.cases, args.keep, log))
        if "task" in kinds:
            rows.append(runs.fuzz_tasks(args.task_cases, args.launches, args.keep, log))
        if "pools" in kinds:
            rows.append(runs.fuzz_pools(args.pool_cases, args.keep, log))
    elif args.run == "steady":
        rows.append(runs.steady(args.minutes * 60, args.short_rate, args.long_rate, args.managed_rate,
                                args.csv, args.keep, log))
    else:
        size = SMOKE if args.smoke else FULL
        rows.append(runs.crash(size.requests, size.clients, size.kills, size.duration, size.clients, None,
                               args.keep, log))
        rows.append(runs.fuzz_wire(size.wire, args.keep, log))
        rows.append(runs.fuzz_tasks(size.tasks, size.launches, args.keep, log))
        rows.append(runs.fuzz_pools(size.pools, args.keep, log))
        rows.append(runs.steady(size.seconds, 40.0, 1.0, 0.3, None, args.keep, log))
    print(_table(rows))
    for r in rows:
        for problem in r.problems:
            print(f"- {r.test}: {problem}")
        if r.details:
            print(f"- {r.test}: {json.dumps(r.details, default=str)[:1500]}")
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
    return 0 if all(r.ok for r in rows) else 1
