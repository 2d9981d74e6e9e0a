"""Crash bursts: several clients send `--async` requests (launches and execs on shared
clusters, managed jobs, short listings, cancels) while the daemon is stopped under them —
kill -9 at random moments, SIGTERM — and restarted. Then every promise is checked:

- every request a client saw accepted is there after each restart (none lost), and no id
  was handed out twice or names another submission than the one it was given for;
- every request ends as the restart rules say: a launch (idempotent) succeeds, an exec
  succeeds or fails as interrupted, a cancelled one is cancelled;
- waiting requests ran in their original order (on each cluster, jobs are numbered when
  their request starts, so job order must follow acceptance order);
- every task ran at most once, and every one that succeeded ran exactly once: each task
  appends a line to a marker file named after its cluster and job;
- no managed job was judged lost when nothing but the daemon died.

Shared by tests/reliability (CI-sized) and `python -m profiling.soak crash` (10,000 requests).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.taskspec import Task

from profiling.soak.checks import Checks, Sent, Tally

KINDS = ("launch", "exec", "managed", "short", "cancel")
DEFAULT_MIX = {"launch": 3, "exec": 4, "managed": 2, "short": 1, "cancel": 1}
DURABLE = ("launch", "exec", "managed")


class Burst(Checks):
    """`daemon` is a profiling._daemon.DaemonProcess (or the tests' Daemon): start(),
    stop(sig), kill9(), socket, state_dir, proc."""

    def __init__(self, daemon: Any, work_dir: Path, *, clients: int = 4, requests: int = 200,
                 clusters: int = 4, duration: float = 10.0, seed: int | None = None,
                 mix: dict[str, int] | None = None, timeout: float = 15.0):
        self.d = daemon
        self.runs = Path(work_dir) / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.clients = clients
        self.per_client = max(1, requests // clients)
        self.clusters = [f"b{i}" for i in range(clusters)]
        self.gap = duration / self.per_client          # mean pause between one client's sends
        self.seed = random.randrange(1 << 30) if seed is None else seed
        self.mix = dict(mix or DEFAULT_MIX)
        self.timeout = timeout
        self.tally = Tally()
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    # ---- the tasks -----------------------------------------------------------------------

    def _cluster_task(self, rnd: random.Random, setup: bool) -> Task:
        run = (f"echo x >> {self.runs}/$SKYPILOT_CLUSTER_NAME.$SKYPILOT_JOB_ID; "
               f"sleep {rnd.choice(('0', '0.1', '0.3'))}")
        # A launch's setup takes a while, so that requests wait behind it when the daemon dies.
        return Task(setup=f"sleep {rnd.choice(('0.1', '0.3', '0.5'))}" if setup else None, run=run)

    def _managed_task(self, rnd: random.Random) -> Task:
        return Task(run=f"echo x >> {self.runs}/$SKYPILOT_CLUSTER_NAME; "
                        f"sleep {rnd.choice(('0', '0.2', '0.5'))}")

    def prepare(self) -> None:
        """The shared clusters, up before the burst (an exec needs its cluster)."""
        with Connection(str(self.d.socket), "burst", timeout=60).connect() as c:
            for name in self.clusters:
                rid = _accepted(list(c.submit(protocol.Launch(task=Task(run="true"), cluster=name),
                                              wait=False))).request_id
                self._wait_requests([rid], 60)

    # ---- the burst -------------------------------------------------------------------------

    def run(self, stops: list[tuple[float, int]]) -> Tally:
        """Send the burst; at each (seconds after the start, signal) stop the daemon with that
        signal and start it again. Returns the tally so far (see verify())."""
        threads = [threading.Thread(target=self._client, args=(i,), name=f"burst-{i}", daemon=True)
                   for i in range(self.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for at, sig in sorted(stops):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            self._stop_and_start(sig, time.monotonic() - t0)
        for t in threads:
            t.join(self.gap * self.per_client * 3 + 120)
        self._halt.set()
        return self.tally

    def _stop_and_start(self, sig: int, at: float) -> None:
        proc = self.d.proc
        if proc is None or proc.poll() is not None:
            self.tally.crashes += 1
        else:
            try:
                with Connection(str(self.d.socket), "burst-check", timeout=5).connect() as c:
                    info = c.call(protocol.ApiInfo())
                self.tally.waiting_at_stops.append(info.long_pending)
            except (Unreachable, ServerError, OSError):
                self.tally.waiting_at_stops.append(-1)
        if sig == signal.SIGKILL:
            self.d.kill9()
        else:
            self.d.stop(sig)
        self.tally.stops.append(f"{signal.Signals(sig).name}@{at:.2f}s")
        self.d.start()
        self.check_present()

    def _client(self, i: int) -> None:
        rnd = random.Random(f"{self.seed}-{i}")
        kinds, weights = zip(*self.mix.items())
        mine: list[Sent] = []
        conn: Connection | None = None
        for n in range(self.per_client):
            if self._halt.is_set():
                break
            time.sleep(rnd.uniform(0, 2 * self.gap))
            kind = rnd.choices(kinds, weights)[0]
            op, wait, target = self._op(kind, rnd, mine, f"c{i}n{n}")
            if op is None:
                continue
            self._count("submitted")
            try:
                if conn is None:
                    conn = Connection(str(self.d.socket), "burst", timeout=self.timeout).connect()
            except Unreachable:
                self._count("unreachable")
                continue
            except ServerError as e:
                self._refused(e.error.code)
                continue
            try:
                last = list(conn.submit(op, wait))[-1]
            except (ConnectionError, OSError, msgspec.DecodeError):
                conn.close()
                conn = None
                self._count("unknown")
                continue
            with self._lock:
                self._record(kind, op, last, mine, target)
        if conn is not None:
            conn.close()

    def _op(self, kind: str, rnd: random.Random, mine: list[Sent], name: str
            ) -> tuple[protocol.Op | None, bool, Sent | None]:
        if kind == "launch":
            return protocol.Launch(task=self._cluster_task(rnd, True),
                                   cluster=rnd.choice(self.clusters)), False, None
        if kind == "exec":
            return protocol.Exec(task=self._cluster_task(rnd, False),
                                 cluster=rnd.choice(self.clusters)), False, None
        if kind == "managed":
            return protocol.JobsLaunch(task=self._managed_task(rnd), name=name), False, None
        if kind == "short":
            op = rnd.choice((protocol.ApiStatus(), protocol.ClusterStatus(),
                             protocol.JobsQueue(limit=5)))
            return op, False, None
        live = [s for s in mine[-20:] if not s.cancelled]
        if not live:
            return None, False, None
        target = rnd.choice(live)
        if target.kind == "managed":
            assert target.job_id is not None
            return protocol.JobsCancel(job_ids=[target.job_id]), True, target
        return protocol.ApiCancel(request_ids=[target.request_id]), True, target

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.tally, name, getattr(self.tally, name) + 1)

    def _refused(self, code: protocol.ErrorCode) -> None:
        with self._lock:
            self.tally.refused[code.value] += 1

    def _record(self, kind: str, op: protocol.Op, last: Any, mine: list[Sent],
                target: Sent | None) -> None:
        """Note what the daemon answered (under the lock)."""
        t = self.tally
        if isinstance(last, protocol.Error):
            t.refused[last.code.value] += 1
            return
        if kind == "cancel":
            if isinstance(last, protocol.Result) and last.error is None and target is not None:
                ids = last.value or []
                if target.request_id in ids or target.job_id in ids:
                    target.cancelled = True
                    t.cancels_acked += 1
            elif isinstance(last, protocol.Result) and last.error is not None:
                t.refused[last.error.code.value] += 1
            return
        if not isinstance(last, protocol.Accepted):
            t.bad_outcome.append(f"{kind}: answered {type(last).__name__} instead of accepted")
            return
        if kind == "short":
            t.accepted_short += 1
            return
        sent = Sent(kind, last.request_id, op.target_cluster(), last.job_id)
        mine.append(sent)
        self.sent.append(sent)
        t.accepted += 1


def _accepted(msgs: list) -> protocol.Accepted:
    last = msgs[-1]
    if not isinstance(last, protocol.Accepted):
        raise RuntimeError(f"expected accepted, got {last}")
    return last


def stop_schedule(rnd: random.Random, duration: float, kills: int, sigterm: bool = True
                  ) -> list[tuple[float, int]]:
    """`kills` kill -9 moments spread at random over the burst (one per equal slice, so they
    never bunch up), then a SIGTERM in the last slice."""
    n = kills + (1 if sigterm else 0)
    width = duration / (n + 1)
    out: list[tuple[float, int]] = [(width * (k + rnd.uniform(0.6, 1.4)), signal.SIGKILL)
                                    for k in range(kills)]
    if sigterm:
        out.append((width * (kills + rnd.uniform(0.6, 1.2)), signal.SIGTERM))
    return out
