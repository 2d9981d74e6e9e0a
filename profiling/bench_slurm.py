"""The `slurm` infra's figures, against a real single-node Slurm cluster on loopback
(tests/slurm.py), each next to plain Slurm in the same run.

    python -m profiling.bench_slurm [--runs N] [--clusters N] [--jobs N] [--only ...]
                                    [--out FILE.json]

  latency   N times, interleaved: plain `sbatch` -> its script runs, and plain `srun` into
            that allocation -> its step runs; skyd `launch` (API, no setup) -> the job's
            script runs, and `exec` on that cluster -> its script runs. Each script writes
            the time it starts; the difference is what skyd adds (goal <= 50 ms).
  waiting   N clusters (default 200) launched while the node is full, so that all wait in
            Slurm (long slots raised so each launch waits there, not in skyd's queue): the
            Slurm commands skyd issues per minute, counted by wrappers of Slurm's commands
            (goal <= 15), who issued them (the daemon's watcher, the waiting launches);
            then the node is freed: seconds until all are UP, and commands per minute
            while all N wait idle.
  managed   N managed jobs (default 200, `run: echo hi`) end to end: seconds until all
            SUCCEEDED and torn down, next to N plain `sbatch --wrap 'echo hi'` to the end.

The Slurm cluster's node claims 256 CPUs (SlurmdParameters=config_overrides: there are
two) so that hundreds of 1-CPU allocations fit; its scheduler is tuned as the tests'
(batch_sched_delay=0). Prints Markdown tables; raw figures go to --out
(default bench-results/slurm.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from profiling._daemon import ROOT, BenchDaemon, kill_leftovers
from profiling._report import code_version, machine_info, markdown, stop_on_signal
from skyd import protocol
from skyd.taskspec import Resources, Task
from tests.slurm import SlurmCluster, counting_bin

NODE_CPUS = 256
FILES_DIR = ".skyd/slurm-bench"


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout:g}s")


def stamp(path: Path) -> float:
    """The time a script wrote to `path` once it ran."""
    def read() -> float | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return float(text) if text.endswith("\n") else None
    return wait_for(read, 120)


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:,.0f} ({min(xs) * 1000:,.0f}–{max(xs) * 1000:,.0f})"


class Bench:
    def __init__(self, root: Path, slurm: SlurmCluster):
        self.root, self.slurm = root, slurm
        self.bin, self.calls = counting_bin(root / "bin")

    def daemon(self, name: str, *args: str, interval: float = 5.0) -> BenchDaemon:
        config = self.root / f"{name}.yaml"
        config.write_text(f"slurm:\n  slurm_conf: {self.slurm.conf}\n  bin_dir: {self.bin}\n"
                          f"  files_dir: {FILES_DIR}\n  watch_interval: {interval}\n")
        d = BenchDaemon(self.root, name, ["--config", str(config), *args])
        d.start()
        return d

    def calls_since(self, mark: int) -> list[list[str]]:
        """(parent pid, command, time) of each Slurm command skyd ran since `mark`."""
        return [line.split() for line in self.calls.read_text().splitlines()[mark:]]

    def mark(self) -> int:
        return len(self.calls.read_text().splitlines())

    # ---- latency ------------------------------------------------------------------------

    def settle(self) -> None:
        """The same start for every timed step: no job of Slurm's still completing (Slurm
        starts nothing new at submission then: it waits for its next pass, ~1 s), and a
        second for the daemon to refill its spare workers after the previous request."""
        wait_for(lambda: not any(j["state"] == "COMPLETING" for j in self.slurm.jobs()), 60, 0.05)
        time.sleep(1.0)

    def latency(self, runs: int) -> dict:
        d = self.daemon("latency")
        out: dict[str, list[float]] = {"sbatch": [], "srun": [], "launch": [], "exec": [],
                                       "slurm_start": [], "before_sbatch": [], "after_start": []}
        try:
            for i in range(runs):
                f = self.root / f"t{i}"
                # plain: an allocation whose script says when it runs, then a step in it
                self.settle()
                t0 = time.time()
                job = self.slurm.run(["sbatch", "--parsable", "--output=/dev/null", "-c", "1",
                                      "--mem=16", "--wrap",
                                      f"date +%s.%N > {f}.sbatch; exec sleep infinity"]).stdout.strip()
                out["sbatch"].append(stamp(Path(f"{f}.sbatch")) - t0)
                self.settle()
                t0 = time.time()
                subprocess.run(["srun", f"--jobid={job}", "--overlap", "-N1", "--quiet", "bash", "-c",
                                f"date +%s.%N > {f}.srun"], env=self.slurm.env(), check=True)
                out["srun"].append(stamp(Path(f"{f}.srun")) - t0)
                self.slurm.run(["scancel", job])
                # skyd: launch a cluster (its job's script says when it runs), exec on it
                task = Task(run=f"date +%s.%N > {f}.launch",
                            resources=Resources(infra="slurm", cpus=1, memory=0.015625))
                self.settle()
                mark = self.mark()
                t0 = time.time()
                rid = d.frames(protocol.Launch(task=task, cluster=f"lat{i}"), wait=False)[-1].request_id
                ran = stamp(Path(f"{f}.launch"))
                out["launch"].append(ran - t0)
                # Split at what Slurm did: skyd's sbatch (the wrappers' log) and the start of
                # the allocation's script (the mtime of its marker file)
                submitted = next(float(c[2]) for c in self.calls_since(mark) if c[1] == "sbatch")
                [marker] = (Path.home() / FILES_DIR / f"lat{i}").glob("allocated-*")
                started = marker.stat().st_mtime
                out["before_sbatch"].append(submitted - t0)
                out["slurm_start"].append(started - submitted)
                out["after_start"].append(ran - started)
                # an exec waits for the launch on its cluster to end (requests on one
                # cluster run in order): time it from a cluster with nothing queued
                wait_for(lambda: d.call(protocol.ApiStatus(request_ids=[rid]))[0].status.finished,
                         60, 0.01)
                self.settle()
                t0 = time.time()
                d.frames(protocol.Exec(cluster=f"lat{i}", task=Task(run=f"date +%s.%N > {f}.exec")),
                         wait=False)
                out["exec"].append(stamp(Path(f"{f}.exec")) - t0)
                d.call(protocol.Down(cluster=f"lat{i}"))
        finally:
            d.stop()
        # Slurm starts an allocation at its submission or at its next pass (~1 s): that
        # wait is Slurm's, measured in each run, not skyd's.
        added = {"launch": [b + a - s for b, a, s in zip(out["before_sbatch"], out["after_start"],
                                                         out["srun"])],
                 "exec": [a - b for a, b in zip(out["exec"], out["srun"])]}
        print(markdown(["path", "plain Slurm, ms", "through skyd, ms", "skyd adds, ms (goal <= 50)"], [
            ["new allocation -> script runs", f"sbatch: {ms(out['sbatch'])}, then srun: "
             f"{ms(out['srun'])}", f"launch: {ms(out['launch'])} = before its sbatch "
             f"{ms(out['before_sbatch'])} + Slurm's start {ms(out['slurm_start'])} + allocation "
             f"-> job {ms(out['after_start'])}", ms(added["launch"]) +
             " (before sbatch + allocation -> job - srun)"],
            ["step in it -> script runs", f"srun: {ms(out['srun'])}", f"exec: {ms(out['exec'])}",
             ms(added["exec"])],
        ]), flush=True)
        return {"seconds": out, "added": added}

    # ---- many waiting clusters ------------------------------------------------------------

    def waiting(self, n: int, window: float) -> dict:
        d = self.daemon("waiting", "--long-slots", str(n + 8), "--user-long-slots", "0",
                        "--user-pending", "0")
        try:
            hog = self.slurm.run(["sbatch", "--parsable", "--output=/dev/null", "--exclusive",
                                  "--wrap", "sleep 3600"]).stdout.strip()
            wait_for(lambda: any(j["id"] == hog and j["state"] == "RUNNING"
                                 for j in self.slurm.jobs()), 30, 0.1)
            task = Task(run="true", resources=Resources(infra="slurm", cpus=1, memory=0.015625))
            for i in range(n):
                d.frames(protocol.Launch(task=task, cluster=f"w{i}"), wait=False)

            def all_pending() -> bool:
                cs = d.call(protocol.ClusterStatus())
                return len(cs) == n and all("PENDING" in c.status_reason for c in cs)
            wait_for(all_pending, 600, 0.5)
            time.sleep(10)
            pending = self.count(d, window)
            self.slurm.run(["scancel", hog])
            t0 = time.monotonic()
            wait_for(lambda: [c.status for c in d.call(protocol.ClusterStatus())] == ["UP"] * n,
                     900, 0.5)
            all_up = time.monotonic() - t0
            time.sleep(70)               # the watcher backs off once nothing changes
            idle = self.count(d, window)
            for i in range(n):
                d.frames(protocol.Down(cluster=f"w{i}"), wait=False)
            wait_for(lambda: not d.call(protocol.ClusterStatus()), 900, 0.5)
        finally:
            d.stop()
        print(markdown(["clusters waiting", "Slurm commands per minute (goal <= 15)",
                        "by the daemon's watcher", "by the waiting launches"], [
            [f"{n} pending (node full)", f"{pending['per_minute']:.1f}",
             f"{pending['daemon']}", f"{pending['others']}"],
            [f"{n} up, idle", f"{idle['per_minute']:.1f}", f"{idle['daemon']}",
             f"{idle['others']}"],
        ]) + f"\n\nnode freed -> all {n} clusters UP: {all_up:.1f} s", flush=True)
        return {"clusters": n, "pending": pending, "idle": idle, "all_up_seconds": all_up}

    def count(self, d: BenchDaemon, window: float) -> dict:
        mark = self.mark()
        time.sleep(window)
        calls = self.calls_since(mark)
        daemon = sum(1 for c in calls if c[0] == str(d.pid))
        return {"window_s": window, "commands": len(calls), "daemon": daemon,
                "others": len(calls) - daemon, "per_minute": len(calls) * 60 / window,
                "by_command": {cmd: sum(1 for c in calls if c[1] == cmd) for cmd in {c[1] for c in calls}}}

    # ---- managed jobs ---------------------------------------------------------------------

    def managed(self, n: int) -> dict:
        t0 = time.monotonic()
        ids = [self.slurm.run(["sbatch", "--parsable", "--output=/dev/null", "-c", "1",
                               "--mem=16", "--wrap", "echo hi"]).stdout.strip() for _ in range(n)]
        wait_for(lambda: not any(j["id"] in ids and j["state"] in ("PENDING", "RUNNING",
                                                                   "COMPLETING")
                                 for j in self.slurm.jobs()), 1800, 0.2)
        plain = time.monotonic() - t0
        d = self.daemon("managed")
        try:
            mark = self.mark()
            task = Task(run="echo hi", resources=Resources(infra="slurm", cpus=1, memory=0.015625))
            t0 = time.monotonic()
            for _ in range(n):
                d.frames(protocol.JobsLaunch(task=task), wait=False)

            def done() -> bool:
                jobs = d.call(protocol.JobsQueue(all_users=True))
                return len(jobs) == n and all(j.status == "SUCCEEDED" and not j.teardown_pending
                                              for j in jobs)
            wait_for(done, 3600, 0.5)
            skyd = time.monotonic() - t0
            statuses = [j.status for j in d.call(protocol.JobsQueue(all_users=True))]
            commands = len(self.calls_since(mark))
        finally:
            d.stop()
        print(markdown(["N jobs (`echo hi`)", "plain sbatch, s", "skyd managed jobs, s",
                        "skyd / plain", "Slurm commands per job"], [
            [str(n), f"{plain:.1f}", f"{skyd:.1f}", f"{skyd / plain:.2f}", f"{commands / n:.1f}"],
        ]), flush=True)
        return {"jobs": n, "plain_s": plain, "skyd_s": skyd, "succeeded": statuses.count("SUCCEEDED"),
                "commands": commands}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--window", type=float, default=60.0, help="seconds commands are counted")
    ap.add_argument("--only", default="latency,waiting,managed")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "slurm.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, stop_on_signal)
    root = Path(tempfile.mkdtemp(prefix="skyd-bs-", dir="/tmp"))
    os.chmod(root, 0o755)
    results: dict[str, Any] = {"machine": machine_info(), "code": code_version()}
    slurm = SlurmCluster(root / "slurm", cpus=NODE_CPUS, memory_mb=64000)
    try:
        slurm.start()
        bench = Bench(root, slurm)
        parts = args.only.split(",")
        if "latency" in parts:
            results["latency"] = bench.latency(args.runs)
        if "waiting" in parts:
            results["waiting"] = bench.waiting(args.clusters, args.window)
        if "managed" in parts:
            results["managed"] = bench.managed(args.jobs)
    finally:
        slurm.stop()
        kill_leftovers(root, set())
        shutil.rmtree(Path.home() / FILES_DIR, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
