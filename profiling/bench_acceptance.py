"""Acceptance under a running burst (issue 13): how long a `jobs launch --async` waits for
its durable Accepted while CPU-bound jobs run on the same cores.

    python -m profiling.bench_acceptance [--hogs N] [--counts 20,200] [--as-user]
                                         [--variants none,nice,nice0,...] [--out FILE.json]

A variant is the work running and what becomes of the submitted jobs; each variant and
count gets a fresh daemon (own state dir) and one warm-up job first.
  none    no CPU-bound work: the baseline (default settings).
  idle    N managed jobs on the local infra, each `python3 -c 'while True: pass'`, started
          and running before the measurement, on a daemon with the default settings: work
          (workers, setups, local jobs) at WORK_NICE in the idle cpu cgroup beside the
          daemon's (skyd.sizing.cpugroups) where the host allows it.
  background  the same with `--work-cpu background`: work idle against the whole host.
  nice    the same on a daemon started with `--work-cpu nice`: work yields by nice alone.
  nice0   as nice, with every worker and job at nice 0 (profiling/work_nice_zero on the
          daemon's PYTHONPATH sets skyd.privilege.WORK_NICE = 0): the comparison.
  …-queued  (none-queued, idle-queued, background-queued, …) the same work, but the
          submitted jobs stay queued (--jobs-parallelism 1, the one launch slot held by a job whose setup
          sleeps): acceptance alone, without the daemon's work of starting them.
Then `count` JobsLaunch(wait=False) of `run: echo hi`, one after another on one connection
(what `skyctl jobs launch --async` sends), each timed from before Submit to its Accepted:
p50/p90/p99/max. Unless queued, each submitted job starts while later ones are submitted
(the daemon's own work). Where the time goes: per-thread scheduler statistics
(/proc/PID/task/TID/schedstat) of the daemon's loop thread and of this client over the
submissions: ms on a CPU and ms runnable but waiting for one, per acceptance; the rest is
time blocked (fsync, the other side). The load average before the daemon starts and after
its submissions. About 80 s with the defaults on 2 cores.

--as-user: the warm-up and the measured submissions come from the test account alice
(tests/users.py; root only) on a daemon whose socket her group may use, so that the jobs
are hers and the daemon starts each as another user, as it does for a team.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from profiling._daemon import ROOT, BenchDaemon, bounded_wait, kill_leftovers
from profiling._report import code_version, machine_info, markdown, stop_on_signal
from profiling._stats import percentile
from skyd import privilege, protocol
from skyd.taskspec import Task

HOG_MARK = "skyd-bench-hog"
HOG = Task(name="hog", run=f"exec python3 -c 'while True: pass' {HOG_MARK}")
LIGHT = Task(name="light", run="echo hi")
NICE_ZERO = ROOT / "profiling" / "work_nice_zero"
SETTLE_S = 1.5
WORK = {"none": "none", "idle": "CPU-bound jobs, work_cpu idle (default)",
        "background": "CPU-bound jobs, work_cpu background",
        "nice": "CPU-bound jobs, work_cpu nice",
        "nice0": "CPU-bound jobs at nice 0, work_cpu nice (comparison)"}
VARIANTS = [*WORK, *(f"{w}-queued" for w in WORK)]
DEFAULT_VARIANTS = VARIANTS
HOLD = Task(name="hold", setup="sleep 600", run="true")


class AcceptDaemon(BenchDaemon):
    def __init__(self, root: Path, name: str, nice_zero: bool, args: list[str]):
        super().__init__(root, name, args)
        self.nice_zero = nice_zero

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.nice_zero:
            env["PYTHONPATH"] = str(NICE_ZERO) + os.pathsep + env["PYTHONPATH"]
        return env


# ---- processes ----------------------------------------------------------------------------

def hog_pids() -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if HOG_MARK.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return [p for p in found if p != os.getpid()]


def nice_of(pid: int) -> dict:
    """The process's nice and its autogroup's (the CPU is shared between autogroups first)."""
    out: dict[str, Any] = {}
    try:
        out["nice"] = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[16])
        out["autogroup"] = Path(f"/proc/{pid}/autogroup").read_text().split()[-1]
    except (OSError, IndexError, ValueError):
        pass
    return out


def schedstat(pid: int) -> dict[int, tuple[int, int]]:
    """tid -> (ns on a CPU, ns runnable waiting for one) for every thread of `pid`."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            run, wait, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            out[int(tid)] = (int(run), int(wait))
        except (OSError, ValueError):
            pass
    return out


def sched_delta(before: dict, after: dict, main: int, n: int) -> dict:
    """ms per acceptance on a CPU and waiting for one: the main thread and all threads."""
    def d(tids, k):
        return sum(after[t][k] - before.get(t, (0, 0))[k] for t in tids) / 1e6 / n
    return {"main_run_ms": d([main], 0) if main in after else None,
            "main_wait_ms": d([main], 1) if main in after else None,
            "all_run_ms": d(after, 0), "all_wait_ms": d(after, 1), "threads": len(after)}


# ---- one measurement ----------------------------------------------------------------------

def start_hogs(d: BenchDaemon, n: int) -> dict:
    with d.connect() as c:
        for _ in range(n):
            msgs = list(c.submit(protocol.JobsLaunch(task=HOG), wait=False))
            if not isinstance(msgs[-1], protocol.Accepted):
                raise RuntimeError(f"hog not accepted: {msgs[-1]!r}")
    running = bounded_wait(lambda: len(hog_pids()) >= n and sum(
        j.name == HOG.name and j.status == "RUNNING"
        for j in d.call(protocol.JobsQueue(all_users=True))) >= n, 60, 0.1)
    if not running:
        raise RuntimeError(f"{n} CPU-bound jobs did not all run within 60 s")
    pids = hog_pids()
    return {"pids": len(pids), "nice": [nice_of(p) for p in pids]}


def warm_up(d: BenchDaemon) -> None:
    """One job through its whole life first (a fresh daemon's first launch pays for imports
    and spares), then a pause: the figures are of a daemon that has settled."""
    time.sleep(SETTLE_S)
    with d.connect() as c:
        msgs = list(c.submit(protocol.JobsLaunch(task=LIGHT), wait=False))
    job_id = msgs[-1].job_id

    def finished() -> bool:       # every user's jobs as root, one's own otherwise
        return any(j.job_id == job_id and j.status in protocol.MANAGED_FINISHED
                   and not j.teardown_pending
                   for j in d.call(protocol.JobsQueue(all_users=os.geteuid() == 0)))
    if not bounded_wait(finished, 60, 0.1):
        raise RuntimeError("the warm-up job did not finish within 60 s")


def hold(d: BenchDaemon) -> None:
    with d.connect() as c:
        msgs = list(c.submit(protocol.JobsLaunch(task=HOLD), wait=False))
    job_id = msgs[-1].job_id
    if not bounded_wait(lambda: any(j.job_id == job_id and j.status == "STARTING"
                                    for j in d.call(protocol.JobsQueue(all_users=True))), 30, 0.05):
        raise RuntimeError("the holding job did not start")


def submit_serial(d: BenchDaemon, count: int) -> dict:
    ms = []
    me = threading.get_native_id()
    with d.connect() as c:
        c.call(protocol.ApiInfo())          # connection warmed
        daemon0, client0 = schedstat(d.pid), schedstat(os.getpid())
        t0 = time.perf_counter()
        for _ in range(count):
            s = time.perf_counter()
            msgs = list(c.submit(protocol.JobsLaunch(task=LIGHT), wait=False))
            ms.append((time.perf_counter() - s) * 1000)
            if not isinstance(msgs[-1], protocol.Accepted):
                raise RuntimeError(f"not accepted: {msgs[-1]!r}")
        elapsed = time.perf_counter() - t0
        daemon1, client1 = schedstat(d.pid), schedstat(os.getpid())
    xs = sorted(ms)
    return {"count": count, "elapsed_s": elapsed, "per_s": count / elapsed,
            "p50_ms": percentile(xs, 50), "p90_ms": percentile(xs, 90),
            "p99_ms": percentile(xs, 99), "max_ms": xs[-1], "latencies_ms": ms,
            "daemon_sched": sched_delta(daemon0, daemon1, d.pid, count),
            "client_sched": sched_delta({me: client0.get(me, (0, 0))}, {me: client1[me]}, me, count)}


def as_person(person: Any, fn: Any) -> Any:
    """fn() in a child process that became `person` (uid, gid, groups): its JSON result;
    with no person, fn() here."""
    if person is None:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                       # the child: never returns
        code = 1
        try:
            os.close(r)
            privilege.drop_to(person.uid, person.gid)
            with os.fdopen(w, "w") as out:
                json.dump(fn(), out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise RuntimeError(f"the measurement as {person.name} failed (wait status {status})")
    return json.loads(text)


def one(root: Path, variant: str, count: int, hogs: int, person: Any = None) -> dict:
    work, queued = variant.removesuffix("-queued"), variant.endswith("-queued")
    load_before = os.getloadavg()
    # queued: one launch at a time, held by a job whose setup sleeps: every submission is
    # stored and answered, none starts.
    args = ["--jobs-parallelism", "1"] if queued else []
    if work in ("nice", "nice0"):
        args += ["--work-cpu", "nice"]
    elif work == "background":
        args += ["--work-cpu", "background"]
    if person is not None:
        from tests import users
        args += ["--socket-group", users.GROUP]
    d = AcceptDaemon(root, f"{variant}{count}", nice_zero=work == "nice0", args=args)
    d.start()
    try:
        res: dict[str, Any] = {"variant": variant, "work": work, "queued": queued,
                               "load_before": load_before, "daemon_nice": nice_of(d.pid),
                               "user": person.name if person is not None else "root"}
        as_person(person, lambda: warm_up(d))
        if work != "none":
            res["hogs"] = start_hogs(d, hogs)
        if queued:
            hold(d)
        time.sleep(SETTLE_S)
        res.update(as_person(person, lambda: submit_serial(d, count)))
        res["load_after"] = os.getloadavg()
        return res
    finally:
        d.stop(signal.SIGTERM)
        kill_leftovers(root, d.sessions)


# ---- report -------------------------------------------------------------------------------

def fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(runs: list[dict], hogs: int) -> str:
    rows = []
    for r in runs:
        ds, cs = r["daemon_sched"], r["client_sched"]
        nices = sorted({(h.get("nice"), h.get("autogroup")) for h in r.get("hogs", {}).get("nice", [])})
        rows.append([WORK[r["work"]] + (f" ({hogs})" if "hogs" in r else ""),
                     "queued" if r["queued"] else "started", str(r["count"]),
                     fmt(r["p50_ms"]), fmt(r["p90_ms"]), fmt(r["p99_ms"]),
                     fmt(r["max_ms"]), f"{r['per_s']:.0f}",
                     f"{fmt(ds['main_run_ms'])} / {fmt(ds['main_wait_ms'])}", fmt(ds["all_wait_ms"]),
                     f"{fmt(cs['main_run_ms'])} / {fmt(cs['main_wait_ms'])}",
                     ", ".join(f"{n}/{a}" for n, a in nices) or "—",
                     f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}"])
    return markdown(["work running", "submitted jobs", "submissions", "p50 ms", "p90 ms", "p99 ms", "max ms",
                     "accepted/s", "daemon loop: CPU / waiting for a CPU, ms per acceptance",
                     "all daemon threads waiting for a CPU",
                     "client: CPU / waiting", "jobs' nice / autogroup nice", "load avg (1 min)"],
                    rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_acceptance", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hogs", type=int, default=4, help="CPU-bound jobs running (default 4)")
    ap.add_argument("--counts", default="20,200", help="serial submissions per measurement")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "acceptance.json"))
    ap.add_argument("--as-user", action="store_true",
                    help="submit as the test account alice: her jobs start as another user")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_signal)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    counts = [int(c) for c in args.counts.split(",") if c]
    tmp = Path(tempfile.mkdtemp(prefix="skyd-ba-", dir="/tmp"))
    person = None
    if args.as_user:
        if os.geteuid() != 0:
            ap.error("--as-user needs root: the benchmark acts as the test account alice")
        from tests import users
        client, people = users.make_people()
        client.close()
        person = people[0]
        os.chmod(tmp, 0o755)           # her client reaches the daemon's socket
    res: dict[str, Any] = {"hogs": args.hogs, "load_at_start": os.getloadavg(),
                           "machine": machine_info(), "code": code_version(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    try:
        for count in counts:
            for variant in variants:
                r = one(tmp, variant, count, args.hogs, person)
                res["runs"].append(r)
                print(f"[{variant}, {count}] p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                      f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}", flush=True)
    finally:
        kill_leftovers(tmp, set())
        shutil.rmtree(tmp, ignore_errors=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    print(table(res["runs"], args.hogs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
