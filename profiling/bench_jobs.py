"""Managed jobs at scale: the seed's scenario, 2,000 `jobs launch --async`, measured.

    python -m profiling.bench_jobs [--jobs N] [--runs R] [--clients C] [--only cli,api]
                                   [--out FILE.json]

  cli    N `skyctl jobs launch --async job.yaml` as separate processes, one after another
         (the shell loop of SkyPilot's guide), with skyctl from a regular install in a
         throw-away venv: seconds until the last one is accepted (goal: 90 s for 2,000).
  api    the same N as JobsLaunch(wait=False) through the protocol from one process over C
         connections (default 50): seconds until all are accepted (goal: 1 s).
  drain  after each burst, with `run: echo hi` on the `local` infra: seconds until every
         job has SUCCEEDED and every cluster is down.
  memory during burst and drain, sampled every 0.2 s: the daemon's RSS, the RSS of its
         process tree (forkserver, workers), and how many processes the run has (the tree
         plus detached job runners): peak and at the end (goal: daemon <= 150 MiB, flat).
  queue  with the N jobs stored: `jobs queue` (all jobs) over the socket, median of 20,
         and `skyctl jobs queue` as a fresh process (venv), median of 5.

A fresh daemon (own state dir under a temp dir, default slots) per burst. Only the Unix
socket is used; every loop is bounded in time. Prints Markdown tables and writes the raw
samples to --out (default bench-results/jobs.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from profiling._daemon import ROOT, BenchDaemon, kill_leftovers, ours
from profiling._report import agg, code_version, machine_info, markdown, stop_on_signal
from profiling._venv import user_install
from skyd import protocol
from skyd.taskspec import Task

TASK_YAML = "name: bench\nrun: echo hi\n"
ACCEPT_TIMEOUT = 600.0
DRAIN_TIMEOUT = 900.0
MiB = 2**20


class Sampler(threading.Thread):
    """Every 0.2 s: daemon RSS, its tree's RSS, and the run's process count."""

    def __init__(self, d: BenchDaemon):
        super().__init__(daemon=True)
        self.d = d
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        proc = psutil.Process(self.d.pid)
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                rss = proc.memory_info().rss
                children = proc.children(recursive=True)
                tree = rss
                for c in children:
                    with contextlib.suppress(psutil.Error):
                        tree += c.memory_info().rss
            except psutil.Error:
                return
            # The tree (daemon, forkserver, workers) and the detached job runners.
            pids = {proc.pid, *(c.pid for c in children), *ours(self.d.state_dir, set())}
            self.samples.append({"t": t, "daemon_rss": rss, "tree_rss": tree,
                                 "processes": len(pids)})
            self.stop.wait(0.2)

    def summary(self) -> dict:
        s = self.samples
        if not s:
            return {}
        return {"daemon_rss_peak_mib": max(x["daemon_rss"] for x in s) / MiB,
                "daemon_rss_end_mib": s[-1]["daemon_rss"] / MiB,
                "daemon_rss_start_mib": s[0]["daemon_rss"] / MiB,
                "tree_rss_peak_mib": max(x["tree_rss"] for x in s) / MiB,
                "processes_peak": max(x["processes"] for x in s),
                "processes_end": s[-1]["processes"], "samples": len(s)}


def jobs_state(d: BenchDaemon) -> tuple[int, int, int]:
    """(succeeded, not succeeded but finished, unfinished-or-tearing-down)."""
    done = bad = busy = 0
    for j in d.call(protocol.JobsQueue(all_users=True)):
        if j.status in protocol.MANAGED_FINISHED and not j.teardown_pending:
            done += j.status == "SUCCEEDED"
            bad += j.status != "SUCCEEDED"
        else:
            busy += 1
    return done, bad, busy


def drain(d: BenchDaemon, n: int, t0: float) -> dict:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        done, bad, busy = jobs_state(d)
        if done + bad >= n and busy == 0 and not d.call(protocol.ClusterStatus(all_users=True)):
            return {"drain_s": time.perf_counter() - t0, "succeeded": done, "failed": bad}
        time.sleep(0.25)
    done, bad, busy = jobs_state(d)
    return {"drain_s": None, "succeeded": done, "failed": bad, "unfinished": busy}


def burst_cli(d: BenchDaemon, n: int, skyctl: str, yaml: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SKYD_HOST"] = d.host
    errors, lat = 0, []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        p = subprocess.run([skyctl, "jobs", "launch", "--async", "-y", str(yaml)],
                           capture_output=True, text=True, timeout=60, env=env)
        lat.append((time.perf_counter() - s) * 1000)
        errors += p.returncode != 0
        if time.perf_counter() - t0 > ACCEPT_TIMEOUT:
            break
    lat.sort()
    return {"accept_s": time.perf_counter() - t0, "accepted": len(lat) - errors,
            "errors": errors, "per_process_ms_p50": lat[len(lat) // 2],
            "per_process_ms_max": lat[-1]}


def burst_api(d: BenchDaemon, n: int, clients: int) -> dict:
    task = Task(name="bench", run="echo hi")
    counts = [n // clients + (1 if k < n % clients else 0) for k in range(clients)]
    errors: list[str] = []
    conns = [d.connect() for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        start.wait()
        for _ in range(counts[k]):
            msgs = list(conns[k].submit(protocol.JobsLaunch(task=task), wait=False))
            if not isinstance(msgs[-1], protocol.Accepted):
                errors.append(str(msgs[-1]))
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(ACCEPT_TIMEOUT)
    accept = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"accept_s": accept, "accepted": n - len(errors), "errors": len(errors),
            "error_samples": errors[:3]}


def queue_latency(d: BenchDaemon, skyctl: str | None) -> dict:
    ms = []
    with d.connect() as c:
        for _ in range(20):
            s = time.perf_counter()
            rows = c.call(protocol.JobsQueue(all_users=True))
            ms.append((time.perf_counter() - s) * 1000)
    out = {"rows": len(rows), "api_ms_median": statistics.median(ms), "api_ms_max": max(ms)}
    if skyctl:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["SKYD_HOST"] = d.host
        cli = []
        for _ in range(5):
            s = time.perf_counter()
            subprocess.run([skyctl, "jobs", "queue"], capture_output=True, timeout=60, env=env,
                           check=True)
            cli.append((time.perf_counter() - s) * 1000)
        out["cli_ms_median"] = statistics.median(cli)
    return out


def one_run(mode: str, root: Path, n: int, clients: int, skyctl: str | None,
            yaml: Path, run: int) -> dict:
    d = BenchDaemon(root, f"{mode}{run}")
    d.start()
    sampler = Sampler(d)
    sampler.start()
    try:
        t0 = time.perf_counter()
        res = burst_cli(d, n, skyctl, yaml) if mode == "cli" else burst_api(d, n, clients)
        res["memory_at_accept"] = sampler.summary()
        res.update(drain(d, n, t0))
        res["memory"] = sampler.summary()
        res["queue"] = queue_latency(d, skyctl)
        res["parallelism"] = d.call(protocol.ApiInfo()).long_slots // 2
        return res
    finally:
        sampler.stop.set()
        sampler.join(5)
        d.stop(signal.SIGTERM)
        kill_leftovers(root, set())


def fmt(a: dict, digits: int = 2) -> str:
    if a["median"] is None:
        return "-"
    if a["runs"] == 1:
        return f"{a['median']:.{digits}f}"
    return f"{a['median']:.{digits}f} ({a['min']:.{digits}f}–{a['max']:.{digits}f})"


def tables(res: dict) -> str:
    n = res["jobs"]
    rows = []
    for mode, label, goal in (("cli", f"{n} × `skyctl jobs launch --async` (processes in a loop)",
                               "≤ 90 s (2,000)"),
                              ("api", f"{n} × JobsLaunch --async, one client, "
                                      f"{res['clients']} connections", "≤ 1 s (2,000)")):
        runs = res.get(mode)
        if not runs:
            continue
        g = lambda f: agg([f(r) for r in runs])  # noqa: E731
        rows.append([label, fmt(g(lambda r: r["accept_s"])) + " s", goal,
                     fmt(g(lambda r: r["drain_s"]), 1) + " s",
                     f"{sum(r['succeeded'] for r in runs)}/{n * len(runs)}",
                     fmt(g(lambda r: r["memory"].get("daemon_rss_peak_mib")), 1) + " MiB",
                     fmt(g(lambda r: r["memory"].get("tree_rss_peak_mib")), 1) + " MiB",
                     fmt(g(lambda r: r["memory"].get("processes_peak")), 0),
                     fmt(g(lambda r: r["queue"]["api_ms_median"]), 1) + " ms",
                     fmt(g(lambda r: r["queue"].get("cli_ms_median")), 1) + " ms"])
    return markdown(["burst", "all accepted", "goal", "until all SUCCEEDED, clusters down",
                     "succeeded", "daemon RSS peak (goal ≤ 150 MiB)", "daemon tree RSS peak",
                     "processes peak", f"`jobs queue`, {n} jobs, API", "`skyctl jobs queue`"],
                    rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_jobs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--only", default="cli,api")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "jobs.json"))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_signal)
    modes = [m for m in args.only.split(",") if m]
    tmp = Path(tempfile.mkdtemp(prefix="skyd-bj-", dir="/tmp"))
    res: dict[str, Any] = {"jobs": args.jobs, "clients": args.clients, "machine": machine_info(),
                           "code": code_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        (tmp / "state").mkdir()
        yaml = tmp / "job.yaml"
        yaml.write_text(TASK_YAML)
        skyctl = None
        user = user_install(tmp / "venv")
        if user["ok"]:
            skyctl = user["skyctl"]
        elif "cli" in modes:
            print(f"cannot make the venv: {user.get('reason')}; skipping cli", flush=True)
            modes.remove("cli")
        for mode in modes:
            res[mode] = []
            for run in range(args.runs):
                print(f"[{mode} run {run + 1}/{args.runs}] {args.jobs} jobs...", flush=True)
                r = one_run(mode, tmp / "state", args.jobs, args.clients, skyctl, yaml, run)
                res[mode].append(r)
                print(f"  accepted in {r['accept_s']:.2f} s, all done in "
                      f"{r['drain_s'] if r['drain_s'] is None else round(r['drain_s'], 1)} s, "
                      f"daemon peak {r['memory'].get('daemon_rss_peak_mib', 0):.1f} MiB", flush=True)
    finally:
        kill_leftovers(tmp, set())
        shutil.rmtree(tmp, ignore_errors=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    print(tables(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
