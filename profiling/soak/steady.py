"""Load held: a steady mix of short requests (info, listings), long ones (launches and execs
on a few clusters) and managed jobs for minutes, with latency and memory recorded every
second. Reported: the memory slope (least squares, MiB per minute, after a warm-up) and the
drift of p99 (the last fifth of the run against the first, after the warm-up)."""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from profiling._stats import percentile
from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.taskspec import Task

SHORT_OPS = (protocol.ApiInfo(), protocol.ApiStatus(limit=50), protocol.ClusterStatus(),
             protocol.JobsQueue(skip_finished=True, limit=20))


@dataclass
class Second:
    t: float                      # seconds since the start
    short_n: int
    short_p50_ms: float | None
    short_p99_ms: float | None
    accept_p50_ms: float | None   # long and managed submissions, until "accepted"
    errors: int
    rss_mib: float                # the daemon process
    tree_rss_mib: float           # the daemon and every process under it
    fds: int
    long_pending: int
    long_running: int


@dataclass
class SteadyReport:
    seconds: float
    samples: list[Second] = field(default_factory=list)
    short_total: int = 0
    long_total: int = 0
    managed_total: int = 0
    errors: int = 0
    memory_slope_mib_per_min: float | None = None
    tree_slope_mib_per_min: float | None = None
    p99_first_ms: float | None = None
    p99_last_ms: float | None = None
    p99_drift: float | None = None          # last / first

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Steady:
    def __init__(self, daemon: Any, *, short_rate: float = 40.0, long_rate: float = 1.0,
                 managed_rate: float = 0.3, clusters: int = 4, clients: int = 2, seed: int = 0):
        self.d = daemon
        self.short_rate, self.long_rate, self.managed_rate = short_rate, long_rate, managed_rate
        self.clusters = [f"s{i}" for i in range(clusters)]
        self.clients = clients
        self.rnd = random.Random(seed)
        self._lock = threading.Lock()
        self._short: list[float] = []
        self._accept: list[float] = []
        self._errors = 0
        self._stop = threading.Event()
        self.report = SteadyReport(0.0)

    def prepare(self) -> None:
        with self._connect() as c:
            for name in self.clusters:
                last = list(c.submit(protocol.Launch(task=Task(run="true"), cluster=name)))[-1]
                if not isinstance(last, protocol.Result) or last.status is not protocol.Status.SUCCEEDED:
                    raise RuntimeError(f"could not launch {name}: {last}")

    def _connect(self) -> Connection:
        return Connection(str(self.d.socket), "steady", timeout=60).connect()

    def _paced(self, rate: float, action) -> None:
        """Call action() `rate` times a second (Poisson arrivals) until stopped."""
        if rate <= 0:
            return
        rnd = random.Random(self.rnd.random())
        conn: Connection | None = None
        while not self._stop.is_set():
            self._stop.wait(rnd.expovariate(rate))
            try:
                conn = conn or self._connect()
                action(conn, rnd)
            except (Unreachable, ServerError, OSError, ConnectionError):
                with self._lock:
                    self._errors += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _short_one(self, conn: Connection, rnd: random.Random) -> None:
        t = time.perf_counter()
        conn.call(rnd.choice(SHORT_OPS))
        with self._lock:
            self._short.append(time.perf_counter() - t)
            self.report.short_total += 1

    def _submit(self, conn: Connection, op: protocol.Op) -> None:
        t = time.perf_counter()
        last = list(conn.submit(op, wait=False))[-1]
        if isinstance(last, protocol.Error):
            raise ServerError(last)
        with self._lock:
            self._accept.append(time.perf_counter() - t)

    def _long_one(self, conn: Connection, rnd: random.Random) -> None:
        cluster = rnd.choice(self.clusters)
        task = Task(run=f"sleep {rnd.choice(('0.1', '0.5', '1'))}")
        op = protocol.Exec(task=task, cluster=cluster) if rnd.random() < 0.7 else \
            protocol.Launch(task=Task(setup="true", run=task.run), cluster=cluster)
        self._submit(conn, op)
        with self._lock:
            self.report.long_total += 1

    def _managed_one(self, conn: Connection, rnd: random.Random) -> None:
        self._submit(conn, protocol.JobsLaunch(task=Task(run=f"sleep {rnd.choice(('0.2', '1'))}")))
        with self._lock:
            self.report.managed_total += 1

    def run(self, seconds: float, warmup: float = 60.0, on_second=None) -> SteadyReport:
        threads = [threading.Thread(target=self._paced, args=(self.short_rate / self.clients, self._short_one),
                                    daemon=True) for _ in range(self.clients)]
        threads += [threading.Thread(target=self._paced, args=(self.long_rate, self._long_one), daemon=True),
                    threading.Thread(target=self._paced, args=(self.managed_rate, self._managed_one),
                                     daemon=True)]
        daemon = psutil.Process(self.d.proc.pid)
        t0 = time.monotonic()
        for th in threads:
            th.start()
        try:
            with self._connect() as info_conn:
                next_tick = t0 + 1
                while time.monotonic() - t0 < seconds:
                    time.sleep(max(0.0, next_tick - time.monotonic()))
                    next_tick += 1
                    sample = self._sample(time.monotonic() - t0, daemon, info_conn)
                    self.report.samples.append(sample)
                    if on_second is not None:
                        on_second(sample)
        finally:
            self._stop.set()
            for th in threads:
                th.join(30)
        self.report.seconds = time.monotonic() - t0
        self.report.errors += self._errors
        self._summarize(min(warmup, seconds / 3))
        return self.report

    def _sample(self, t: float, daemon: psutil.Process, conn: Connection) -> Second:
        with self._lock:
            short, self._short = sorted(self._short), []
            accept, self._accept = sorted(self._accept), []
            errors, self._errors = self._errors, 0
            self.report.errors += errors
        info = conn.call(protocol.ApiInfo())
        tree = [daemon, *daemon.children(recursive=True)]
        tree_rss = 0
        for p in tree:
            try:
                tree_rss += p.memory_info().rss
            except psutil.Error:
                pass

        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000, 3)
        return Second(t=round(t, 2), short_n=len(short), short_p50_ms=ms(percentile(short, 50)),
                      short_p99_ms=ms(percentile(short, 99)), accept_p50_ms=ms(percentile(accept, 50)),
                      errors=errors, rss_mib=round(daemon.memory_info().rss / 2**20, 2),
                      tree_rss_mib=round(tree_rss / 2**20, 2), fds=daemon.num_fds(),
                      long_pending=info.long_pending, long_running=info.long_running)

    def _summarize(self, warmup: float) -> None:
        r = self.report
        steady = [s for s in r.samples if s.t >= warmup]
        if len(steady) >= 3:
            r.memory_slope_mib_per_min = slope([s.t for s in steady], [s.rss_mib for s in steady])
            r.tree_slope_mib_per_min = slope([s.t for s in steady], [s.tree_rss_mib for s in steady])
        fifth = max(1, len(steady) // 5)
        first = [s.short_p99_ms for s in steady[:fifth] if s.short_p99_ms is not None]
        last = [s.short_p99_ms for s in steady[-fifth:] if s.short_p99_ms is not None]
        if first and last:
            r.p99_first_ms = round(statistics.median(first), 3)
            r.p99_last_ms = round(statistics.median(last), 3)
            r.p99_drift = round(r.p99_last_ms / r.p99_first_ms, 3) if r.p99_first_ms else None


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (seconds), per minute."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 60, 4)


def write_csv(samples: list[Second], path: Path) -> None:
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(samples[0]).keys()) if samples else ["t"])
        w.writeheader()
        for s in samples:
            w.writerow(asdict(s))
