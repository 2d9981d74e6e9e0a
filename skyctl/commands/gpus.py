"""`gpus` (also `show-gpus`): every host's GPUs — the daemon's own (local) and the ssh
node pools' — by model: how many, how many free, and who holds the others.

JSON (--json): [{"pool", "host", "gpus": [{"index", "model", "name", "memory_mib", "user",
"cluster", "job_id", "reserved"}], "error", "probed_at", "isolation", "unhealthy"}].
"""

from __future__ import annotations

import argparse

from skyctl import output
from skyctl.commands.common import common, completes
from skyctl.context import Ctx
from skyctl.exits import OK
from skyd import protocol


def add_gpus(p: argparse.ArgumentParser) -> None:
    p.description = ("GPUs of every host, by model: total, free, and who holds the others "
                     "(your own clusters by name). Detected with nvidia-smi; "
                     "skyctl infra --refresh detects them again.")
    completes(p.add_argument("pools", nargs="*", metavar="POOL",
                             help="only these pools (local: the daemon's host)"), "pool")
    p.add_argument("-a", "--all", action="store_true", help="one line per GPU")
    common(p)
    p.set_defaults(func=run_gpus)


ARGUMENTS = {"gpus": add_gpus}


def holders(gpus: list[protocol.GpuSlot]) -> str:
    """"alice/train (0,1), bob (2)": who holds which GPUs of a model on a host."""
    by: dict[str, list[int]] = {}
    for g in gpus:
        if g.user:
            who = g.user if g.cluster in ("", "(in use)") else f"{g.user}/{g.cluster}"
            by.setdefault(who + (" (placed)" if g.reserved else ""), []).append(g.index)
    return ", ".join(f"{who} ({','.join(map(str, ix))})" for who, ix in by.items()) or "-"


def run_gpus(ctx: Ctx, args: argparse.Namespace) -> int:
    hosts = ctx.call(protocol.GpuStatus(pools=args.pools))
    if ctx.json:
        output.print_json(hosts)
        return OK
    rows = []
    for h in hosts:
        models: dict[str, list[protocol.GpuSlot]] = {}
        for g in h.gpus:
            models.setdefault(g.model, []).append(g)
        if args.all:
            rows += [[h.pool, h.host, g.index, g.model, f"{g.memory_mib / 1024:.0f} GiB",
                      "free" if not g.user else holders([g])] for g in h.gpus]
            continue
        for model, gpus in sorted(models.items()):
            free = sum(not g.user for g in gpus)
            rows.append([h.pool, h.host, model, len(gpus), free, holders(gpus)])
        if not h.gpus:
            rows.append([h.pool, h.host, "-", 0, 0, "-"])
    if args.all:
        output.table(["POOL", "HOST", "INDEX", "MODEL", "MEMORY", "HELD BY"], rows)
    else:
        output.table(["POOL", "HOST", "MODEL", "TOTAL", "FREE", "HELD BY"], rows)
    for h in hosts:
        if h.error:
            output.warn(f"{h.host}: GPU detection failed: {h.error}")
        if h.unhealthy:
            output.warn(f"{h.host}: reports fewer GPUs than held by: {', '.join(h.unhealthy)}")
    fenced = [h.host for h in hosts if h.gpus and h.isolation == "devices-cgroup"]
    open_ = [h.host for h in hosts if h.gpus and h.isolation != "devices-cgroup"]
    if fenced:
        output.info(f"GPU isolation on {', '.join(fenced)} is enforced by the devices cgroup: "
                    "a job can open only the GPUs it holds.")
    if open_:
        where = f" on {', '.join(open_)}" if fenced else ""
        output.info(f"GPU isolation{where} is by environment only: each job's "
                    "CUDA_VISIBLE_DEVICES names its own GPUs, but nothing stops a process "
                    "from using others.")
    return OK
