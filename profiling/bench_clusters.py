"""Cluster benchmarks: launch and exec end to end, on the `local` infra and on an `ssh` host.

    python -m profiling.bench_clusters [--runs N] [--quick] [--out FILE.json] [--only A,B,...]

Starts real sshd servers on loopback addresses (tests/sshd.py's SshHosts: 127.0.0.2-4, a
throw-away login with an empty home) and a real `skyd serve` whose node pools are those
hosts, measures, stops everything it started, prints Markdown tables (each figure: the
median over runs, with min and max) and writes every raw sample to --out (default
bench-results/clusters.json).

  launch  `launch` of a trivial task (workdir of 20 small files, `setup: true`,
          `run: echo hi`) on a new cluster, local and on ONE ssh host: Submit(wait=True) ->
          Result -> the job's first output chunk through JobLogs(follow=True), as
          `skyctl launch` does; each phase timed by the arrival at the client of the lines
          the worker prints. A fresh cluster per sample, `down` (untimed) after it. The ssh
          samples have the ssh ControlMasters warm (a previous launch less than
          ControlPersist=120 s ago), plus one per run with every master closed first.
  exec    `exec` of `run: echo hi` on a warm (UP) cluster: Submit(Exec, wait=True) ->
          Result -> first output chunk; each job finishes before the next exec.
  burst   20 concurrent `--async` launches of 1-node local clusters (distinct names) until
          every job has finished, observed by one follower per launch (ApiLogs, then
          JobLogs); and 3 concurrent launches on the 3-host ssh pool plus a 4th, submitted
          once those 3 are accepted, that must fail with "free host(s)".
  ssh     the cost of one ssh command on this machine: `ssh host true` over a fresh
          connection and over the multiplexed ControlMaster (skyd's own ssh options),
          `bash -s` with a small script and rsync of the workdir over the master.

Only loopback addresses and Unix sockets are used; every loop is bounded in count and in
time. Needs root (the throw-away login) and sshd, ssh, ssh-keygen and rsync.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

from profiling._stats import percentile
from profiling._daemon import BenchDaemon, bounded_wait, kill_leftovers, ours
from profiling._report import agg, code_version, markdown, stop_on_signal
from profiling._report import machine_info as base_machine_info
from skyctl.connection import Connection
from skyd import protocol
from skyd.protocol import (Accepted, ApiLogs, Chunk, ClusterStatus, Down, Error, Exec, JobLogs,
                           Launch, LaunchResult, NodeInfo, Result)
from skyd.taskspec import Resources, Task
from tests.sshd import SshHosts

MARKERS = [("provision", re.compile(rb"Provisioning cluster")),
           ("sync", re.compile(rb"Syncing workdir")),
           ("setup", re.compile(rb"Running setup")),
           ("setup_done", re.compile(rb"Setup done\.")),
           ("job_submitted", re.compile(rb"Job \d+ submitted"))]
# phase name -> (from mark, to mark): consecutive, so they add up to the total
PHASES = [("queue + worker start", "sent", "provision"),
          ("provision", "provision", "sync"),
          ("sync workdir", "sync", "setup"),
          ("setup", "setup", "setup_done"),
          ("submit job", "setup_done", "job_submitted"),
          ("job submitted -> Result", "job_submitted", "result"),
          ("job start (Result -> first output)", "result", "first_output")]
SAMPLE_TIMEOUT = 60.0       # per frame read; a launch here takes well under a second


class Config:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.launch_samples = 2 if quick else 5          # per run and infra (warm)
        self.exec_samples = 4 if quick else 10           # per run and infra
        self.burst_local = 20
        self.ssh_samples = 8 if quick else 20            # per run and ssh command kind
        self.workdir_files = 20


# ---- small helpers ----------------------------------------------------------------------------

def med(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(a: dict, digits: int = 1, unit: str = " ms") -> str:
    if not a or a.get("median") is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(a['median'])}{unit} ({f.format(a['min'])}–{f.format(a['max'])})"




def machine_info() -> dict:
    info = base_machine_info()
    info["ssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    info["rsync"] = (subprocess.run(["rsync", "--version"], capture_output=True, text=True)
                     .stdout.splitlines()[0] if shutil.which("rsync") else "")
    return info


def make_workdir(path: Path, files: int) -> Path:
    """A small workdir: `files` files of 0.5-4 KiB, a few in a subdirectory."""
    (path / "pkg").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = path / "pkg" if i % 4 == 3 else path
        (sub / f"f{i:02d}.py").write_text(f"# file {i}\n" + "x = 1\n" * (80 + 90 * (i % 8)))
    return path


def launch_task(workdir: Path, infra: str) -> Task:
    return Task(name="hi", workdir=str(workdir), setup="true", run="echo hi",
                resources=Resources(infra=infra))


# ---- one request, followed as skyctl does -------------------------------------------------------

class Failed(RuntimeError):
    pass


def follow(d: BenchDaemon, op: protocol.Op, follow_job: bool = True,
           timeout: float = SAMPLE_TIMEOUT) -> dict:
    """Submit `op` with wait=True on one connection; stamp (perf_counter) the Accepted, the
    first arrival of each worker line, the Result; then, like `skyctl launch`, JobLogs
    (follow) of its job on the same connection: its first output chunk and its end."""
    t: dict[str, float] = {}
    buf = bytearray()
    out = {"t": t}
    with Connection(str(d.socket), "bench", timeout=timeout).connect() as c:
        t["sent"] = time.perf_counter()
        result = None
        for msg in c.submit(op, True):
            now = time.perf_counter()
            if isinstance(msg, Accepted):
                t["accepted"] = now
                out["request_id"] = msg.request_id
            elif isinstance(msg, Chunk):
                buf += msg.data
                for name, rx in MARKERS:
                    if name not in t and rx.search(buf):
                        t[name] = now
            elif isinstance(msg, Error):
                raise Failed(f"{type(op).__name__}: {msg.message}")
            elif isinstance(msg, Result):
                t["result"] = now
                result = msg
        if result is None or result.status is not protocol.Status.SUCCEEDED:
            raise Failed(f"{type(op).__name__} did not succeed: {result!r}\n"
                         f"{buf.decode(errors='replace')[-1500:]}")
        lr = msgspec.convert(result.value, LaunchResult)
        out["cluster"], out["job_id"] = lr.cluster, lr.job_id
        out["log"] = buf.decode(errors="replace")
        if follow_job and lr.job_id is not None:
            job_out = bytearray()
            for msg in c.submit(JobLogs(cluster=lr.cluster, job_id=lr.job_id, follow=True)):
                now = time.perf_counter()
                if isinstance(msg, Chunk):
                    t.setdefault("first_output", now)
                    job_out += msg.data
                elif isinstance(msg, Error):
                    raise Failed(f"JobLogs: {msg.message}")
                elif isinstance(msg, Result):
                    t["job_end"] = now
                    out["job_status"] = msgspec.convert(msg.value, protocol.JobRecord).status
            out["output"] = job_out.decode(errors="replace")
            # On ssh the log stream may end (the remote `tail --pid` saw the job exit) before
            # the daemon's watcher has recorded the job's end: the record is then RUNNING.
            if b"hi" not in job_out or out.get("job_status") not in ("SUCCEEDED", "RUNNING"):
                raise Failed(f"job {lr.job_id} on {lr.cluster}: {out.get('job_status')} "
                             f"output {bytes(job_out)!r}")
    out["ms"] = {k: (v - t["sent"]) * 1000 for k, v in t.items()}
    return out


def down(d: BenchDaemon, name: str, timeout: float = 60.0) -> None:
    with Connection(str(d.socket), "bench", timeout=timeout).connect() as c:
        frames = list(c.submit(Down(cluster=name), True))
    last = frames[-1]
    if not isinstance(last, Result) or last.status is not protocol.Status.SUCCEEDED:
        raise Failed(f"down {name}: {last!r}")


def clusters(d: BenchDaemon) -> list[str]:
    with Connection(str(d.socket), "bench", timeout=30).connect() as c:
        return [r.name for r in c.call(ClusterStatus())]


def phases(ms: dict) -> dict:
    out = {}
    for name, a, b in PHASES:
        if a in ms and b in ms:
            out[name] = ms[b] - ms[a]
    if "first_output" in ms:
        out["total (Submit -> first output)"] = ms["first_output"]
    if "job_end" in ms:
        out["job end (skyctl exits)"] = ms["job_end"]
    return out


# ---- ssh ControlMasters -----------------------------------------------------------------------

def control_sockets(d: BenchDaemon) -> list[Path]:
    base = d.state_dir / "ssh"
    return [p for p in base.glob("*/*") if p.is_socket()] if base.exists() else []


def close_masters(d: BenchDaemon) -> int:
    """`ssh -O exit` every ControlMaster of the daemon and its workers; wait until gone."""
    socks = control_sockets(d)
    for s in socks:
        subprocess.run(["ssh", "-o", f"ControlPath={s}", "-O", "exit", "x"],
                       capture_output=True, timeout=10)
    bounded_wait(lambda: not control_sockets(d), 5.0, 0.01)
    return len(socks)


# ---- 1: launch --------------------------------------------------------------------------------

def bench_launch(cfg: Config, d: BenchDaemon, workdir: Path, run: int) -> dict:
    samples: dict[str, list[dict]] = {"local": [], "ssh": [], "ssh_cold": []}
    infra = {"local": "local", "ssh": "ssh/one", "ssh_cold": "ssh/one"}
    order = [k for _ in range(cfg.launch_samples) for k in ("local", "ssh")]
    order.insert(1, "ssh_cold")     # right after a local one: masters closed explicitly anyway
    for i, kind in enumerate(order):
        name = f"l{run}-{kind.replace('_', '')}-{i}"
        masters_before = len(control_sockets(d))
        closed = close_masters(d) if kind == "ssh_cold" else None
        s = follow(d, Launch(task=launch_task(workdir, infra[kind]), cluster=name))
        s["phases_ms"] = phases(s["ms"])
        s["masters_closed"] = closed
        s["masters_before"] = masters_before
        s.pop("log", None)
        samples[kind].append(s)
        down(d, name)
    for kind, ss in samples.items():
        tot = med([s["phases_ms"]["total (Submit -> first output)"] for s in ss])
        print(f"  [launch] run {run + 1} {kind}: Submit -> first output median {tot:.1f} ms; "
              + ", ".join(f"{k} {med([s['phases_ms'].get(k) for s in ss]):.1f}"
                          for k, _, _ in PHASES), flush=True)
    return samples


# ---- 2: exec on a warm cluster ----------------------------------------------------------------

def bench_exec(cfg: Config, d: BenchDaemon, run: int) -> dict:
    warm = {"local": f"wl{run}", "ssh": f"ws{run}"}
    infra = {"local": "local", "ssh": "ssh/one"}
    for kind, name in warm.items():
        task = Task(name="warm", run="echo hi", resources=Resources(infra=infra[kind]))
        follow(d, Launch(task=task, cluster=name))
    samples: dict[str, list[dict]] = {"local": [], "ssh": []}
    for _ in range(cfg.exec_samples):
        for kind, name in warm.items():
            s = follow(d, Exec(task=Task(name="hi", run="echo hi"), cluster=name))
            s.pop("log", None)
            ms = s["ms"]
            s["phases_ms"] = {"Submit -> Result": ms["result"],
                              "Result -> first output": ms["first_output"] - ms["result"],
                              "total (Submit -> first output)": ms["first_output"],
                              "job end": ms["job_end"]}
            samples[kind].append(s)
    for name in warm.values():
        down(d, name)
    for kind, ss in samples.items():
        print(f"  [exec] run {run + 1} {kind}: Submit -> first output median "
              f"{med([s['ms']['first_output'] for s in ss]):.1f} ms (Submit -> Result "
              f"{med([s['ms']['result'] for s in ss]):.1f})", flush=True)
    return samples


# ---- 3: concurrent launches -------------------------------------------------------------------

def async_launch_observed(d: BenchDaemon, op: Launch, t0: float, out: dict) -> None:
    """What a user's `skyctl launch --async` does (Submit wait=False -> Accepted), observed by a
    follower on the same connection: the request's log to its Result, then the job's log to
    its end. Times in ms from the common start `t0`."""
    try:
        with Connection(str(d.socket), "bench", timeout=SAMPLE_TIMEOUT * 2).connect() as c:
            out["sent"] = (time.perf_counter() - t0) * 1000
            frames = list(c.submit(op, False))
            if not isinstance(frames[-1], Accepted):
                raise Failed(f"not accepted: {frames[-1]!r}")
            out["accepted"] = (time.perf_counter() - t0) * 1000
            rid = frames[-1].request_id
            result = None
            for msg in c.submit(ApiLogs(request_id=rid, follow=True)):
                if isinstance(msg, Result):
                    result = msg
                elif isinstance(msg, Error):
                    raise Failed(msg.message)
            out["launch_done"] = (time.perf_counter() - t0) * 1000
            if result is None or result.status is not protocol.Status.SUCCEEDED:
                raise Failed(f"launch failed: {result!r}")
            lr = msgspec.convert(result.value, LaunchResult)
            data = bytearray()
            for msg in c.submit(JobLogs(cluster=lr.cluster, job_id=lr.job_id, follow=True)):
                if isinstance(msg, Chunk):
                    out.setdefault("first_output", (time.perf_counter() - t0) * 1000)
                    data += msg.data
                elif isinstance(msg, Result):
                    out["job_end"] = (time.perf_counter() - t0) * 1000
                    out["job_status"] = msgspec.convert(msg.value, protocol.JobRecord).status
            if b"hi" not in data or out.get("job_status") not in ("SUCCEEDED", "RUNNING"):
                raise Failed(f"job: {out.get('job_status')} {bytes(data)!r}")
    except Exception as e:  # noqa: BLE001 - recorded, checked by the caller
        out["error"] = f"{type(e).__name__}: {e}"


def run_threads(targets: list[Callable[[], None]], timeout: float) -> None:
    threads = [threading.Thread(target=f, daemon=True) for f in targets]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    if any(th.is_alive() for th in threads):
        raise Failed(f"threads still running after {timeout:.0f} s")


def bench_burst_local(cfg: Config, d: BenchDaemon, workdir: Path, run: int) -> dict:
    n = cfg.burst_local
    names = [f"b{run}-{i}" for i in range(n)]
    outs: list[dict] = [{} for _ in names]
    gate = threading.Barrier(n + 1)
    t0_box: list[float] = []

    def one(i: int) -> Callable[[], None]:
        def go() -> None:
            gate.wait(10)
            async_launch_observed(d, Launch(task=launch_task(workdir, "local"), cluster=names[i]),
                                  t0_box[0], outs[i])
        return go

    threads = [threading.Thread(target=one(i), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    t0_box.append(time.perf_counter())
    gate.wait(10)
    deadline = time.monotonic() + 240
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    alive = sum(th.is_alive() for th in threads)
    errors = [o["error"] for o in outs if "error" in o]
    for name in clusters(d):
        down(d, name)
    if alive or errors:
        raise Failed(f"burst: {alive} still running, errors: {errors[:3]}")
    wall = max(o["job_end"] for o in outs)
    res = {"samples": outs, "wall_ms": wall}
    for key in ("accepted", "launch_done", "first_output", "job_end"):
        xs = sorted(o[key] - o["sent"] for o in outs)
        res[key] = {"p50": percentile(xs, 50), "p90": percentile(xs, 90), "max": xs[-1],
                    "min": xs[0]}
    print(f"  [burst] run {run + 1} local x{n}: all jobs finished after {wall:.0f} ms; launch "
          f"Result p50 {res['launch_done']['p50']:.0f} max {res['launch_done']['max']:.0f} ms; "
          f"job end p50 {res['job_end']['p50']:.0f} max {res['job_end']['max']:.0f} ms",
          flush=True)
    return res


def bench_burst_ssh(cfg: Config, d: BenchDaemon, workdir: Path, run: int, cold: bool) -> dict:
    tag = "c" if cold else "w"
    names = [f"p{run}{tag}-{i}" for i in range(3)]
    masters_closed = close_masters(d) if cold else None
    outs: list[dict] = [{} for _ in names]
    fourth: dict = {}
    accepted = threading.Semaphore(0)
    t0 = time.perf_counter()

    def one(i: int) -> Callable[[], None]:
        def go() -> None:
            o = outs[i]
            try:
                with Connection(str(d.socket), "bench", timeout=SAMPLE_TIMEOUT).connect() as c:
                    o["sent"] = (time.perf_counter() - t0) * 1000
                    result = None
                    op = Launch(task=launch_task(workdir, "ssh/p"), cluster=names[i])
                    for msg in c.submit(op, True):
                        if isinstance(msg, Accepted):
                            o["accepted"] = (time.perf_counter() - t0) * 1000
                            accepted.release()
                        elif isinstance(msg, Result):
                            result = msg
                    o["launch_done"] = (time.perf_counter() - t0) * 1000
                    if result is None or result.status is not protocol.Status.SUCCEEDED:
                        raise Failed(f"launch {names[i]}: {result!r}")
                    lr = msgspec.convert(result.value, LaunchResult)
                    for msg in c.submit(JobLogs(cluster=lr.cluster, job_id=lr.job_id)):
                        if isinstance(msg, Chunk):
                            o.setdefault("first_output", (time.perf_counter() - t0) * 1000)
                        elif isinstance(msg, Result):
                            o["job_end"] = (time.perf_counter() - t0) * 1000
                            o["job_status"] = msgspec.convert(msg.value, protocol.JobRecord).status
            except Exception as e:  # noqa: BLE001
                o["error"] = f"{type(e).__name__}: {e}"
                accepted.release()
        return go

    def fourth_launch() -> None:
        for _ in range(3):
            if not accepted.acquire(timeout=30):
                fourth["error"] = "the first three were not accepted within 30 s"
                return
        try:
            with Connection(str(d.socket), "bench", timeout=SAMPLE_TIMEOUT).connect() as c:
                t1 = time.perf_counter()
                fourth["sent"] = (t1 - t0) * 1000
                op = Launch(task=launch_task(workdir, "ssh/p"), cluster=f"p{run}{tag}-x")
                for msg in c.submit(op, True):
                    if isinstance(msg, Accepted):
                        fourth["accepted_ms"] = (time.perf_counter() - t1) * 1000
                    elif isinstance(msg, (Result, Error)):
                        fourth["failed_ms"] = (time.perf_counter() - t1) * 1000
                        err = msg if isinstance(msg, Error) else msg.error
                        fourth["status"] = getattr(msg, "status", "error frame")
                        fourth["message"] = err.message if err is not None else None
        except Exception as e:  # noqa: BLE001
            fourth["error"] = f"{type(e).__name__}: {e}"

    run_threads([one(0), one(1), one(2), fourth_launch], 120)
    left = clusters(d)
    for name in left:
        down(d, name)
    errors = [o["error"] for o in outs + [fourth] if "error" in o]
    if errors:
        raise Failed(f"ssh pool burst: {errors}")
    if "free host(s)" not in (fourth.get("message") or ""):
        raise Failed(f"the 4th launch did not fail with 'free host(s)': {fourth}")
    res = {"samples": outs, "fourth": fourth, "clusters_after": left, "cold": cold,
           "masters_closed": masters_closed,
           "wall_first_output_ms": max(o["first_output"] for o in outs),
           "wall_job_end_ms": max(o["job_end"] for o in outs)}
    for key in ("launch_done", "first_output", "job_end"):
        xs = sorted(o[key] - o["sent"] for o in outs)
        res[key] = {"p50": percentile(xs, 50), "max": xs[-1], "min": xs[0]}
    firsts = ", ".join(f"{o['first_output'] - o['sent']:.0f}" for o in outs)
    how = "masters closed first" if cold else "masters warm"
    print(f"  [burst] run {run + 1} ssh x3 ({how}): first outputs {firsts} ms; "
          f"4th failed after {fourth['failed_ms']:.1f} ms: {fourth['message']!r}; "
          f"clusters left: {left}", flush=True)
    return res


# ---- 4: per-command ssh cost ------------------------------------------------------------------

def bench_ssh_cost(cfg: Config, hosts: SshHosts, control_dir: Path, workdir: Path,
                   known_hosts: str, run: int) -> dict:
    from skyd.infra.ssh import SshInfra
    ssh = SshInfra()
    ssh.configure(str(control_dir), known_hosts)
    h = hosts[0]
    node = NodeInfo(rank=0, ip=h.ip, host=f"{h.user}@{h.ip}:{h.port}", user=h.user, port=h.port,
                    identity_file=str(hosts.identity_file))
    mux = ssh.ssh_options(node)
    fresh = [("ControlMaster=no" if o == "ControlMaster=auto" else
              "ControlPath=none" if o.startswith("ControlPath=") else o) for o in mux]
    target = f"{h.user}@{h.ip}"
    script = "mkdir -p .skyd-bench/sky_workdir && chmod 700 .skyd-bench && nproc\n"
    rsync_e = " ".join(["ssh", *mux])

    def timed(argv: list[str], stdin: bytes | None = None) -> float:
        t = time.perf_counter()
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
        dt = (time.perf_counter() - t) * 1000
        if p.returncode != 0:
            raise Failed(f"{argv[0]} -> {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}")
        return dt

    kinds: dict[str, Callable[[], float]] = {
        "fresh: ssh host true": lambda: timed(["ssh", *fresh, target, "true"]),
        "fresh, KexAlgorithms=curve25519-sha256 (what-if): ssh host true":
            lambda: timed(["ssh", *fresh, "-o", "KexAlgorithms=curve25519-sha256", target, "true"]),
        "mux: ssh host true": lambda: timed(["ssh", *mux, target, "true"]),
        "mux: ssh host 'bash -s' (mkdir + nproc script)":
            lambda: timed(["ssh", *mux, target, "bash -s"], script.encode()),
        "mux: rsync -a of the 20-file workdir (unchanged)":
            lambda: timed(["rsync", "-a", "-e", rsync_e, f"{workdir}/",
                           f"{target}:.skyd-bench/sky_workdir/"]),
        "fresh: rsync -a of the 20-file workdir (unchanged)":
            lambda: timed(["rsync", "-a", "-e", " ".join(["ssh", *fresh]), f"{workdir}/",
                           f"{target}:.skyd-bench/sky_workdir/"]),
    }
    timed(["ssh", *mux, target, "bash -s"], script.encode())     # opens the master (untimed)
    for f in kinds.values():
        f()                                                       # one untimed warm-up each
    raw: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(cfg.ssh_samples):
        for k, f in kinds.items():          # interleaved: drift hits all alike
            raw[k].append(f())
    subprocess.run(["ssh", *mux, "-O", "exit", target], capture_output=True, timeout=10)
    print(f"  [ssh] run {run + 1}: " + "; ".join(f"{k} {statistics.median(v):.1f} ms"
                                                for k, v in raw.items()), flush=True)
    return raw


# ---- tables -----------------------------------------------------------------------------------

def tables(res: dict) -> str:
    out: list[str] = []
    runs = res.get("launch", [])
    if runs:
        kinds = [("local", "local"), ("ssh", "ssh, 1 host, masters warm"),
                 ("ssh_cold", "ssh, 1 host, no master (first use / after 120 s idle)")]
        rows_names = [n for n, _, _ in PHASES] + ["total (Submit -> first output)",
                                                   "job end (skyctl exits)"]
        figs = {}
        for kind, _ in kinds:
            figs[kind] = {r: agg([med([s["phases_ms"].get(r) for s in run[kind]]) for run in runs])
                          for r in rows_names}
        out += ["### launch: Submit -> Result -> first output (ms; median of per-run medians, "
                "min–max of the runs)", "",
                markdown(["phase"] + [label for _, label in kinds],
                         [[r] + [fmt(figs[k][r]) for k, _ in kinds] for r in rows_names])]
        for kind, label in kinds:
            ph = {n: figs[kind][n]["median"] for n, _, _ in PHASES}
            top = max(ph, key=lambda k: ph[k] or 0)
            tot = figs[kind]["total (Submit -> first output)"]["median"]
            out += [f"- dominant ({label}): {top}, {ph[top]:.1f} ms of {tot:.1f} ms "
                    f"({100 * ph[top] / tot:.0f} %)"]
        out += [""]
    runs = res.get("exec", [])
    if runs:
        rows = []
        for kind in ("local", "ssh"):
            for r in ("Submit -> Result", "Result -> first output",
                      "total (Submit -> first output)", "job end"):
                rows.append([kind, r, fmt(agg([med([s["phases_ms"][r] for s in run[kind]])
                                               for run in runs]))])
        out += ["### exec on a warm cluster (ms)", "",
                markdown(["infra", "step", "median (min–max)"], rows), ""]
    runs = res.get("burst_local", [])
    if runs:
        rows = [["all 20 jobs finished (wall, from the first Submit)",
                 fmt(agg([r["wall_ms"] for r in runs]), 0)]]
        for key, label in (("accepted", "Submit -> Accepted"),
                           ("launch_done", "Submit -> launch Result"),
                           ("first_output", "Submit -> job's first output"),
                           ("job_end", "Submit -> job finished")):
            for q in ("p50", "p90", "max"):
                rows.append([f"per launch: {label}, {q}", fmt(agg([r[key][q] for r in runs]), 0)])
        out += ["### 20 concurrent --async launches, local, distinct clusters (ms)", "",
                markdown(["figure", "median (min–max)"], rows), ""]
    variants = [(k, label) for k, label in (("burst_ssh", "masters warm"),
                                             ("burst_ssh_cold", "no master (closed first)"))
                if res.get(k)]
    if variants:
        specs = [("3 launches: last first output (wall)",
                  lambda r: r["wall_first_output_ms"], 0),
                 ("3 launches: per launch Submit -> first output, p50",
                  lambda r: r["first_output"]["p50"], 0),
                 ("3 launches: per launch Submit -> first output, max",
                  lambda r: r["first_output"]["max"], 0),
                 ("3 launches: per launch Submit -> Result, max",
                  lambda r: r["launch_done"]["max"], 0),
                 ("4th launch: Submit -> failed with 'free host(s)'",
                  lambda r: r["fourth"]["failed_ms"], 1)]
        rows = [[name] + [fmt(agg([f(r) for r in res[k]]), dg) for k, _ in variants]
                for name, f, dg in specs]
        out += ["### 3 concurrent launches on the 3-host ssh pool, and a 4th (ms)", "",
                markdown(["figure"] + [label for _, label in variants], rows)]
        out += [f"- the 4th's message: {res[variants[0][0]][0]['fourth']['message']!r}", ""]
    runs = res.get("ssh", [])
    if runs:
        rows = [[k, fmt(agg([statistics.median(run[k]) for run in runs]))] for k in runs[0]]
        out += ["### one ssh command (ms)", "",
                markdown(["command", "median (min–max)"], rows), ""]
    return "\n".join(out)


# ---- main -------------------------------------------------------------------------------------



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.bench_clusters", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs per figure (default 5; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="2 runs and smaller counts")
    ap.add_argument("--out", default="bench-results/clusters.json", help="raw results JSON")
    ap.add_argument("--only", default="launch,exec,burst,ssh",
                    help="which benchmarks, e.g. launch,ssh")
    args = ap.parse_args(argv)
    cfg = Config(args.runs or (2 if args.quick else 5), args.quick)
    only = {s.strip() for s in args.only.split(",")}
    signal.signal(signal.SIGTERM, stop_on_signal)
    if os.geteuid() != 0:
        print("needs root: the ssh hosts log in as a throw-away user", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="skc-", dir="/tmp"))
    ssh_base = Path(tempfile.mkdtemp(prefix="skc-ssh-", dir="/tmp"))
    workdir = make_workdir(root / "workdir", cfg.workdir_files)
    meta: dict[str, Any] = {
        "machine": machine_info(), "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "runs": cfg.runs, "quick": cfg.quick,
        "config": vars(cfg), "root": str(root), "ssh_base": str(ssh_base),
        "code_start": code_version(),
        "workdir_files": sum(1 for p in workdir.rglob("*") if p.is_file()),
        "workdir_bytes": sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())}
    print(f"skyd cluster benchmarks: {cfg.runs} run(s); temp dirs {root} {ssh_base}; "
          f"load average {meta['loadavg_start']}; code {meta['code_start']}", flush=True)
    t_all = time.perf_counter()
    res: dict[str, list] = {k: [] for k in ("launch", "exec", "burst_local", "burst_ssh_cold",
                                            "burst_ssh", "ssh")}
    d: BenchDaemon | None = None
    hosts = SshHosts(ssh_base, count=3)
    try:
        with hosts:
            meta["ssh_user"] = hosts.user
            meta["ssh_home_files"] = sorted(os.listdir(ssh_base / "home")) \
                if (ssh_base / "home").exists() else None
            pools = root / "pools.yaml"
            pools.write_text(hosts.pool_yaml("one", [hosts[0]]) + hosts.pool_yaml("p"))
            d = BenchDaemon(root, "d", ["--node-pools", str(pools),
                                        "--ssh-known-hosts", str(hosts.known_hosts)])
            d.start()
            info = d.call(protocol.ApiInfo())
            meta["long_slots"], meta["short_slots"] = info.long_slots, info.short_slots
            # warm-up (untimed): one launch per infra, so that no sample pays first-use costs
            for kind, infra in (("local", "local"), ("ssh", "ssh/one")):
                follow(d, Launch(task=launch_task(workdir, infra), cluster=f"warm-{kind}"))
                down(d, f"warm-{kind}")
            for r in range(cfg.runs):
                if "launch" in only:
                    res["launch"].append(bench_launch(cfg, d, workdir, r))
                if "exec" in only:
                    res["exec"].append(bench_exec(cfg, d, r))
                if "burst" in only:
                    res["burst_local"].append(bench_burst_local(cfg, d, workdir, r))
                    res["burst_ssh_cold"].append(bench_burst_ssh(cfg, d, workdir, r, True))
                    res["burst_ssh"].append(bench_burst_ssh(cfg, d, workdir, r, False))
                if "ssh" in only:
                    res["ssh"].append(bench_ssh_cost(cfg, hosts, root / "cm", workdir,
                                                     str(hosts.known_hosts), r))
            d.stop()
            kill_leftovers(d.state_dir, d.sessions)
    finally:
        if d is not None:
            try:
                d.stop(timeout=10)
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        sessions = d.sessions if d is not None else set()
        meta["leftovers_killed"] = len(kill_leftovers(root, sessions))
        meta["processes_remaining"] = ours(root, sessions) + ours(ssh_base, set())
        meta["sshd_alive_after"] = [h.ip for h in hosts.hosts if h.alive()]
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ssh_base, ignore_errors=True)
        meta["loadavg_end"] = os.getloadavg()
        meta["elapsed_s"] = time.perf_counter() - t_all
        meta["code_end"] = code_version()
        meta["code_changed_during_run"] = (meta["code_end"]["sources_sha256"]
                                           != meta["code_start"]["sources_sha256"])
    text = tables(res)
    c = meta["code_start"]
    text += (f"\nload average at start {tuple(round(x, 2) for x in meta['loadavg_start'])}, at end "
             f"{tuple(round(x, 2) for x in meta['loadavg_end'])}; {meta['elapsed_s']:.0f} s; "
             f"leftover processes killed at the end: {meta['leftovers_killed']}, remaining: "
             f"{len(meta['processes_remaining'])}; sshd alive after: {meta['sshd_alive_after']}\n"
             f"code: git {c['head']}{' + local changes' if c['dirty'] else ''}, skyd+skyctl "
             f"sources sha256 {c['sources_sha256']}")
    if meta["code_changed_during_run"]:
        text += (f"\nWARNING: skyd/skyctl sources changed during the run ({c['sources_sha256']} -> "
                 f"{meta['code_end']['sources_sha256']}); figures mix versions")
    print(text, flush=True)
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": res, "tables": text}, indent=1,
                              default=str))
    print(f"raw results: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
