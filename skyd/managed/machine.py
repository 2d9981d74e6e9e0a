"""The managed-job state machine: one coroutine per job that has left PENDING, driving it
on from its persisted state.

    PENDING -> STARTING -> RUNNING -> SUCCEEDED | FAILED | FAILED_SETUP | ...
                  ^            |
                  +--------- RECOVERING   the cluster or a node was lost, or the task
                                          failed with restarts on errors left
    any unfinished -> CANCELLING -> CANCELLED

Each step persists (journal.py) before it acts. The blocking parts (provisioning, setup,
teardown) are ordinary long requests submitted on the owner's behalf, each holding one of
the controller's launch slots (admission.py), its id stored in the same commit as the
job's pointer to it, so that a restart finds it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from typing import Any, Callable

import msgspec

from skyd import protocol
from skyd.clusters.service import Clusters
from skyd.identity import caller_for
from skyd.managed.admission import Admission
from skyd.managed.job import ACTIVE, Job, RequestOutcome, outcome
from skyd.managed.journal import Journal
from skyd.protocol import ErrorCode, ClusterState, JobStatus, RequestRecord, SkydError, Status
from skyd.protocol import ManagedJobStatus as M
from skyd.requests.scheduler import Scheduler
from skyd.store import Store

log = logging.getLogger("skyd.jobs")
_blob_dec = msgspec.msgpack.Decoder()

LAUNCH_ATTEMPTS = 3           # consecutive failed launches before FAILED_NO_RESOURCE
TEARDOWN_ATTEMPTS = 3         # then the cluster is forgotten, so its hosts are free again
BACKOFF = (2.0, 30.0)         # seconds before a relaunch after a failed launch, doubling


class Verdict(enum.StrEnum):
    """How a running attempt ended, as seen from its cluster."""
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"      # its job was cancelled on its cluster
    FAILED = "failed"            # the task exited non-zero
    LOST = "lost"                # the cluster, a node or the job's processes are gone


class StateMachine:
    def __init__(self, store: Store, scheduler: Scheduler, clusters: Clusters,
                 journal: Journal, admission: Admission, jobs: dict[int, Job],
                 is_admin: Callable[[int], bool], recover_after: float):
        self.store = store
        self.scheduler = scheduler
        self.clusters = clusters
        self.journal = journal
        self.admission = admission
        self.jobs = jobs                  # the controller's: a finished job leaves it
        self.is_admin = is_admin
        self.recover_after = recover_after
        self._steps = {M.STARTING: self._launch, M.RUNNING: self._watch,
                       M.RECOVERING: self._recover, M.CANCELLING: self._cancel}

    def start(self, job: Job, admitted: bool = False) -> None:
        job.driver = asyncio.get_running_loop().create_task(
            self._drive(job, admitted), name=f"managed-job-{job.record.job_id}")

    async def _drive(self, job: Job, admitted: bool) -> None:
        errors = 0
        try:
            if admitted:
                await self.journal.set(job, status=M.STARTING)
            while job.record.status in ACTIVE or job.record.teardown_pending:
                if job.record.status == M.PENDING:
                    return                       # back in the queue (no hosts after all)
                try:
                    if job.record.status in ACTIVE:
                        await self._steps[job.record.status](job)
                    else:
                        await self._teardown(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - a bug must not strand the job
                    errors += 1
                    log.exception("managed job %s: controller error", job.record.job_id)
                    if errors > 3:
                        await self.journal.set(job, status=M.FAILED_CONTROLLER,
                                               teardown_pending=False, ended_at=time.time(),
                                               reason=f"controller error: {e}")
                        return
                    if job.record.status in ACTIVE:
                        await self.journal.set(job, status=M.FAILED_CONTROLLER,
                                               teardown_pending=True, ended_at=time.time(),
                                               reason=f"controller error: {e}")
        finally:
            self.admission.release_slot(job)
            job.driver = None
            if job.record.status not in ACTIVE and not job.record.teardown_pending:
                self.jobs.pop(job.record.job_id, None)
                job.topic.notify()

    def _cluster_exists(self, job: Job) -> bool:
        return job.record.cluster in self.clusters.clusters

    # ---- STARTING ------------------------------------------------------------------------

    async def _launch(self, job: Job) -> None:
        rec = job.record
        await self.admission.take_slot(job)
        if not rec.request_id:
            attempt = rec.attempt + 1
            await self.journal.begin_attempt(job, attempt)
            op = protocol.Launch(task=job.task, cluster=rec.cluster)
            result = await self._run_request(job, op, attempt=attempt)
        else:
            resumed = await self._outcome_of(rec.request_id)        # after a restart
            if resumed is None:                                     # never stored: again
                await self.journal.set(job, request_id="")
                return
            result = resumed
        self.admission.release_slot(job)
        await self.journal.append_request_log(job, job.record.request_id, "launch")
        rec = job.record
        if rec.cancel_requested:
            await self.journal.set(job, status=M.CANCELLING, request_id="")
            return
        if result.status is Status.SUCCEEDED:
            launched = msgspec.convert(_blob_dec.decode(result.value), protocol.LaunchResult)
            now = time.time()
            await self.journal.set(job, status=M.RUNNING, request_id="", teardown_pending=True,
                                   cluster_job_id=launched.job_id or 0, run_started_at=now,
                                   started_at=rec.started_at or now, reason="")
            return
        await self._launch_failed(job, result)

    async def _launch_failed(self, job: Job, result: RequestOutcome) -> None:
        rec = job.record
        err = result.error
        why = err.message if err is not None else f"launch {result.status.value}"
        exists = self._cluster_exists(job)
        if result.status is Status.CANCELLED:
            # Someone cancelled its launch request (skyctl api cancel): the job is cancelled.
            await self.journal.set(job, status=M.CANCELLING, request_id="", cancel_requested=True,
                                   teardown_pending=exists,
                                   reason="its launch request was cancelled")
        elif await self._setup_failed(job):
            await self._user_failure(job, M.FAILED_SETUP, f"setup failed: {why}", None)
        elif err is not None and err.code is ErrorCode.INVALID_TASK:
            await self.journal.finish(job, M.FAILED_PRECHECKS, why, teardown=exists)
        elif err is not None and err.code is ErrorCode.UNAVAILABLE and not exists:
            # The pool's hosts were taken meanwhile: back in the queue, in order.
            await self.journal.set(job, status=M.PENDING, request_id="", reason=why)
            self.admission.requeue(job)
        elif rec.launch_failures + 1 >= LAUNCH_ATTEMPTS:
            await self.journal.finish(job, M.FAILED_NO_RESOURCE,
                                      f"launch failed {LAUNCH_ATTEMPTS} times; last: {why}",
                                      teardown=exists)
        else:
            await self.journal.set(job, status=M.RECOVERING, request_id="",
                                   teardown_pending=exists,
                                   launch_failures=rec.launch_failures + 1,
                                   reason=f"launch failed: {why}")

    async def _setup_failed(self, job: Job) -> bool:
        if not self._cluster_exists(job):
            return False
        rows = await self.store.jobs_of(job.record.cluster, limit=1)
        return bool(rows) and rows[0].status == JobStatus.FAILED_SETUP

    # ---- RUNNING -------------------------------------------------------------------------

    async def _watch(self, job: Job) -> None:
        """Wait for the task to end on its cluster, or for the cluster to be lost."""
        while True:
            job.wake.clear()
            if job.record.cancel_requested:
                await self.journal.set(job, status=M.CANCELLING)
                return
            verdict = await self._verdict(job)
            if verdict is not None:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.wake.wait(), min(5.0, self.recover_after))
        kind, why, code = verdict
        rec = job.record
        await self.journal.save_attempt_log(job, lost=kind is Verdict.LOST)
        if kind is Verdict.SUCCEEDED:
            await self.journal.finish(job, M.SUCCEEDED, "", exit_code=0)
        elif kind is Verdict.CANCELLED:
            await self.journal.finish(job, M.CANCELLED, why)
        elif kind is Verdict.FAILED:
            await self._user_failure(job, M.FAILED, why, code)
        else:
            await self.journal.set(job, status=M.RECOVERING, recoveries=rec.recoveries + 1,
                                   reason=f"recovering: {why}")

    async def _verdict(self, job: Job) -> tuple[Verdict, str, int | None] | None:
        rec = job.record
        entry = self.clusters.clusters.get(rec.cluster)
        if entry is None:
            return Verdict.LOST, "its cluster was torn down outside the jobs controller", None
        live = self.clusters.jobs.get((rec.cluster, rec.cluster_job_id))
        if live is not None:
            if entry.record.status == ClusterState.UNHEALTHY:
                now = time.monotonic()
                job.unhealthy_since = job.unhealthy_since or now
                if now - job.unhealthy_since >= self.recover_after:
                    return Verdict.LOST, entry.record.status_reason or "a node does not answer", None
            else:
                job.unhealthy_since = None
            return None
        stored = await self.store.get_job(rec.cluster, rec.cluster_job_id)
        if stored is None:
            return Verdict.LOST, "its job disappeared from its cluster", None
        cjob = stored[0]
        if cjob.status == JobStatus.SUCCEEDED:
            return Verdict.SUCCEEDED, "", 0
        if cjob.status == JobStatus.CANCELLED:
            return Verdict.CANCELLED, "its job was cancelled on its cluster", None
        if cjob.exit_code is not None:
            return Verdict.FAILED, f"the task exited with status {cjob.exit_code}", cjob.exit_code
        # No exit status: the job's processes were killed from outside, or never started.
        return Verdict.LOST, "the job's processes were killed", None

    async def _user_failure(self, job: Job, status: M, why: str, code: int | None) -> None:
        rec = job.record
        if rec.restarts_on_errors < rec.max_restarts_on_errors:
            n = rec.restarts_on_errors + 1
            await self.journal.set(job, status=M.RECOVERING, restarts_on_errors=n, exit_code=code,
                                   teardown_pending=self._cluster_exists(job),
                                   reason=f"{why}; restarting ({n} of {rec.max_restarts_on_errors})")
        else:
            await self.journal.finish(job, status, why, exit_code=code,
                                      teardown=self._cluster_exists(job))

    # ---- RECOVERING ----------------------------------------------------------------------

    async def _recover(self, job: Job) -> None:
        """Tear the old cluster down, wait out a back-off after failed launches, relaunch."""
        if job.record.teardown_pending or job.record.request_id:
            await self._teardown(job)
        if job.record.cancel_requested:
            await self.journal.finish(job, M.CANCELLED, "cancelled while recovering")
            return
        failures = job.record.launch_failures
        if failures:
            delay = min(BACKOFF[0] * 2 ** (failures - 1), BACKOFF[1])
            job.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.wake.wait(), delay)
            if job.record.cancel_requested:
                await self.journal.finish(job, M.CANCELLED, "cancelled while recovering")
                return
        await self.journal.set(job, status=M.STARTING)

    # ---- CANCELLING ------------------------------------------------------------------------

    async def _cancel(self, job: Job) -> None:
        rec = job.record
        if rec.request_id:
            req = self.scheduler.active(rec.request_id)
            if req is not None:
                await self.scheduler.cancel(req)
                await req.done
            await self.journal.set(job, request_id="")
        live = self.clusters.jobs.get((rec.cluster, rec.cluster_job_id))
        if live is not None and rec.cluster_job_id:
            await self.clusters.queue.cancel(rec.cluster, rec.cluster_job_id)
            await self.journal.save_attempt_log(job, lost=False, wait_end=True)
        await self.journal.finish(job, M.CANCELLED, job.record.reason or "cancelled by its owner",
                                  teardown=self._cluster_exists(job))

    # ---- teardown ------------------------------------------------------------------------

    async def _teardown(self, job: Job) -> None:
        """Down the job's cluster, retrying; if it keeps failing, forget the cluster so that
        its hosts serve others (what may be left on them is said in the controller log)."""
        rec = job.record
        if rec.request_id:                        # a down in flight before a restart
            result = await self._outcome_of(rec.request_id)
            await self.journal.append_request_log(job, rec.request_id, "teardown")
            await self.journal.set(job, request_id="")
            if result is not None and result.status is Status.SUCCEEDED:
                await self.journal.set(job, teardown_pending=False)
                return
        last = ""
        for attempt in range(1, TEARDOWN_ATTEMPTS + 1):
            if not self._cluster_exists(job):
                break
            await self.admission.take_slot(job)
            try:
                result = await self._run_request(job, protocol.Down(cluster=rec.cluster))
            finally:
                self.admission.release_slot(job)
            await self.journal.append_request_log(job, job.record.request_id, "teardown")
            await self.journal.set(job, request_id="")
            if result.status is Status.SUCCEEDED:
                break
            last = result.error.message if result.error else result.status.value
            self.journal.note(job, f"teardown attempt {attempt} failed: {last}")
            if attempt < TEARDOWN_ATTEMPTS:
                await asyncio.sleep(BACKOFF[0] * attempt)
        else:
            if self._cluster_exists(job):
                self.journal.note(job, f"teardown failed {TEARDOWN_ATTEMPTS} times ({last}); the "
                                       "cluster is forgotten so its hosts are free again; files "
                                       "may be left on them")
                await self.clusters.drop_cluster(rec.cluster)
        await self.journal.set(job, teardown_pending=False)

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
        self.journal.note(job, f"{req.record.name} request {req.record.id} submitted")
        job.topic.notify()
        await req.done
        return outcome(req.record.status, req.result)

    async def _outcome_of(self, rid: str) -> RequestOutcome | None:
        """How a request submitted before a restart ended (waiting for it if it runs);
        None: it was never stored."""
        req = self.scheduler.active(rid)
        if req is not None:
            await req.done
            return outcome(req.record.status, req.result)
        row = await self.store.get_request(rid)
        if row is None:
            return None
        rec, blob = row
        return outcome(rec.status, blob)
