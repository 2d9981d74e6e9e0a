"""`check` (also `infra`): the ssh node pools, every host probed as you (CPUs, memory,
GPUs); --refresh records the GPUs found for placement.

JSON (--json): [host record].
"""

from __future__ import annotations

import argparse

from skyctl import output
from skyctl.commands.common import common, completes
from skyctl.context import Ctx
from skyctl.exits import FAILED, OK
from skyd import protocol


def add_check(p: argparse.ArgumentParser) -> None:
    p.description = "Probe every host of the ssh node pools (exit 1 if any does not answer)."
    completes(p.add_argument("pools", nargs="*", metavar="POOL", help="only these pools"), "pool")
    p.add_argument("--refresh", action="store_true",
                   help="detect the hosts' GPUs again (and this daemon's own) for placement")
    common(p)
    p.set_defaults(func=run_check)


ARGUMENTS = {"check": add_check}


def run_check(ctx: Ctx, args: argparse.Namespace) -> int:
    hosts = ctx.call(protocol.InfraStatus(pools=args.pools, refresh=args.refresh))
    if ctx.json:
        output.print_json(hosts)
        return OK if all(h.reachable for h in hosts) else FAILED
    if not hosts:
        info = ctx.call(protocol.ApiInfo())
        where = info.node_pools or f"{info.state_dir}/ssh_node_pools.yaml"
        output.info(f"No ssh node pools: the daemon reads them from {where}.")
        return OK
    output.table(["POOL", "HOST", "USER", "REACHABLE", "CPUS", "MEMORY", "GPUS", "CLUSTERS"],
                 [[h.pool, f"{h.ip}:{h.port}",
                   f"{h.user} (shared)" if h.shared_login else h.user,
                   output.paint("yes", "green") if h.reachable else
                   output.paint(f"no: {h.error}", "red"),
                   h.cpus if h.cpus is not None else "-",
                   f"{h.memory_bytes / 2**30:.1f} GiB" if h.memory_bytes else "-",
                   gpu_summary(h), ", ".join(h.clusters) or h.cluster or "-"] for h in hosts])
    for h in hosts:
        if h.gpu_error:
            output.warn(f"{h.ip}:{h.port}: GPU detection failed: {h.gpu_error}")
    if any(h.gpus for h in hosts):
        output.info("GPU isolation is by environment only on pool hosts: each job's "
                    "CUDA_VISIBLE_DEVICES names its own GPUs (skyctl gpus: who holds which, "
                    "and how the daemon's own host keeps jobs to theirs).")
    for pool in dict.fromkeys(h.pool for h in hosts if h.shared_login):
        output.warn(f"pool {pool}: shared login: users of this pool are not isolated from each "
                    "other (each can read and signal the others' work)")
    return OK if all(h.reachable for h in hosts) else FAILED


def gpu_summary(h: protocol.HostRecord) -> str:
    """"8× H100 (6 free)"."""
    models: dict[str, list[protocol.GpuSlot]] = {}
    for g in h.gpus:
        models.setdefault(g.model, []).append(g)
    return ", ".join(f"{len(gs)}× {m} ({sum(not g.user for g in gs)} free)"
                     for m, gs in sorted(models.items())) or "-"
