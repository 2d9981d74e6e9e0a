"""CPU and memory of a running skyd, by kind of process, sampled over time.

    python -m profiling.sysprof [--pid DAEMON_PID | --socket PATH] [--interval 0.2]
                                [--duration S] [--csv FILE] [--png FILE]

Samples every --interval seconds until Ctrl-C (SIGINT), SIGTERM, --duration, or the daemon
exits; then prints a summary in the shape of SkyPilot's sys_profiling.py (duration;
baseline = the first sample; peaks and delta; memory per long worker and per short
request; averages), writes every sample as CSV (one row per sample and kind) and plots
memory and CPU over time as a PNG (a small built-in PNG writer: no plotting library).

Kinds, from the position in the process tree and the command, never from guessing:

  daemon            the daemon's pid (given, or ServerInfo.pid from ApiInfo on --socket)
  forkserver        the daemon's child whose command line runs multiprocessing.forkserver
  resource_tracker  the daemon's child running multiprocessing.resource_tracker
  long worker       a child of the forkserver that is running a request: its pid is named
                    by "[skyd] running <op> in worker process <pid>" in a request log
                    (<state>/logs/requests/<id>.log, which the daemon writes when it hands
                    the request over), or it has children of its own
  spare worker      a child of the forkserver that is neither: an idle pre-forked spare
  worker child      a descendant of a worker (setup commands, rsync, ssh...)
  job runner        every process of a session whose leader runs
                    <state>/clusters/.../runner.sh (a detached job and its processes,
                    wherever they were reparented)
  other             any other descendant of the daemon

Memory is USS (memory unique to the process, psutil memory_full_info), RSS where USS
cannot be read; "machine" is the whole machine (psutil). CPU is in cores (1.0 = one core
busy), from /proc/<pid>/stat between samples; the machine's CPU is also shown in percent
of all its CPUs, as SkyPilot does.

Memory per short request is an estimate: short requests are coroutines in the daemon, so
it is (daemon peak - daemon baseline) / the peak number of short requests running at
once, as ApiInfo's short_running reports (needs the socket). Most short requests finish
within one turn of the daemon's event loop, so short_running is often 0 at every sample;
then there is no estimate (profiling.calibrate divides by its number of clients instead).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import signal
import statistics
import struct
import sys
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.sizing.hardware import MiB, format_size

DAEMON, FORKSERVER, TRACKER = "daemon", "forkserver", "resource_tracker"
LONG_WORKER, SPARE_WORKER, WORKER_CHILD = "long worker", "spare worker", "worker child"
JOB_RUNNER, OTHER, MACHINE = "job runner", "other", "machine"
KINDS = (DAEMON, FORKSERVER, TRACKER, LONG_WORKER, SPARE_WORKER, WORKER_CHILD, JOB_RUNNER, OTHER)

CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKER_LINE = re.compile(rb"\[skyd\] running \w+ in worker process (\d+)")


# ---- samples ------------------------------------------------------------------------------

@dataclass
class Proc:
    pid: int
    cpu_cores: float
    rss: int
    uss: int | None = None
    pss: int | None = None

    @property
    def mem(self) -> int:
        """USS, or RSS where USS cannot be read."""
        return self.uss if self.uss is not None else self.rss


@dataclass
class Sample:
    t: float                        # seconds since sampling started
    machine_cpu_percent: float      # of all the machine's CPUs (0-100)
    machine_mem_used: int
    machine_mem_percent: float
    procs: dict[str, list[Proc]] = field(default_factory=dict)   # kind -> its processes
    short_running: int | None = None    # ApiInfo, when the socket is known
    long_running: int | None = None
    wall: float = 0.0               # time.time() of the sample

    def mem(self, kind: str) -> int:
        return sum(p.mem for p in self.procs.get(kind, ()))

    def cpu(self, kind: str) -> float:
        return sum(p.cpu_cores for p in self.procs.get(kind, ()))


# ---- the process tree ------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStat:
    ppid: int
    sid: int
    cpu_ticks: int
    start: int          # clock ticks after boot: (pid, start) names one process


def scan_proc() -> dict[int, ProcStat]:
    """Every live process (zombies excluded) from /proc/<pid>/stat."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] in (b"Z", b"X"):
            continue
        out[int(name)] = ProcStat(int(fields[1]), int(fields[3]),
                                  int(fields[11]) + int(fields[12]), int(fields[19]))
    return out


def is_runner(cmdline: list[str], clusters_roots: tuple[str, ...]) -> bool:
    """A job runner: `sh <state>/clusters/<cluster>/.../runner.sh <jobdir>`."""
    return any(arg.endswith("/runner.sh") and arg.startswith(clusters_roots) for arg in cmdline)


def classify(procs: dict[int, ProcStat], daemon_pid: int, cmdline, clusters_roots: tuple[str, ...],
             logged_workers: set[int]) -> dict[int, str]:
    """pid -> kind for the daemon's tree and its job runners (see the module docstring).
    `cmdline(pid)` returns a process's argv (cached by the caller)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, st in procs.items():
        children[st.ppid].append(pid)

    def descendants(pid: int) -> list[int]:
        out, stack = [], list(children[pid])
        while stack and len(out) < 100_000:
            p = stack.pop()
            out.append(p)
            stack.extend(children[p])
        return out

    kinds: dict[int, str] = {}
    sids = {st.sid for st in procs.values()}
    runner_sids = {s for s in sids if s in procs and is_runner(cmdline(s), clusters_roots)}
    for pid, st in procs.items():
        if st.sid in runner_sids:
            kinds[pid] = JOB_RUNNER
    if daemon_pid not in procs:
        return kinds
    kinds[daemon_pid] = DAEMON
    for child in children[daemon_pid]:
        if child in kinds:
            continue
        cmd = " ".join(cmdline(child))
        if "multiprocessing.forkserver" in cmd:
            kinds[child] = FORKSERVER
            for w in children[child]:
                busy = w in logged_workers or bool(children[w])
                kinds.setdefault(w, LONG_WORKER if busy else SPARE_WORKER)
                for d in descendants(w):
                    kinds.setdefault(d, WORKER_CHILD)
            continue
        kinds[child] = TRACKER if "multiprocessing.resource_tracker" in cmd else OTHER
        for d in descendants(child):
            kinds.setdefault(d, OTHER)
    return kinds


class LogIndex:
    """Worker pids named by request logs ("[skyd] running <op> in worker process <pid>").

    Reads a log's head once it has the line; the directory is listed again only when its
    mtime changes (a new request started). Logs older than the daemon are skipped."""

    def __init__(self, logs_dir: Path, since: float):
        self.dir = logs_dir
        self.since = since
        self.pids: set[int] = set()
        self._dir_mtime: int | None = None
        self._seen: set[str] = set()
        self._pending: dict[str, int] = {}     # name -> size when last read without a match

    def refresh(self) -> set[int]:
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except OSError:
            return self.pids
        if mtime != self._dir_mtime:
            self._dir_mtime = mtime
            try:
                entries = list(os.scandir(self.dir))
            except OSError:
                entries = []
            for e in entries:
                if e.name in self._seen or not e.name.endswith(".log"):
                    continue
                self._seen.add(e.name)
                try:
                    if e.stat().st_mtime >= self.since:
                        self._pending[e.name] = -1
                except OSError:
                    pass
        for name, size in list(self._pending.items()):
            path = self.dir / name
            try:
                now = path.stat().st_size
                if now == size:
                    continue
                with open(path, "rb") as f:
                    head = f.read(4096)
                m = WORKER_LINE.search(head)
            except OSError:
                self._pending.pop(name, None)
                continue
            if m:      # all of them: a request re-run after a restart names two
                self.pids.update(int(x) for x in WORKER_LINE.findall(head))
                del self._pending[name]
            elif now >= 4096:
                del self._pending[name]        # the line comes first: it never will
            else:
                self._pending[name] = now
        return self.pids


# ---- sampling --------------------------------------------------------------------------------

def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def state_dir_of(pid: int) -> Path | None:
    """The daemon's state dir from its command line (--state-dir), else its environment."""
    try:
        p = psutil.Process(pid)
        argv = p.cmdline()
    except psutil.Error:
        return None
    for i, a in enumerate(argv):
        if a == "--state-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--state-dir="):
            return Path(a.split("=", 1)[1])
    try:
        env = p.environ()
    except psutil.Error:
        env = {}
    if env.get("SKYD_STATE_DIR"):
        return Path(env["SKYD_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or (str(Path(env["HOME"]) / ".local" / "state")
                                         if env.get("HOME") else None)
    return Path(base) / "skyd" if base else None


class Sampler:
    """Takes Samples of one daemon. `socket`, when given, adds ApiInfo's queue figures."""

    def __init__(self, daemon_pid: int, state_dir: Path | None, socket: str | None = None):
        self.pid = daemon_pid
        self.socket = socket
        roots = []
        if state_dir is not None:
            roots = {str(Path(state_dir) / "clusters") + "/",
                     os.path.realpath(Path(state_dir) / "clusters") + "/"}
        self.clusters_roots = tuple(sorted(roots))
        try:
            since = psutil.Process(daemon_pid).create_time() - 1
        except psutil.Error:
            since = 0.0
        self.logs = LogIndex(Path(state_dir) / "logs" / "requests", since) if state_dir else None
        self.cpus = psutil.cpu_count() or 1
        self.samples: list[Sample] = []
        self.daemon_gone = False
        self.t0 = time.monotonic()
        self._cmdlines: dict[tuple[int, int], list[str]] = {}
        self._psutil: dict[tuple[int, int], psutil.Process] = {}
        self._prev: dict[tuple[int, int], int] = {}
        self._prev_at = 0.0
        self._procs: dict[int, ProcStat] = {}
        self._conn: Connection | None = None
        self._conn_retry_at = 0.0

    # -- helpers

    def _cmdline(self, pid: int) -> list[str]:
        st = self._procs.get(pid)
        key = (pid, st.start if st else 0)
        if key not in self._cmdlines:
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                self._cmdlines[key] = raw.decode(errors="replace").split("\0")[:-1] or []
            except OSError:
                return []
        return self._cmdlines[key]

    def _memory(self, pid: int, start: int) -> tuple[int, int | None, int | None] | None:
        key = (pid, start)
        p = self._psutil.get(key)
        try:
            if p is None:
                p = self._psutil[key] = psutil.Process(pid)
            try:
                m = p.memory_full_info()
                return m.rss, m.uss, getattr(m, "pss", None)
            except psutil.AccessDenied:
                return p.memory_info().rss, None, None
        except psutil.Error:
            return None

    def _api_info(self) -> protocol.ServerInfo | None:
        if not self.socket:
            return None
        now = time.monotonic()
        if self._conn is None and now >= self._conn_retry_at:
            try:
                self._conn = Connection(self.socket, "sysprof", timeout=2.0).connect()
            except (Unreachable, ServerError, OSError):
                self._conn_retry_at = now + 1.0
        if self._conn is None:
            return None
        try:
            return self._conn.call(protocol.ApiInfo())
        except (ServerError, OSError, ConnectionError, ValueError):
            self._conn.close()
            self._conn = None
            self._conn_retry_at = now + 1.0
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- sampling

    def prime(self) -> None:
        """Start the CPU counters: the first sample then covers one interval."""
        psutil.cpu_percent(None)
        self._procs = scan_proc()
        self._prev = {(pid, st.start): st.cpu_ticks for pid, st in self._procs.items()}
        self._prev_at = time.monotonic()
        self.t0 = self._prev_at

    def sample(self) -> Sample | None:
        """One sample; None once the daemon is gone."""
        machine_cpu = psutil.cpu_percent(None)
        vm = psutil.virtual_memory()
        procs = self._procs = scan_proc()
        now, uptime = time.monotonic(), _uptime()
        if self.pid not in procs:
            self.daemon_gone = True
            return None
        logged = self.logs.refresh() if self.logs else set()
        kinds = classify(procs, self.pid, self._cmdline, self.clusters_roots, logged)
        dt = max(now - self._prev_at, 1e-6)
        by_kind: dict[str, list[Proc]] = defaultdict(list)
        current: dict[tuple[int, int], int] = {}
        for pid, kind in kinds.items():
            st = procs[pid]
            key = (pid, st.start)
            current[key] = st.cpu_ticks
            if key in self._prev:
                cores = (st.cpu_ticks - self._prev[key]) / CLK_TCK / dt
            else:       # started since the last sample: its CPU since it started
                age = uptime - st.start / CLK_TCK
                cores = st.cpu_ticks / CLK_TCK / age if age > 0.01 else 0.0
            mem = self._memory(pid, st.start)
            if mem is None:
                continue
            by_kind[kind].append(Proc(pid, max(0.0, cores), *mem))
        self._prev = {(p, st.start): st.cpu_ticks for p, st in procs.items()}
        self._prev_at = now
        for key in [k for k in self._psutil if k not in current]:
            del self._psutil[key]
        for key in [k for k in self._cmdlines if k[0] not in procs]:
            del self._cmdlines[key]
        info = self._api_info()
        s = Sample(t=now - self.t0, machine_cpu_percent=machine_cpu, machine_mem_used=vm.used,
                   machine_mem_percent=vm.percent, procs=dict(by_kind),
                   short_running=info.short_running if info else None,
                   long_running=info.long_running if info else None, wall=time.time())
        self.samples.append(s)
        return s

    def run(self, interval: float, duration: float | None, stop: threading.Event,
            max_samples: int = 10_000_000) -> list[Sample]:
        """Sample until `stop` is set, `duration` has passed or the daemon is gone."""
        self.prime()
        deadline = None if duration is None else self.t0 + duration
        next_at = self.t0 + interval
        while not stop.is_set() and len(self.samples) < max_samples:
            if stop.wait(max(0.0, next_at - time.monotonic())):
                break
            if self.sample() is None:
                break
            next_at += interval
            if next_at < time.monotonic():          # fell behind: do not burst
                next_at = time.monotonic() + interval
            if deadline is not None and time.monotonic() >= deadline - interval / 2:
                break
        return self.samples


# ---- summary ---------------------------------------------------------------------------------

def summarize(samples: list[Sample], cpus: int = 1, duration: float | None = None) -> dict:
    """Baseline (the first sample), peaks, averages, per kind, per long worker and per
    short request (an estimate) from a list of samples."""
    if not samples:
        raise ValueError("no samples")
    first = samples[0]
    n = len(samples)
    if duration is None:
        duration = samples[-1].t - first.t
    daemon = [s.mem(DAEMON) for s in samples]
    peak_used = max(s.machine_mem_used for s in samples)
    out: dict = {
        "samples": n,
        "duration_s": duration,
        "cpus": cpus,
        "baseline": {"cpu_percent": first.machine_cpu_percent, "mem_used": first.machine_mem_used,
                     "mem_percent": first.machine_mem_percent, "daemon_mem": daemon[0]},
        "peak": {"cpu_percent": max(s.machine_cpu_percent for s in samples),
                 "mem_used": peak_used,
                 "mem_percent": max(s.machine_mem_percent for s in samples),
                 "mem_delta": peak_used - first.machine_mem_used,
                 "daemon_mem": max(daemon), "daemon_mem_delta": max(daemon) - daemon[0]},
        "average": {"cpu_percent": statistics.fmean(s.machine_cpu_percent for s in samples),
                    "mem_used": statistics.fmean(s.machine_mem_used for s in samples),
                    "mem_percent": statistics.fmean(s.machine_mem_percent for s in samples)},
        "kinds": {},
    }
    for kind in KINDS:
        present = [s for s in samples if s.procs.get(kind)]
        if not present:
            continue
        out["kinds"][kind] = {
            "peak_processes": max(len(s.procs[kind]) for s in present),
            "peak_mem": max(s.mem(kind) for s in present),
            "avg_mem": statistics.fmean(s.mem(kind) for s in present),
            "peak_cpu_cores": max(s.cpu(kind) for s in present),
            "avg_cpu_cores": statistics.fmean(s.cpu(kind) for s in samples),
            "samples": len(present),
        }
    workers = [p for s in samples for p in s.procs.get(LONG_WORKER, ())]
    out["long_worker"] = None if not workers else {
        "seen": len({p.pid for p in workers}),
        "peak_concurrent": max(len(s.procs.get(LONG_WORKER, ())) for s in samples),
        "peak_mem": max(p.mem for p in workers),
        "avg_mem": statistics.fmean(p.mem for p in workers),
        "uss": all(p.uss is not None for p in workers),
    }
    running = [(s.short_running, s.mem(DAEMON)) for s in samples if s.short_running]
    if running:
        peak_conc = max(r for r, _ in running)
        out["short_request"] = {
            "peak_concurrent": peak_conc,
            "peak_mem_estimate": max(0, max(daemon) - daemon[0]) / peak_conc,
            "avg_mem_estimate": statistics.fmean(max(0, m - daemon[0]) / r for r, m in running),
        }
    else:
        out["short_request"] = None
    out["short_running_known"] = any(s.short_running is not None for s in samples)
    return out


def _pct_cores(percent: float, cpus: int) -> str:
    return f"{percent:.1f}% ({percent / 100 * cpus:.2f} of {cpus} CPUs)"


def render_summary(summ: dict, interval: float | None = None, note: str = "") -> str:
    b, p, a = summ["baseline"], summ["peak"], summ["average"]
    cpus = summ["cpus"]
    bar = "=" * 50
    lines = ["", bar, "MONITORING SUMMARY", bar,
             f"Duration: {summ['duration_s']:.1f} seconds ({summ['duration_s'] / 3600:.2f} hours), "
             f"{summ['samples']} samples" + (f" every {interval:g} s" if interval else "")]
    if note:
        lines.append(note)
    lines += ["", "BASELINE USAGE (first sample):",
              f"Baseline CPU: {_pct_cores(b['cpu_percent'], cpus)}",
              f"Baseline Memory: {format_size(b['mem_used'])} ({b['mem_percent']:.1f}%)",
              f"Baseline daemon memory: {format_size(b['daemon_mem'])}",
              "", "PEAK USAGE:",
              f"Peak CPU: {_pct_cores(p['cpu_percent'], cpus)}",
              f"Peak Memory: {format_size(p['mem_used'])} ({p['mem_percent']:.1f}%)",
              f"Memory Delta: {format_size(p['mem_delta'])}",
              f"Peak daemon memory: {format_size(p['daemon_mem'])} "
              f"(delta {format_size(p['daemon_mem_delta'])})",
              "", "BY KIND OF PROCESS (memory: USS, RSS where unreadable; CPU in cores):",
              f"  {'kind':<17} {'procs':>5} {'peak mem':>10} {'avg mem':>10} {'peak CPU':>8} "
              f"{'avg CPU':>8}"]
    for kind, k in summ["kinds"].items():
        lines.append(f"  {kind:<17} {k['peak_processes']:>5} {format_size(k['peak_mem']):>10} "
                     f"{format_size(round(k['avg_mem'])):>10} {k['peak_cpu_cores']:>8.2f} "
                     f"{k['avg_cpu_cores']:>8.2f}")
    lw = summ["long_worker"]
    lines += ["", "MEMORY PER LONG WORKER (a worker process running a request):"]
    if lw:
        what = "USS" if lw["uss"] else "USS, RSS where unreadable"
        lines += [f"Peak memory per long worker: {format_size(lw['peak_mem'])} ({what})",
                  f"Average memory per long worker: {format_size(round(lw['avg_mem']))}",
                  f"Long workers seen: {lw['seen']}, at most {lw['peak_concurrent']} at once"]
    else:
        lines.append("no long worker was running during the samples")
    sr = summ["short_request"]
    lines += ["", "MEMORY PER SHORT REQUEST (estimate: (daemon peak - daemon baseline) / peak "
                  "concurrent short requests):"]
    if sr:
        lines += [f"Peak concurrent short requests: {sr['peak_concurrent']} (ApiInfo short_running)",
                  f"Peak memory per short request: {format_size(round(sr['peak_mem_estimate']))} "
                  "(estimate)",
                  f"Average memory per short request: {format_size(round(sr['avg_mem_estimate']))} "
                  "(estimate)"]
    elif summ.get("short_running_known"):
        lines.append("ApiInfo short_running was 0 at every sample (each short request finished "
                     "between two samples): no estimate")
    else:
        lines.append("no estimate: the number of short requests running needs the daemon's socket")
    lines += ["", "AVERAGE USAGE:",
              f"Average CPU: {_pct_cores(a['cpu_percent'], cpus)}",
              f"Average Memory: {format_size(round(a['mem_used']))} ({a['mem_percent']:.1f}%)",
              bar]
    return "\n".join(lines)


# ---- CSV -------------------------------------------------------------------------------------

CSV_FIELDS = ["t_s", "time", "kind", "processes", "cpu_cores", "cpu_percent", "mem_bytes",
              "rss_bytes", "uss_bytes", "max_process_mem_bytes", "short_running", "long_running"]


def write_csv(samples: list[Sample], path: Path, cpus: int) -> int:
    """One row per sample per kind present, plus one `machine` row per sample (its
    mem_bytes: memory used). cpu_cores: 1.0 = one core busy; cpu_percent: of all the
    machine's CPUs. mem_bytes: USS summed (RSS where unreadable). Returns rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for s in samples:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(s.wall)) if s.wall else ""
            common = [s.short_running if s.short_running is not None else "",
                      s.long_running if s.long_running is not None else ""]
            w.writerow([f"{s.t:.3f}", stamp, MACHINE, "",
                        f"{s.machine_cpu_percent / 100 * cpus:.3f}", f"{s.machine_cpu_percent:.1f}",
                        s.machine_mem_used, "", "", "", *common])
            rows += 1
            for kind in KINDS:
                ps = s.procs.get(kind)
                if not ps:
                    continue
                uss = [p.uss for p in ps if p.uss is not None]
                w.writerow([f"{s.t:.3f}", stamp, kind, len(ps), f"{s.cpu(kind):.3f}",
                            f"{s.cpu(kind) / cpus * 100:.1f}", s.mem(kind), sum(p.rss for p in ps),
                            sum(uss) if len(uss) == len(ps) else "", max(p.mem for p in ps),
                            *common])
                rows += 1
    return rows


# ---- PNG plot (a tiny writer: an RGB raster, lines, a 5x7 font, zlib) --------------------------

_FONT = {  # 5x7 glyphs, one int per row, leftmost pixel = 16
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14), "D": (28, 18, 17, 17, 17, 18, 28),
    "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14), "J": (7, 2, 2, 2, 2, 18, 12),
    "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 25, 21, 19, 17, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14), "P": (30, 17, 17, 30, 16, 16, 16),
    "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14), "V": (17, 17, 17, 17, 17, 10, 4),
    "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 10, 4, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31), "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14), "9": (14, 17, 17, 15, 1, 2, 12),
    " ": (0,) * 7, ".": (0, 0, 0, 0, 0, 12, 12), ",": (0, 0, 0, 0, 12, 4, 8),
    "-": (0, 0, 0, 31, 0, 0, 0), "_": (0, 0, 0, 0, 0, 0, 31), "(": (2, 4, 8, 8, 8, 4, 2),
    ")": (8, 4, 2, 2, 2, 4, 8), "%": (24, 25, 2, 4, 8, 19, 3), "/": (0, 1, 2, 4, 8, 16, 0),
    ":": (0, 12, 12, 0, 12, 12, 0), "+": (0, 4, 4, 31, 4, 4, 0), "=": (0, 0, 31, 0, 31, 0, 0),
}


class Raster:
    def __init__(self, width: int, height: int, bg=(255, 255, 255)):
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(color)

    def fill(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        for y in range(max(0, y0), min(self.h, y1)):
            for x in range(max(0, x0), min(self.w, x1)):
                self.set(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        for _ in range(dx - dy + 1):                 # Bresenham, bounded
            for k in range(width):
                self.set(x0, y0 + k, color)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, color, scale: int = 1) -> int:
        """Upper-case 5x7 text with its top-left at (x, y); returns the end x."""
        for ch in s.upper():
            rows = _FONT.get(ch, _FONT[" "])
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (16 >> c):
                        self.fill(x + c * scale, y + r * scale, x + (c + 1) * scale,
                                  y + (r + 1) * scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        stride = self.w * 3
        raw = b"".join(b"\x00" + bytes(self.px[y * stride:(y + 1) * stride]) for y in range(self.h))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
        return (b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


_COLORS = {MACHINE: (120, 120, 120), DAEMON: (31, 119, 180), FORKSERVER: (255, 127, 14),
           TRACKER: (148, 103, 189), LONG_WORKER: (214, 39, 40), SPARE_WORKER: (44, 160, 44),
           WORKER_CHILD: (227, 119, 194), JOB_RUNNER: (140, 86, 75), OTHER: (23, 190, 207)}


def _nice_ceiling(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10):   # a quarter of each is a short number
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt_tick(v: float) -> str:
    return f"{v:.3g}"


def _panel(r: Raster, box: tuple[int, int, int, int], title: str, t_max: float,
           series: list[tuple[str, list[tuple[float, float]]]]) -> None:
    x0, y0, x1, y1 = box
    black, grid = (0, 0, 0), (225, 225, 225)
    y_max = _nice_ceiling(max((v for _, pts in series for _, v in pts), default=0.0) * 1.02)
    r.text(x0, y0 - 22, title, black, 2)
    for i in range(5):
        gy = y1 - (y1 - y0) * i // 4
        r.line(x0, gy, x1, gy, grid)
        label = _fmt_tick(y_max * i / 4)
        r.text(x0 - 8 - 6 * len(label), gy - 3, label, black)
        gx = x0 + (x1 - x0) * i // 4
        r.line(gx, y0, gx, y1, grid)
        tl = _fmt_tick(t_max * i / 4)
        r.text(gx - 3 * len(tl), y1 + 6, tl, black)
    r.line(x0, y0, x0, y1, black)
    r.line(x0, y1, x1, y1, black)
    r.text(x1 - 60, y1 + 18, "TIME (S)", black)

    def at(t: float, v: float) -> tuple[int, int]:
        return (x0 + round((x1 - x0) * (t / t_max if t_max > 0 else 0)),
                y1 - round((y1 - y0) * (v / y_max)))
    for name, pts in series:
        color = _COLORS.get(name, (0, 0, 0))
        prev = None
        for t, v in pts:
            cur = at(t, v)
            if prev is None:
                r.set(*cur, color)
            else:
                r.line(*prev, *cur, color, width=2)
            prev = cur


def plot_png(samples: list[Sample], path: Path, cpus: int) -> None:
    """Memory (MiB) and CPU (cores) over time, one line per kind; the machine's memory as
    its change from the first sample."""
    r = Raster(1000, 720)
    kinds = [k for k in KINDS if any(s.procs.get(k) for s in samples)]
    t_max = max((s.t for s in samples), default=1.0) or 1.0
    base_used = samples[0].machine_mem_used if samples else 0
    mem = [(MACHINE, [(s.t, max(0, s.machine_mem_used - base_used) / MiB) for s in samples])]
    mem += [(k, [(s.t, s.mem(k) / MiB) for s in samples]) for k in kinds]
    cpu = [(MACHINE, [(s.t, s.machine_cpu_percent / 100 * cpus) for s in samples])]
    cpu += [(k, [(s.t, s.cpu(k)) for s in samples]) for k in kinds]
    _panel(r, (80, 50, 780, 320), "MEMORY (MIB)", t_max, mem)
    _panel(r, (80, 420, 780, 690), "CPU (CORES)", t_max, cpu)
    y = 60
    for name in [MACHINE, *kinds]:
        r.fill(810, y, 830, y + 8, _COLORS.get(name, (0, 0, 0)))
        label = "machine (mem: change)" if name == MACHINE else name
        r.text(838, y, label, (0, 0, 0))
        y += 18
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(r.png())


# ---- command line ----------------------------------------------------------------------------

def resolve_target(pid: int | None, socket: str | None) -> tuple[int, Path | None, str | None, str]:
    """(daemon pid, state dir, socket or None, how it was found)."""
    if pid is None:
        if socket is None:
            from skyctl.endpoint import resolve
            socket = resolve(None)[0]
        with Connection(str(socket), "sysprof", timeout=5.0).connect() as c:
            info = c.call(protocol.ApiInfo())
        return info.pid, Path(info.state_dir), str(socket), f"ApiInfo on {socket}"
    if not psutil.pid_exists(pid):
        raise ValueError(f"no process {pid}")
    state = state_dir_of(pid)
    if socket is None and state is not None and (state / "skyd.sock").exists():
        try:      # the same daemon's socket, if it answers with this pid: short_running too
            with Connection(str(state / "skyd.sock"), "sysprof", timeout=2.0).connect() as c:
                if c.call(protocol.ApiInfo()).pid == pid:
                    socket = str(state / "skyd.sock")
        except (Unreachable, ServerError, OSError):
            pass
    return pid, state, socket, f"pid {pid}"


class _StopOnSignal:
    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.signal(sig, lambda *_: self.stop.set())
        return self

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.sysprof", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    who = ap.add_mutually_exclusive_group()
    who.add_argument("--pid", type=int, help="the daemon's pid")
    who.add_argument("--socket", help="the daemon's socket (default: as skyctl finds it)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--csv", default=f"bench-results/sysprof-{stamp}.csv", help="samples (CSV)")
    ap.add_argument("--png", default=f"bench-results/sysprof-{stamp}.png", help="plot (PNG)")
    args = ap.parse_args(argv)
    if args.interval <= 0 or (args.duration is not None and args.duration <= 0):
        ap.error("--interval and --duration must be positive")
    socket = args.socket
    if socket and socket.startswith("unix://"):
        socket = socket[len("unix://"):]
    try:
        pid, state_dir, socket, how = resolve_target(args.pid, socket)
    except (Unreachable, ServerError, ValueError, OSError) as e:
        print(f"sysprof: cannot find the daemon: {e}", file=sys.stderr)
        return 4
    sampler = Sampler(pid, state_dir, socket)
    stop = threading.Event()
    print(f"Monitoring skyd pid {pid} ({how}; state dir {state_dir}) every {args.interval:g} s"
          + (f" for {args.duration:g} s" if args.duration else "") + "... (Press Ctrl+C to stop)",
          file=sys.stderr, flush=True)
    with _StopOnSignal(stop):
        try:
            samples = sampler.run(args.interval, args.duration, stop)
        finally:
            sampler.close()
    if not samples:
        print("sysprof: no samples (the daemon exited?)", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - sampler.t0
    note = f"Daemon: pid {pid}, state dir {state_dir}" + (
        " (it exited: sampling stopped)" if sampler.daemon_gone else "")
    print(render_summary(summarize(samples, sampler.cpus, elapsed), args.interval, note))
    rows = write_csv(samples, Path(args.csv), sampler.cpus)
    plot_png(samples, Path(args.png), sampler.cpus)
    print(f"samples: {args.csv} ({rows} rows); plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
