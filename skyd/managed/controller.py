"""Managed jobs: state machines persisted in SQLite and driven by the daemon's loop.

A managed job gets its own cluster (managed-N), runs its task there, and has the cluster
torn down at the end, whatever the outcome. The blocking parts (provisioning, setup,
teardown) are ordinary long requests submitted on the owner's behalf, at most
`parallelism` at a time, so people's own requests always find a free slot and a job
waiting for its turn holds no worker and no process: a row and a few hundred bytes.

    PENDING -> STARTING -> RUNNING -> SUCCEEDED | FAILED | FAILED_SETUP | ...
                  ^            |
                  +--------- RECOVERING   the cluster or a node was lost, or the task
                                          failed with restarts on errors left
    any unfinished -> CANCELLING -> CANCELLED

Every step is persisted before it is acted on, and a request the controller waits on is
stored in the same commit as the job's pointer to it, so a daemon restart (even kill -9)
resumes each job where it was: none is lost, none runs twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from skyd import protocol
from skyd.infra.base import handle_dec
from skyd.streams import Topic, follow
from skyd.protocol import (ErrorCode, ManagedJobRecord, MANAGED_FINISHED, Queue, RequestRecord,
                           SkydError, Status)
from skyd.identity import Caller, caller_for
from skyd.requests.scheduler import stored_error
from skyd.requests.slots import FifoSlots
from skyd.clusters.registry import MANAGED_PREFIX, describe_resources
from skyd.taskspec import Task, TaskError, infra_kind, max_restarts_on_errors, normalise, shortfall

if TYPE_CHECKING:
    from skyd.requests.scheduler import Scheduler
    from skyd.clusters.registry import ClusterState
    from skyd.store import Store

log = logging.getLogger("skyd.jobs")
_enc = msgspec.msgpack.Encoder()
_task_dec = msgspec.msgpack.Decoder(Task)
_blob_dec = msgspec.msgpack.Decoder()

ACTIVE = protocol.MANAGED_ACTIVE
LAUNCH_ATTEMPTS = 3           # consecutive failed launches before FAILED_NO_RESOURCE
TEARDOWN_ATTEMPTS = 3         # then the cluster is forgotten, so its hosts are free again
BACKOFF = (2.0, 30.0)         # seconds before a relaunch after a failed launch, doubling
LOG_SAVE_TIMEOUT = 60.0       # fetching an attempt's output before its cluster goes


class Job:
    """A managed job's runtime beside its persisted record."""

    __slots__ = ("record", "task", "wake", "topic", "driver", "holds_slot", "reserved",
                 "unhealthy_since")

    def __init__(self, record: ManagedJobRecord, task: Task):
        self.record = record
        self.task = task
        self.wake = asyncio.Event()      # something about it changed: look again
        self.topic = Topic()             # its followers (jobs logs) wake on every change
        self.driver: asyncio.Task | None = None
        self.holds_slot = False
        self.reserved = 0                # ssh hosts counted as taken while it launches
        self.unhealthy_since: float | None = None

    @property
    def pool(self) -> str | None:
        kind, pool = infra_kind(self.task.resources.infra)
        return pool if kind == "ssh" else None


class RequestOutcome(msgspec.Struct):
    status: Status
    error: protocol.Error | None = None
    value: Any = None


class JobsController:
    def __init__(self, store: "Store", scheduler: "Scheduler", state: "ClusterState",
                 logs_dir: Path, is_admin, parallelism: int, recover_after: float):
        self.store = store
        self.scheduler = scheduler
        self.state = state
        self.logs_dir = logs_dir
        self.is_admin = is_admin
        self.parallelism = max(1, parallelism)
        self.recover_after = recover_after
        self.jobs: dict[int, Job] = {}          # unfinished, or finished with teardown left
        self.pending: dict[int, Job] = {}       # waiting for a launch slot, in job-id order
        self.next_id = 1
        # Launch and down requests it has running at once (FIFO among those waiting).
        self.slots = FifoSlots(self.parallelism)
        self._reserved: collections.Counter[str] = collections.Counter()  # pool -> hosts
        self._admit_soon = False
        self._closing = False
        state.listeners.append(self._cluster_changed)

    # ---- start-up and shutdown ---------------------------------------------------------

    async def load(self) -> None:
        """Read the jobs still to drive (before clusters are reconciled)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.next_id = await self.store.max_managed_job_id() + 1
        for record, task in await self.store.unfinished_managed_jobs():
            self.jobs[record.job_id] = Job(record, _task_dec.decode(task))

    def resume(self) -> int:
        """Drive every loaded job on from its persisted state (after the scheduler has
        queued its requests again). Returns how many were resumed."""
        for job in self.jobs.values():
            if job.record.status == "PENDING":
                self.pending[job.record.job_id] = job
                continue
            if job.record.status == "STARTING" and job.record.request_id:
                self.slots.take()             # its launch request is queued again
                job.holds_slot = True
            self._start(job)
        self._admit()
        return len(self.jobs)

    async def close(self) -> None:
        self._closing = True
        drivers = [j.driver for j in self.jobs.values() if j.driver is not None]
        for t in drivers:
            t.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)

    # ---- submission -----------------------------------------------------------------------

    async def submit(self, op: protocol.JobsLaunch, caller: Caller
                     ) -> tuple[RequestRecord, ManagedJobRecord, int]:
        """Validate, store the job and its request in one commit, queue it."""
        if not self.scheduler.accepting:
            raise SkydError(ErrorCode.UNAVAILABLE, "the server is shutting down",
                            "retry in a few seconds")
        try:
            task = op.task if op.name is None else msgspec.structs.replace(op.task, name=op.name)
            task = normalise(task)
        except TaskError as e:
            raise SkydError(ErrorCode.INVALID_TASK, f"invalid task: {e}") from None
        if task.run is None:
            raise SkydError(ErrorCode.INVALID_TASK, "invalid task: a managed job needs `run`")
        kind, pool = infra_kind(task.resources.infra)
        if kind == "ssh":
            self.state.pool(pool, task.num_nodes)      # unknown or too small: refused now
        else:
            why = shortfall(task, self.state.host.cpus, self.state.host.memory_bytes)
            if why:
                raise SkydError(ErrorCode.INVALID_TASK, f"a local node (this host) {why}")
        now = time.time()
        job_id, self.next_id = self.next_id, self.next_id + 1
        rid = str(uuid.uuid4())
        record = ManagedJobRecord(
            job_id=job_id, name=task.name or "-", status="PENDING", user=caller.user,
            uid=caller.uid, submitted_at=now, infra="local" if kind == "local" else f"ssh/{pool}",
            resources=describe_resources(task), cluster=f"{MANAGED_PREFIX}{job_id}",
            max_restarts_on_errors=max_restarts_on_errors(task), submit_request=rid)
        request = RequestRecord(id=rid, name="jobs_launch", queue=Queue.JOBS,
                                status=Status.SUCCEEDED, user=caller.user, uid=caller.uid,
                                created_at=now, cluster=record.cluster, started_at=now,
                                finished_at=now)
        op = msgspec.structs.replace(op, task=task)
        await asyncio.gather(self.store.add_finished_request(request, _enc.encode(op),
                                                             _enc.encode(record)),
                             self.store.add_managed_job(record, _enc.encode(task)))
        job = Job(record, task)
        self.jobs[job_id] = job
        self.pending[job_id] = job
        self._note(job, f"submitted by {caller.user} (request {rid})")
        self.scheduler.counters["jobs_accepted"] += 1
        self._admit()
        # Started at once: nothing ahead; still queued: every job queued before it.
        return request, record, len(self.pending) - 1 if job_id in self.pending else 0

    # ---- slots: how many launch/down requests the controller has at once -------------------

    def _admit(self) -> None:
        """Start pending jobs in order while there are slots (teardowns and relaunches
        waiting for one go first) and their ssh pool has free hosts."""
        self._admit_soon = False
        if self.slots.waiting or self._closing:
            return
        free: dict[str, int] = {}
        for job in list(self.pending.values()):
            if self.slots.in_use >= self.slots.size:
                return
            pool = job.pool
            if pool is not None:
                if pool not in free:
                    free[pool] = self.state.free_hosts(pool) - self._reserved[pool]
                if free[pool] < job.task.num_nodes:
                    continue        # waits for hosts; jobs elsewhere go on
                free[pool] -= job.task.num_nodes
                job.reserved = job.task.num_nodes
                self._reserved[pool] += job.reserved
            del self.pending[job.record.job_id]
            self.slots.take()
            job.holds_slot = True
            self._start(job, admitted=True)

    def _admit_later(self) -> None:
        if not self._admit_soon:
            self._admit_soon = True
            asyncio.get_running_loop().call_soon(self._admit)

    async def _take_slot(self, job: Job) -> None:
        if job.holds_slot:
            return
        await self.slots.acquire()
        job.holds_slot = True

    def _release_slot(self, job: Job) -> None:
        if job.reserved:
            self._reserved[job.pool or ""] -= job.reserved
            job.reserved = 0
        if not job.holds_slot:
            return
        job.holds_slot = False
        self.slots.release()              # passed to the first waiter, if any
        self._admit()

    # ---- events ----------------------------------------------------------------------------

    def _cluster_changed(self, cluster: str) -> None:
        if cluster.startswith(MANAGED_PREFIX):
            job = self.jobs.get(_job_id_of(cluster))
            if job is not None:
                job.wake.set()
        if self.pending:
            self._admit_later()         # a cluster went away: its hosts may be free

    # ---- the driver: one coroutine per job that has left PENDING ---------------------------

    def _start(self, job: Job, admitted: bool = False) -> None:
        job.driver = asyncio.get_running_loop().create_task(
            self._drive(job, admitted), name=f"managed-job-{job.record.job_id}")

    async def _drive(self, job: Job, admitted: bool) -> None:
        steps = {"STARTING": self._launch, "RUNNING": self._watch,
                 "RECOVERING": self._recover, "CANCELLING": self._cancel}
        errors = 0
        try:
            if admitted:
                await self._set(job, status="STARTING")
            while job.record.status in ACTIVE or job.record.teardown_pending:
                if job.record.status == "PENDING":
                    return                       # back in the queue (no hosts after all)
                try:
                    if job.record.status in ACTIVE:
                        await steps[job.record.status](job)
                    else:
                        await self._teardown(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - a bug must not strand the job
                    errors += 1
                    log.exception("managed job %s: controller error", job.record.job_id)
                    if errors > 3:
                        await self._set(job, status="FAILED_CONTROLLER", teardown_pending=False,
                                        reason=f"controller error: {e}", ended_at=time.time())
                        return
                    if job.record.status in ACTIVE:
                        await self._set(job, status="FAILED_CONTROLLER", teardown_pending=True,
                                        reason=f"controller error: {e}", ended_at=time.time())
        finally:
            self._release_slot(job)
            job.driver = None
            if job.record.status not in ACTIVE and not job.record.teardown_pending:
                self.jobs.pop(job.record.job_id, None)
                job.topic.notify()

    # ---- STARTING ------------------------------------------------------------------------

    async def _launch(self, job: Job) -> None:
        rec = job.record
        await self._take_slot(job)
        if not rec.request_id:
            attempt = rec.attempt + 1
            await self._begin_attempt(job, attempt)
            op = protocol.Launch(task=job.task, cluster=rec.cluster)
            outcome = await self._run_request(job, op, attempt=attempt)
        else:
            resumed = await self._outcome_of(job, rec.request_id)   # after a restart
            if resumed is None:                                     # never stored: again
                await self._set(job, request_id="")
                return
            outcome = resumed
        self._release_slot(job)
        await self._append_request_log(job, job.record.request_id, "launch")
        rec = job.record
        if rec.cancel_requested:
            await self._set(job, status="CANCELLING", request_id="")
            return
        if outcome.status is Status.SUCCEEDED:
            launched = msgspec.convert(_blob_dec.decode(outcome.value), protocol.LaunchResult)
            now = time.time()
            await self._set(job, status="RUNNING", request_id="", teardown_pending=True,
                            cluster_job_id=launched.job_id or 0, run_started_at=now,
                            started_at=rec.started_at or now, reason="")
            return
        await self._launch_failed(job, outcome)

    async def _launch_failed(self, job: Job, outcome: RequestOutcome) -> None:
        rec = job.record
        err = outcome.error
        why = err.message if err is not None else f"launch {outcome.status.value}"
        exists = rec.cluster in self.state.clusters
        if outcome.status is Status.CANCELLED:
            # Someone cancelled its launch request (skyctl api cancel): the job is cancelled.
            await self._set(job, status="CANCELLING", request_id="", cancel_requested=True,
                            teardown_pending=exists, reason="its launch request was cancelled")
        elif await self._setup_failed(job):
            await self._user_failure(job, "FAILED_SETUP", f"setup failed: {why}", None)
        elif err is not None and err.code is ErrorCode.INVALID_TASK:
            await self._finish(job, "FAILED_PRECHECKS", why, teardown=exists)
        elif err is not None and err.code is ErrorCode.UNAVAILABLE and not exists:
            # The pool's hosts were taken meanwhile: back in the queue, in order.
            await self._set(job, status="PENDING", request_id="", reason=why)
            self._requeue(job)
        elif rec.launch_failures + 1 >= LAUNCH_ATTEMPTS:
            await self._finish(job, "FAILED_NO_RESOURCE",
                               f"launch failed {LAUNCH_ATTEMPTS} times; last: {why}",
                               teardown=exists)
        else:
            await self._set(job, status="RECOVERING", request_id="", teardown_pending=exists,
                            launch_failures=rec.launch_failures + 1, reason=f"launch failed: {why}")

    async def _setup_failed(self, job: Job) -> bool:
        if job.record.cluster not in self.state.clusters:
            return False
        rows = await self.store.jobs_of(job.record.cluster, limit=1)
        return bool(rows) and rows[0].status == "FAILED_SETUP"

    def _requeue(self, job: Job) -> None:
        self.pending[job.record.job_id] = job
        self.pending = dict(sorted(self.pending.items()))

    # ---- RUNNING -------------------------------------------------------------------------

    async def _watch(self, job: Job) -> None:
        """Wait for the task to end on its cluster, or for the cluster to be lost."""
        while True:
            job.wake.clear()
            if job.record.cancel_requested:
                await self._set(job, status="CANCELLING")
                return
            verdict = await self._verdict(job)
            if verdict is not None:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.wake.wait(), min(5.0, self.recover_after))
        kind, why, code = verdict
        rec = job.record
        await self._save_attempt_log(job, lost=kind == "lost")
        if kind == "succeeded":
            await self._finish(job, "SUCCEEDED", "", exit_code=0)
        elif kind == "cancelled":
            await self._finish(job, "CANCELLED", why)
        elif kind == "failed":
            await self._user_failure(job, "FAILED", why, code)
        else:
            await self._set(job, status="RECOVERING", recoveries=rec.recoveries + 1,
                            reason=f"recovering: {why}")

    async def _verdict(self, job: Job) -> tuple[str, str, int | None] | None:
        rec = job.record
        entry = self.state.clusters.get(rec.cluster)
        if entry is None:
            return "lost", "its cluster was torn down outside the jobs controller", None
        live = self.state.jobs.get((rec.cluster, rec.cluster_job_id))
        if live is not None:
            if entry.record.status == "UNHEALTHY":
                now = time.monotonic()
                job.unhealthy_since = job.unhealthy_since or now
                if now - job.unhealthy_since >= self.recover_after:
                    return "lost", entry.record.status_reason or "a node does not answer", None
            else:
                job.unhealthy_since = None
            return None
        stored = await self.store.get_job(rec.cluster, rec.cluster_job_id)
        if stored is None:
            return "lost", "its job disappeared from its cluster", None
        cjob = stored[0]
        if cjob.status == "SUCCEEDED":
            return "succeeded", "", 0
        if cjob.status == "CANCELLED":
            return "cancelled", "its job was cancelled on its cluster", None
        if cjob.exit_code is not None:
            return "failed", f"the task exited with status {cjob.exit_code}", cjob.exit_code
        # No exit status: the job's processes were killed from outside, or never started.
        return "lost", "the job's processes were killed", None

    async def _user_failure(self, job: Job, status: str, why: str, code: int | None) -> None:
        rec = job.record
        if rec.restarts_on_errors < rec.max_restarts_on_errors:
            n = rec.restarts_on_errors + 1
            await self._set(job, status="RECOVERING", restarts_on_errors=n, exit_code=code,
                            teardown_pending=rec.cluster in self.state.clusters,
                            reason=f"{why}; restarting ({n} of {rec.max_restarts_on_errors})")
        else:
            await self._finish(job, status, why, exit_code=code,
                               teardown=rec.cluster in self.state.clusters)

    # ---- RECOVERING ----------------------------------------------------------------------

    async def _recover(self, job: Job) -> None:
        """Tear the old cluster down, wait out a back-off after failed launches, relaunch."""
        if job.record.teardown_pending or job.record.request_id:
            await self._teardown(job)
        if job.record.cancel_requested:
            await self._finish(job, "CANCELLED", "cancelled while recovering")
            return
        failures = job.record.launch_failures
        if failures:
            delay = min(BACKOFF[0] * 2 ** (failures - 1), BACKOFF[1])
            job.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.wake.wait(), delay)
            if job.record.cancel_requested:
                await self._finish(job, "CANCELLED", "cancelled while recovering")
                return
        await self._set(job, status="STARTING")

    # ---- CANCELLING ------------------------------------------------------------------------

    async def _cancel(self, job: Job) -> None:
        rec = job.record
        if rec.request_id:
            req = self.scheduler.active(rec.request_id)
            if req is not None:
                await self.scheduler.cancel(req)
                await req.done
            await self._set(job, request_id="")
        live = self.state.jobs.get((rec.cluster, rec.cluster_job_id))
        if live is not None and rec.cluster_job_id:
            await self.state.cancel_job(rec.cluster, rec.cluster_job_id)
            await self._save_attempt_log(job, lost=False, wait_end=True)
        await self._finish(job, "CANCELLED", job.record.reason or "cancelled by its owner",
                           teardown=rec.cluster in self.state.clusters)

    # ---- teardown ------------------------------------------------------------------------

    async def _teardown(self, job: Job) -> None:
        """Down the job's cluster, retrying; if it keeps failing, forget the cluster so that
        its hosts serve others (what may be left on them is said in the controller log)."""
        rec = job.record
        if rec.request_id:                        # a down in flight before a restart
            outcome = await self._outcome_of(job, rec.request_id)
            await self._append_request_log(job, rec.request_id, "teardown")
            await self._set(job, request_id="")
            if outcome is not None and outcome.status is Status.SUCCEEDED:
                await self._set(job, teardown_pending=False)
                return
        last = ""
        for attempt in range(1, TEARDOWN_ATTEMPTS + 1):
            if rec.cluster not in self.state.clusters:
                break
            await self._take_slot(job)
            try:
                outcome = await self._run_request(job, protocol.Down(cluster=rec.cluster))
            finally:
                self._release_slot(job)
            await self._append_request_log(job, job.record.request_id, "teardown")
            await self._set(job, request_id="")
            if outcome.status is Status.SUCCEEDED:
                break
            last = outcome.error.message if outcome.error else outcome.status.value
            self._note(job, f"teardown attempt {attempt} failed: {last}")
            if attempt < TEARDOWN_ATTEMPTS:
                await asyncio.sleep(BACKOFF[0] * attempt)
        else:
            if rec.cluster in self.state.clusters:
                self._note(job, f"teardown failed {TEARDOWN_ATTEMPTS} times ({last}); the "
                                "cluster is forgotten so its hosts are free again; files may "
                                "be left on them")
                await self.state.drop_cluster(rec.cluster)
        await self._set(job, teardown_pending=False)

    # ---- requests on the owner's behalf -------------------------------------------------

    async def _run_request(self, job: Job, op: protocol.Op, attempt: int | None = None
                           ) -> RequestOutcome:
        """Submit a long request as the job's owner, its id stored with the job (one
        commit), and wait for its outcome."""
        while not self.scheduler.accepting:
            await asyncio.Event().wait()          # shutting down: the restart resumes it
        owner = caller_for(job.record.uid, self.is_admin(job.record.uid))
        changes: dict[str, Any] = {}
        if attempt is not None:
            changes["attempt"] = attempt

        def pointer(request: RequestRecord):
            job.record = msgspec.structs.replace(job.record, request_id=request.id, **changes)
            return self.store.save_managed_job(job.record)
        try:
            req, _ = await self.scheduler.submit_long(op, owner, internal=True,
                                                      with_insert=pointer)
        except SkydError as e:
            return RequestOutcome(Status.FAILED, e.to_wire())
        self._note(job, f"{req.record.name} request {req.record.id} submitted")
        job.topic.notify()
        await req.done
        return _outcome(req.record.status, req.result)

    async def _outcome_of(self, job: Job, rid: str) -> RequestOutcome | None:
        req = self.scheduler.active(rid)
        if req is not None:
            await req.done
            return _outcome(req.record.status, req.result)
        row = await self.store.get_request(rid)
        if row is None:
            return None
        rec, blob = row
        return _outcome(rec.status, blob)

    # ---- records, notes and logs ----------------------------------------------------------

    async def _set(self, job: Job, **changes) -> None:
        """Persist a change of the job (memory first, then durable), wake its followers."""
        status = changes.get("status")
        cancelled = changes.get("cancel_requested", job.record.cancel_requested)
        if cancelled and status in ("STARTING", "RUNNING", "RECOVERING", "PENDING"):
            changes["status"] = status = "CANCELLING"
        before = job.record.status
        job.record = msgspec.structs.replace(job.record, **changes)
        await self.store.save_managed_job(job.record)
        if status is not None and status != before:
            reason = f": {job.record.reason}" if job.record.reason else ""
            self._note(job, f"{before} -> {status}{reason}")
        job.topic.notify()

    async def _finish(self, job: Job, status: str, reason: str, exit_code: int | None = None,
                      teardown: bool | None = None) -> None:
        changes: dict[str, Any] = {"status": status, "reason": reason, "request_id": "",
                                   "ended_at": time.time()}
        if exit_code is not None:
            changes["exit_code"] = exit_code
        if teardown is not None:
            changes["teardown_pending"] = teardown
        elif status in MANAGED_FINISHED:
            changes["teardown_pending"] = job.record.cluster in self.state.clusters
        await self._set(job, **changes)

    async def _begin_attempt(self, job: Job, attempt: int) -> None:
        """Mark where this attempt's output starts in the job's log."""
        path = self.log_path(job.record.job_id)
        if attempt > 1:
            why = f" ({job.record.reason})" if job.record.reason else ""
            _append(path, f"[skyd] --- attempt {attempt}{why} ---\n".encode())
        size = path.stat().st_size if path.exists() else 0
        await self._set(job, log_offset=size)

    async def _save_attempt_log(self, job: Job, lost: bool, wait_end: bool = False) -> None:
        """Copy this attempt's output from its cluster to the job's own log (the cluster is
        torn down next). Rewrites from the attempt's start, so a repeat is harmless."""
        rec = job.record
        if not rec.cluster_job_id:
            return
        if wait_end:
            deadline = time.monotonic() + 10.0
            while (rec.cluster, rec.cluster_job_id) in self.state.jobs and \
                    time.monotonic() < deadline:
                job.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(job.wake.wait(), 1.0)
        live = self.state.jobs.get((rec.cluster, rec.cluster_job_id))
        handle = live.handle if live is not None else None
        if handle is None:
            row = await self.store.get_job(rec.cluster, rec.cluster_job_id)
            handle = handle_dec.decode(row[1]) if row and row[1] else None
        if handle is None:
            return
        infra, nodes = self.state.infra_of(rec.cluster)
        path = self.log_path(rec.job_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        got = 0
        try:
            os.ftruncate(fd, rec.log_offset)
            os.lseek(fd, rec.log_offset, os.SEEK_SET)

            async def copy() -> None:
                nonlocal got
                async for data in follow(infra.log_source(handle, nodes, 0, False)):
                    if isinstance(data, bytes):
                        os.write(fd, data)
                        got += len(data)
            try:
                await asyncio.wait_for(copy(), LOG_SAVE_TIMEOUT)
            except (asyncio.TimeoutError, OSError) as e:
                os.write(fd, f"[skyd] (the rest of this attempt's output could not be fetched: "
                             f"{e or 'timed out'})\n".encode())
            if got == 0 and lost:
                os.write(fd, b"[skyd] (no output could be fetched from the lost node)\n")
        finally:
            os.close(fd)
        job.topic.notify()

    async def _append_request_log(self, job: Job, rid: str, what: str) -> None:
        if not rid:
            return
        data = await asyncio.to_thread(_read, self.scheduler.log_path(rid))
        if data:
            _append(self.controller_log_path(job.record.job_id),
                    f"----- {what} request {rid} -----\n".encode() + data)
            job.topic.notify()

    def _note(self, job: Job, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        _append(self.controller_log_path(job.record.job_id),
                f"{stamp} managed job {job.record.job_id}: {text}\n".encode())
        job.topic.notify()

    def log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"{job_id}.log"

    def controller_log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"{job_id}.controller.log"

    # ---- cancel ------------------------------------------------------------------------------

    async def cancel(self, job_id: int) -> str:
        """Cancel one job (visibility and ownership are checked by the caller).
        Returns what happened: 'cancelled', 'cancelling' or 'finished'."""
        job = self.jobs.get(job_id)
        if job is None or job.record.status not in ACTIVE:
            return "finished"
        if job.record.status == "CANCELLING" or job.record.cancel_requested:
            return "cancelling"
        if job_id in self.pending:
            # Only a queued row: it never starts.
            del self.pending[job_id]
            await self._set(job, cancel_requested=True)
            await self._finish(job, "CANCELLED", "cancelled before it started", teardown=False)
            self.jobs.pop(job_id, None)
            job.topic.notify()
            self._admit_later()
            return "cancelled"
        await self._set(job, cancel_requested=True, status="CANCELLING",
                        reason="cancelled by its owner")
        # Its launch may still be a pending request: cancel it now, before it starts (or
        # stop it where it is). A teardown in flight is left to finish.
        if job.record.request_id:
            req = self.scheduler.active(job.record.request_id)
            if req is not None and req.record.name == "launch":
                await self.scheduler.cancel(req)
        job.wake.set()
        return "cancelling"

    # ---- what jobs queue and jobs logs read ---------------------------------------------

    def live(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)


def _job_id_of(cluster: str) -> int:
    try:
        return int(cluster[len(MANAGED_PREFIX):])
    except ValueError:
        return -1


def _outcome(status: Status, result: Any) -> RequestOutcome:
    error = stored_error(status, result)
    return RequestOutcome(status, error, None if error is not None else result)


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
