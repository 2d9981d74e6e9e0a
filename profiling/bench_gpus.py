"""GPU placement, measured in-process on the placement code (issue 15): the host ledger,
best fit and the fair queue of waiting claims (skyd.clusters.ledger/placement/claims),
with hosts as ledger entries — no daemon, no ssh.

    python -m profiling.bench_gpus [--hosts 100] [--gpus 8] [--jobs 10000] [--users 20]
                                   [--daemon N] [--json]

1. Latency: 10,000 queued GPU jobs (1/2/4/8 GPUs, 40/30/20/10 %, from 20 people) over
   100 hosts × 8 GPUs. Every job is trivial: as soon as one is placed it may end; each
   round frees the oldest placed slice and times the pass that places what fits next
   (`Claims.run`), until the queue is drained. Reports the per-freed-slice time (median,
   p99, max), the time to drain, the time to queue the 10,000, and this process's RSS
   before and after queueing them (psutil).
2. Utilisation: the same workload as a discrete-event simulation (durations uniform in
   [1, 10) time units, all queued at 0): GPU-time used over GPU-time available while work
   waits, with best fit (skyd's) next to first fit (the first host in pool order with
   room), both through the same fair queue, backfill and fence; on the uniform pool, and
   on a mixed one (50 hosts × 8 GPUs listed before 200 × 2: first fit then spends the big
   boxes on small work).
3. With --daemon N: a real `skyd serve` whose host reports 8× H100 (a fake nvidia-smi on
   its PATH): one cluster holds all 8, N `launch --gpus H100:1` wait (held, no slot); the
   daemon's VmRSS before and with them, how long they took to submit, and the time from
   the holder's `down` request being answered to the first waiting launch running.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

from skyd.clusters import claims as claims_mod
from skyd.clusters.claims import Claim, Claims
from skyd.clusters.ledger import Ledger
from skyd.clusters.placement import Demand, place
from skyd.infra.gpus import Detected, Gpu
from skyd import protocol
from skyd.protocol import HeldSlice
from skyd.taskspec import GpuAsk, Resources, Task

SIZES, WEIGHTS = (1, 2, 4, 8), (0.4, 0.3, 0.2, 0.1)


MIXED = [(50, 8), (200, 2)]


def pool(layout: list[tuple[int, int]]) -> Ledger:
    """A pool `p` of (hosts, GPUs each) groups, in that order."""
    ledger = Ledger()
    sizes = [gpus for hosts, gpus in layout for _ in range(hosts)]
    keys = [f"10.0.{i // 250}.{i % 250}:22" for i in range(len(sizes))]
    ledger.set_pools({"p": keys})
    for key, gpus in zip(keys, sizes):
        ledger.set_gpus(key, Detected(gpus=[Gpu(i, "H100", "NVIDIA H100 80GB HBM3", 81559)
                                            for i in range(gpus)], cpus=192,
                                      memory_bytes=2 << 40), 0.0)
    return ledger


def workload(jobs: int, users: int, seed: int = 15) -> list[tuple[int, int, float]]:
    """(uid, GPUs, duration) per job, in submission order."""
    rng = random.Random(seed)
    return [(1000 + rng.randrange(users), rng.choices(SIZES, WEIGHTS)[0], rng.uniform(1, 10))
            for _ in range(jobs)]


def queue_all(ledger: Ledger, work: list[tuple[int, int, float]]) -> Claims:
    claims = Claims(ledger)
    for i, (uid, count, _) in enumerate(work):
        claims.add(Claim(f"j{i}", uid, f"u{uid}", Demand(pool="p", options=(GpuAsk("H100", count),)),
                         notify=lambda c: None))
    return claims


def latency(hosts: int, gpus: int, jobs: int, users: int) -> dict:
    work = workload(jobs, users)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    ledger = pool([(hosts, gpus)])
    t = time.perf_counter()
    claims = queue_all(ledger, work)
    queued_s = time.perf_counter() - t
    rss1 = proc.memory_info().rss
    running: collections.deque[str] = collections.deque()
    per_slice, placed = [], 0
    t_drain = time.perf_counter()
    told = claims.run()                     # the first pass fills the pool
    placed += len(told)
    running.extend(c.key for c in told)
    while running:
        ledger.release(running.popleft())   # the oldest job ends: its slice frees
        t = time.perf_counter()
        told = claims.run()
        per_slice.append(time.perf_counter() - t)
        placed += sum(c.slices is not None for c in told)
        running.extend(c.key for c in told if c.slices is not None)
    drain_s = time.perf_counter() - t_drain
    ms = sorted(x * 1000 for x in per_slice)
    return {"hosts": hosts, "gpus_per_host": gpus, "jobs": jobs, "users": users,
            "placed": placed, "queue_build_s": queued_s, "drain_s": drain_s,
            "per_freed_slice_ms_median": statistics.median(ms),
            "per_freed_slice_ms_p99": ms[int(len(ms) * 0.99)], "per_freed_slice_ms_max": ms[-1],
            "rss_before_mib": rss0 / 2**20, "rss_queued_mib": rss1 / 2**20,
            "rss_per_claim_bytes": (rss1 - rss0) / jobs}


def first_fit(ledger: Ledger, d: Demand, fenced=frozenset(), avoid=frozenset()
              ) -> list[HeldSlice] | None:
    """The baseline: the first host in pool order with room (no best fit)."""
    ask = d.options[0]
    for host in sorted(ledger.hosts.values(), key=lambda h: h.order):
        if host.key in fenced:
            continue
        free = host.free_gpus("H100")
        if len(free) >= ask.count:
            return [HeldSlice(rank=0, host=host.key, gpus=free[:ask.count], gpu_model="H100")]
    return None


def simulate(layout: list[tuple[int, int]], jobs: int, users: int,
             placer: Callable = place) -> dict:
    """Event-driven: jobs end after their duration; each end frees a slice and the queue
    places what fits. Utilisation while work waits = used GPU-time / (all GPUs × time)."""
    work = workload(jobs, users)
    duration = {f"j{i}": d for i, (_, _, d) in enumerate(work)}
    size = {f"j{i}": n for i, (_, n, _) in enumerate(work)}
    claims_mod.place = placer
    try:
        ledger = pool(layout)
        claims = queue_all(ledger, work)
        ends: list[tuple[float, str]] = []
        now, used, busy_area, waiting_until = 0.0, 0, 0.0, None

        def start(told: list[Claim]) -> int:
            n = 0
            for c in told:
                if c.slices is not None:
                    heapq.heappush(ends, (now + duration[c.key], c.key))
                    n += size[c.key]
            return n
        used += start(claims.run())
        while ends:
            t, key = heapq.heappop(ends)
            if len(claims):                  # work waits: count this interval
                busy_area += used * (t - now)
                waiting_until = t
            now = t
            used -= size[key]
            ledger.release(key)
            used += start(claims.run())
    finally:
        claims_mod.place = place
    total = sum(hosts * gpus for hosts, gpus in layout)
    return {"utilisation_while_waiting": busy_area / (total * waiting_until),
            "time_queue_nonempty": waiting_until, "makespan": now}


FAKE_SMI = """#!/bin/sh
for i in 0 1 2 3 4 5 6 7; do echo "$i, NVIDIA H100 80GB HBM3, 81559"; done
"""


def vmrss(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:"))


def daemon_run(queued: int) -> dict:
    """The daemon with `queued` launches waiting for GPUs (see the module's docstring)."""
    from profiling._daemon import BenchDaemon, kill_leftovers
    root = Path(tempfile.mkdtemp(prefix="skyd-gpu-", dir="/tmp"))
    fake = root / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(FAKE_SMI)
    os.chmod(fake / "nvidia-smi", 0o755)

    class GpuDaemon(BenchDaemon):
        def env(self) -> dict[str, str]:
            env = super().env()
            return {**env, "PATH": f"{fake}:{env.get('PATH', os.defpath)}"}
    d = GpuDaemon(root, "d")
    out: dict = {"queued": queued}
    try:
        d.start()
        deadline = time.monotonic() + 20
        while sum(len(h.gpus) for h in d.call(protocol.GpuStatus())) < 8:
            assert time.monotonic() < deadline, "GPUs not detected"
            time.sleep(0.05)
        gpu = Resources(accelerators="H100:8")
        d.frames(protocol.Launch(task=Task(run="sleep 3600", resources=gpu), cluster="holder"))
        time.sleep(1)
        out["rss_idle_mib"] = vmrss(d.pid)
        one = Resources(accelerators="H100:1")
        conn = d.connect()
        t = time.perf_counter()
        first = None
        for i in range(queued):
            msgs = list(conn.submit(protocol.Launch(task=Task(run="true", resources=one),
                                                    cluster=f"q{i}"), wait=False))
            first = first or msgs[-1].request_id
        out["submit_s"] = time.perf_counter() - t
        conn.close()
        time.sleep(2)
        out["rss_queued_mib"] = vmrss(d.pid)
        d.frames(protocol.Down(cluster="holder"))
        t = time.perf_counter()
        while d.call(protocol.ApiStatus(request_ids=[first]))[0].status == protocol.Status.PENDING:
            time.sleep(0.001)
        out["down_to_first_running_ms"] = (time.perf_counter() - t) * 1000
        d.call(protocol.ApiCancel(all=True))
    finally:
        d.stop(timeout=30)
        kill_leftovers(root, d.sessions)
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--daemon", type=int, default=0, metavar="N",
                   help="also run a real daemon with N launches waiting for GPUs")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    uniform = [(a.hosts, a.gpus)]
    out = {"latency": latency(a.hosts, a.gpus, a.jobs, a.users),
           "best_fit": simulate(uniform, a.jobs, a.users),
           "first_fit": simulate(uniform, a.jobs, a.users, first_fit),
           "mixed_best_fit": simulate(MIXED, a.jobs, a.users),
           "mixed_first_fit": simulate(MIXED, a.jobs, a.users, first_fit)}
    if a.daemon:
        out["daemon"] = daemon_run(a.daemon)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    lat, best, first = out["latency"], out["best_fit"], out["first_fit"]
    mbest, mfirst = out["mixed_best_fit"], out["mixed_first_fit"]
    print(f"{a.jobs} queued GPU jobs (1/2/4/8 GPUs) from {a.users} people over "
          f"{a.hosts} hosts × {a.gpus} GPUs\n")
    print("| figure | value |\n|---|---:|")
    for label, value in [
            ("queue the jobs (Claims.add each), s", f"{lat['queue_build_s']:.2f}"),
            ("a slice frees → next placed (Claims.run), median ms",
             f"{lat['per_freed_slice_ms_median']:.3f}"),
            ("same, p99 ms", f"{lat['per_freed_slice_ms_p99']:.3f}"),
            ("same, max ms", f"{lat['per_freed_slice_ms_max']:.3f}"),
            ("drain the queue, trivial jobs, s", f"{lat['drain_s']:.2f}"),
            ("RSS before / with the queue, MiB",
             f"{lat['rss_before_mib']:.1f} / {lat['rss_queued_mib']:.1f}"),
            ("RSS per queued claim, bytes", f"{lat['rss_per_claim_bytes']:.0f}"),
            ("GPU-time used while work waits, best fit",
             f"{best['utilisation_while_waiting'] * 100:.1f} %"),
            ("same, first fit", f"{first['utilisation_while_waiting'] * 100:.1f} %"),
            ("makespan, best fit / first fit (time units)",
             f"{best['makespan']:.0f} / {first['makespan']:.0f}"),
            ("mixed pool (50 × 8 then 200 × 2): used while work waits, best / first fit",
             f"{mbest['utilisation_while_waiting'] * 100:.1f} % / "
             f"{mfirst['utilisation_while_waiting'] * 100:.1f} %"),
            ("mixed pool: makespan, best / first fit",
             f"{mbest['makespan']:.0f} / {mfirst['makespan']:.0f}")]:
        print(f"| {label} | {value} |")
    if "daemon" in out:
        dm = out["daemon"]
        print(f"\nA real daemon, {dm['queued']} launches waiting for 1× H100 each:\n")
        print("| figure | value |\n|---|---:|")
        print(f"| submit them (one client, sequential), s | {dm['submit_s']:.1f} |")
        print(f"| daemon VmRSS idle / with them waiting, MiB | {dm['rss_idle_mib']:.1f} / "
              f"{dm['rss_queued_mib']:.1f} |")
        print(f"| holder's `down` answered → first waiting launch running, ms | "
              f"{dm['down_to_first_running_ms']:.1f} |")


if __name__ == "__main__":
    main()
