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

import collections
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.taskspec import Task

# The error a non-idempotent request gets when it was running at a crash.
INTERRUPTED = "interrupted by server restart"
KINDS = ("launch", "exec", "managed", "short", "cancel")
DEFAULT_MIX = {"launch": 3, "exec": 4, "managed": 2, "short": 1, "cancel": 1}
DURABLE = ("launch", "exec", "managed")


@dataclass
class Sent:
    """A submission a client saw accepted."""
    kind: str
    request_id: str
    cluster: str | None = None
    job_id: int | None = None       # a managed job's id
    cancelled: bool = False         # a later cancel of it was acknowledged


@dataclass
class Tally:
    submitted: int = 0
    accepted: int = 0               # durable kinds seen accepted
    accepted_short: int = 0         # short --async: in memory by design, not followed
    cancels_acked: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)  # codes
    unknown: int = 0                # sent, connection lost before an answer
    unreachable: int = 0            # could not connect (the daemon was down)
    unacknowledged: int = 0         # rows no client saw accepted (cut off after the commit)
    interrupted: int = 0            # execs failed as interrupted (the restart rules)
    tasks_run: int = 0              # marker lines: tasks that really ran
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    run_twice: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    bad_outcome: list[str] = field(default_factory=list)
    judged_lost: list[str] = field(default_factory=list)
    cancel_undone: list[str] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    waiting_at_stops: list[int] = field(default_factory=list)   # long requests pending then
    crashes: int = 0                # the daemon died without being stopped by us

    def failures(self) -> dict[str, list[str]]:
        """Every broken promise, by name (empty when all held)."""
        names = ("lost", "duplicated", "run_twice", "not_run", "out_of_order", "bad_outcome",
                 "judged_lost", "cancel_undone", "unsettled")
        found = {n: getattr(self, n) for n in names if getattr(self, n)}
        if self.crashes:
            found["crashes"] = [f"{self.crashes} unexpected daemon exit(s)"]
        return found


class Burst:
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

    # ---- checks ------------------------------------------------------------------------------

    def _connect(self) -> Connection:
        return Connection(str(self.d.socket), "burst-check", timeout=60).connect()

    def _records(self, ids: list[str]) -> dict[str, protocol.RequestRecord | None]:
        """Each request by id (None: the daemon does not know it)."""
        out: dict[str, protocol.RequestRecord | None] = {}
        with self._connect() as c:
            for k in range(0, len(ids), 200):
                batch = ids[k:k + 200]
                try:
                    out.update((r.id, r) for r in c.call(protocol.ApiStatus(request_ids=batch)))
                except ServerError:
                    for rid in batch:          # one of them is missing: which
                        try:
                            out[rid] = c.call(protocol.ApiStatus(request_ids=[rid]))[0]
                        except ServerError:
                            out[rid] = None
        return out

    def check_present(self, recs: dict[str, Any] | None = None) -> None:
        """Every submission seen accepted so far is known to the daemon, as what it was.
        `recs`: the daemon's records by id (the API's); without, the rows of its database
        (cheap enough after every restart of a 10,000-request soak)."""
        with self._lock:
            sent = list(self.sent)
        if recs is None:
            recs = self._rows([s.request_id for s in sent])
        for s in sent:
            rec = recs.get(s.request_id)
            want = "jobs_launch" if s.kind == "managed" else s.kind
            if rec is None:
                _note(self.tally.lost, s.request_id)
            elif rec.name != want or (s.cluster is not None and rec.cluster != s.cluster):
                _note(self.tally.duplicated, f"{s.request_id} was {want} on {s.cluster}, now names "
                                             f"{rec.name} on {rec.cluster}")

    def _wait_requests(self, ids: list[str], timeout: float) -> list[str]:
        """Wait (bounded) for them to finish; those that did not."""
        deadline = time.monotonic() + timeout
        left = list(ids)
        while left and time.monotonic() < deadline:
            recs = self._records(left)
            left = [rid for rid in left if (rec := recs.get(rid)) is not None and not rec.status.finished]
            if left:
                time.sleep(0.2)
        return left

    def settle(self, timeout: float) -> None:
        """Wait (bounded) until every accepted request, managed job and cluster job is done."""
        deadline = time.monotonic() + timeout
        requests = [s.request_id for s in self.sent if s.kind != "managed"]
        left = self._wait_requests(requests, timeout)
        self.tally.unsettled += [f"request {rid} still running" for rid in left]
        while time.monotonic() < deadline:
            with self._connect() as c:
                active = [j for j in c.call(protocol.JobsQueue(all_users=True))
                          if j.status in protocol.MANAGED_ACTIVE or j.teardown_pending]
                busy = [f"{n}.{j.job_id}" for n in self.clusters
                        for j in c.call(protocol.JobQueue(cluster=n, skip_finished=True))]
            if not active and not busy:
                return
            time.sleep(0.2)
        self.tally.unsettled += [f"managed job {j.job_id} {j.status}" for j in active]
        self.tally.unsettled += [f"job {b} not finished" for b in busy]

    def verify(self) -> Tally:
        """Check every promise (after settle()); the tally, with what broke."""
        t = self.tally
        ids = [s.request_id for s in self.sent]
        recs = self._records(ids)
        self.check_present(recs)
        t.duplicated += [f"request id {rid} handed out {n} times"
                         for rid, n in collections.Counter(ids).items() if n > 1]
        job_ids = [s.job_id for s in self.sent if s.kind == "managed"]
        t.duplicated += [f"managed job id {j} handed out {n} times"
                         for j, n in collections.Counter(job_ids).items() if n > 1]
        runs = {p.name: p.read_text().count("x") for p in self.runs.iterdir()}
        t.tasks_run = sum(runs.values())
        t.run_twice += [f"{name} ran {n} times" for name, n in sorted(runs.items()) if n > 1]
        seq = self._seq()
        t.unacknowledged = len(seq) - len(set(ids) & set(seq)) - self._internal_rows()
        with self._connect() as c:
            cluster_jobs = {n: c.call(protocol.JobQueue(cluster=n)) for n in self.clusters}
            managed = {j.job_id: j for j in c.call(protocol.JobsQueue(all_users=True))}
        by_request = {j.request_id: j for jobs in cluster_jobs.values() for j in jobs}
        for s in self.sent:
            rec = recs.get(s.request_id)
            if rec is None:
                continue                        # counted as lost by check_present()
            if s.kind == "managed":
                self._verify_managed(s, managed.get(s.job_id), runs)
            else:
                self._verify_request(s, rec, by_request.get(s.request_id), runs)
        for name, jobs in cluster_jobs.items():
            order = [(j.job_id, seq.get(j.request_id or "", -1), j.request_id) for j in
                     sorted(jobs, key=lambda j: j.job_id)]
            for (a_job, a_seq, _), (b_job, b_seq, b_rid) in zip(order, order[1:]):
                if b_seq < a_seq:
                    t.out_of_order.append(f"{name}: job {b_job} ({b_rid}) started after job "
                                          f"{a_job} though accepted before it")
        return t

    def _verify_request(self, s: Sent, rec: protocol.RequestRecord, job: protocol.JobRecord | None,
                        runs: dict[str, int]) -> None:
        t, st = self.tally, rec.status
        if s.cancelled and st is not protocol.Status.CANCELLED:
            t.cancel_undone.append(f"{s.kind} {s.request_id}: cancel acknowledged, ended {st.value}")
            if st is protocol.Status.SUCCEEDED:
                return
        if st is protocol.Status.FAILED and s.kind == "exec" and rec.error == INTERRUPTED:
            t.interrupted += 1
        elif st is protocol.Status.CANCELLED and s.cancelled:
            pass
        elif st is not protocol.Status.SUCCEEDED:
            t.bad_outcome.append(f"{s.kind} {s.request_id} on {s.cluster}: {st.value} ({rec.error})")
            return
        if st is not protocol.Status.SUCCEEDED:
            return
        marker = f"{s.cluster}.{job.job_id}" if job is not None else None
        if job is None or job.status != "SUCCEEDED":
            t.bad_outcome.append(f"{s.kind} {s.request_id} succeeded but its job is "
                                 f"{job.status if job else 'missing'}")
        elif runs.get(marker or "", 0) == 0:
            t.not_run.append(f"{s.kind} {s.request_id}: job {marker} succeeded without running")

    def _verify_managed(self, s: Sent, job: protocol.ManagedJobRecord | None,
                        runs: dict[str, int]) -> None:
        t = self.tally
        if job is None:
            t.lost.append(f"managed job {s.job_id}")
            return
        if job.submit_request != s.request_id:
            t.duplicated.append(f"managed job {s.job_id} was accepted as {s.request_id}, "
                                f"now belongs to {job.submit_request}")
        if job.recoveries:
            t.judged_lost.append(f"managed job {s.job_id}: {job.reason}")
        n = runs.get(f"managed-{s.job_id}", 0)
        if job.status == "SUCCEEDED":
            if n == 0:
                t.not_run.append(f"managed job {s.job_id} succeeded without running")
        elif job.status == "CANCELLED" and s.cancelled:
            pass
        else:
            if s.cancelled:
                t.cancel_undone.append(f"managed job {s.job_id}: cancel acknowledged, ended {job.status}")
            t.bad_outcome.append(f"managed job {s.job_id}: {job.status} ({job.reason})")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.d.state_dir / 'skyd.db'}?mode=ro", uri=True, timeout=10)

    def _rows(self, ids: list[str]) -> dict[str, StoredRow]:
        """The database's row of each request (name and cluster), by id."""
        out: dict[str, StoredRow] = {}
        with self._db() as db:
            for k in range(0, len(ids), 500):
                batch = ids[k:k + 500]
                marks = ",".join("?" * len(batch))
                for rid, name, cluster in db.execute(
                        f"SELECT id, name, cluster FROM requests WHERE id IN ({marks})", batch):
                    out[rid] = StoredRow(name, cluster)
        return out

    def _seq(self) -> dict[str, int]:
        """Acceptance order: each request's row number (the state directory's database)."""
        with self._db() as db:
            return dict(db.execute("SELECT id, seq FROM requests"))

    def _internal_rows(self) -> int:
        """Rows the daemon made itself: managed jobs' launches and teardowns, the clusters'
        first launches (prepare())."""
        with self._db() as db:
            (n,) = db.execute("SELECT count(*) FROM requests WHERE cluster LIKE 'managed-%' "
                              "AND name != 'jobs_launch'").fetchone()
        return n + len(self.clusters)


class StoredRow(NamedTuple):
    name: str
    cluster: str | None


def _note(found: list[str], what: str) -> None:
    if what not in found:
        found.append(what)


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
