"""The promises a crash burst (burst.py) checks once the daemon has settled: every
accepted submission present as what it was, each ending as the restart rules say, in its
original order, every task run at most once (exactly once if it succeeded), no managed job
judged lost. Read through the API and, cheaply after each restart, the database itself."""

from __future__ import annotations

import collections
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from skyctl.connection import Connection, ServerError
from skyd import protocol

# The error a non-idempotent request gets when it was running at a crash.
INTERRUPTED = "interrupted by server restart"


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


class Checks:
    """The checks, as a part of Burst (which holds the daemon, what was sent, the tally)."""

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
