"""Sampling one daemon: every interval, each process of its tree (by kind) with its CPU
(in cores, from /proc/<pid>/stat between samples) and memory (USS, RSS where unreadable),
the whole machine's CPU and memory, and ApiInfo's queue figures when the socket is known."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from profiling.sysprof.processes import LogIndex, ProcStat, classify, scan_proc
from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


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
