"""What several of bench_core's figures use: the sizes of a run, a user's environment,
timing a command, the daemon's process tree and memory, submitting a request and finding
its worker, and the rows of the results table."""

from __future__ import annotations

import os
import re
import subprocess
import time

import psutil

from profiling._daemon import BenchDaemon, bounded_wait
from skyd import protocol
from skyd.protocol import Accepted, ApiStatus, Launch, Result

MiB = 1024 * 1024
WORKER_LINE = re.compile(rb"\[skyd\] running \w+ in worker process (\d+)")


class Config:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.cold_invocations = 10 if quick else 30
        self.importtime_reps = 3 if quick else 5
        self.load_warmup = 0.5 if quick else 1.0
        self.load_duration = 2.0 if quick else 5.0
        self.load_levels = [1, 10, 50]
        self.burst_n = 1000 if quick else 5000
        self.burst_n_single = 300 if quick else 1000
        self.latency_samples = 8 if quick else 20
        self.cancel_samples = 4 if quick else 10
        self.mem_launches = 8
        self.big_rows = 100_000
        self.query_reps = 10 if quick else 20
        self.cli_reps = 5 if quick else 10


# ---- processes ----------------------------------------------------------------------------------

def client_env(d: BenchDaemon) -> dict[str, str]:
    """A user's environment: the installed package (no PYTHONPATH), the daemon's socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env.pop("PYTHONPATH", None)
    env["SKYD_HOST"] = f"unix://{d.socket}"
    env["NO_COLOR"] = "1"
    return env


def time_cmd(argv: list[str], env: dict, cwd: str, timeout: float = 30.0,
             check_out: bytes | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{argv} -> {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    if check_out is not None and check_out not in p.stdout:
        raise RuntimeError(f"{argv}: expected {check_out!r} in output, got {p.stdout[:300]!r}")
    return dt


def spares_of(d: BenchDaemon) -> dict[str, list[int]]:
    """The daemon's process tree by kind (zombies excluded)."""
    out: dict[str, list[int]] = {"daemon": [d.pid], "resource_tracker": [], "forkserver": [],
                                 "workers": [], "other": []}
    try:
        kids = psutil.Process(d.pid).children()
    except psutil.Error:
        return out
    for k in kids:
        try:
            if k.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(k.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" in cmd:
            out["resource_tracker"].append(k.pid)
        elif "forkserver" in cmd:
            out["forkserver"].append(k.pid)
            try:
                for w in k.children():
                    if w.status() != psutil.STATUS_ZOMBIE:
                        out["workers"].append(w.pid)
            except psutil.Error:
                pass
        else:
            out["other"].append(k.pid)
    return out


def mem_of(pid: int) -> dict | None:
    try:
        m = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return None
    return {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}


def wait_spares(d: BenchDaemon, n: int = 2, timeout: float = 5.0) -> bool:
    """Idle daemon: exactly the spares under the forkserver, nothing busy."""
    return bool(bounded_wait(lambda: len(spares_of(d)["workers"]) == n and not d_busy(d),
                             timeout, 0.01))


def d_busy(d: BenchDaemon) -> bool:
    info = d.call(protocol.ApiInfo())
    return bool(info.long_running or info.long_pending)


# ---- requests ---------------------------------------------------------------------------------

def launch_wait(d: BenchDaemon, op: Launch, timeout: float = 60.0) -> Result:
    with d.connect(timeout=timeout) as c:
        frames = list(c.submit(op, True))
    res = frames[-1]
    if not isinstance(res, Result) or res.status is not protocol.Status.SUCCEEDED:
        raise RuntimeError(f"launch failed: {frames[-3:]}")
    return res


def submit_async(d: BenchDaemon, op: Launch) -> str:
    frames = d.frames(op, wait=False)
    if not isinstance(frames[-1], Accepted):
        raise RuntimeError(f"not accepted: {frames}")
    return frames[-1].request_id


def request_status(d: BenchDaemon, rid: str) -> protocol.RequestRecord:
    return d.call(ApiStatus(request_ids=[rid]))[0]


def worker_pid_of(d: BenchDaemon, rid: str) -> int | None:
    try:
        m = WORKER_LINE.search(d.request_log(rid).read_bytes())
    except OSError:
        return None
    return int(m.group(1)) if m else None


# ---- the results table --------------------------------------------------------------------------

def fmt(a: dict, unit: str = "", digits: int = 1) -> str:
    if not a or a.get("median") is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(a['median'])}{unit} ({f.format(a['min'])}–{f.format(a['max'])})"


def verdict(a: dict, goal: float, higher_is_better: bool, unit: str, digits: int = 1) -> str:
    if not a or a.get("median") is None:
        return "not measured"
    m = a["median"]
    if higher_is_better:
        return "met" if m >= goal else f"missed by {goal - m:.{digits}f}{unit}"
    return "met" if m <= goal else f"missed by {m - goal:.{digits}f}{unit}"


class Table:
    """The rows of the results table: figure, goal, median (min–max), runs, met?"""

    HEADER = ["figure", "goal", "skyd median (min–max)", "runs", "met?"]

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, name: str, goal: str, a: dict | None, unit: str = "", digits: int = 1,
            goalv: float | None = None, higher: bool = False) -> None:
        """One figure: `a` an agg() dict; with `goalv`, whether its median met that goal."""
        runs = str(a.get("runs", 0)) if a else "0"
        self.rows.append([name, goal, fmt(a, unit, digits), runs,
                          verdict(a, goalv, higher, unit, digits) if goalv is not None else "—"])

    def row(self, *cells: str) -> None:
        self.rows.append(list(cells))
