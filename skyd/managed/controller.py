"""Managed jobs: state machines persisted in SQLite and driven by the daemon's loop.

A managed job gets its own cluster (managed-N), runs its task there, and has the cluster
torn down at the end, whatever the outcome. The blocking parts (provisioning, setup,
teardown) are ordinary long requests submitted on the owner's behalf, at most
`parallelism` at a time, so people's own requests always find a free slot and a job
waiting for its turn holds no worker and no process: a row and a few hundred bytes.

The controller takes submissions and cancels; admission.py says which queued jobs start,
machine.py drives each (the state machine), journal.py persists and logs every step.
Every step is persisted before it is acted on, and a request the controller waits on is
stored in the same commit as the job's pointer to it, so a daemon restart (even kill -9)
resumes each job where it was: none is lost, none runs twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import msgspec

from skyd import metrics, protocol
from skyd.clusters.names import MANAGED_PREFIX, describe_resources
from skyd.clusters.service import Clusters
from skyd.identity import Caller
from skyd.managed.admission import Admission, check_task
from skyd.managed.job import ACTIVE, CancelResult, Job, job_id_of
from skyd.managed.journal import Journal
from skyd.managed.machine import StateMachine
from skyd.protocol import (ErrorCode, ManagedJobRecord, ManagedJobStatus, Queue, RequestRecord,
                           SkydError, Status)
from skyd.requests.scheduler import Scheduler
from skyd.store import Store
from skyd.taskspec import Task, infra_name, max_restarts_on_errors

__all__ = ["ACTIVE", "CancelResult", "Job", "JobsController"]

_enc = msgspec.msgpack.Encoder()
_task_dec = msgspec.msgpack.Decoder(Task)


class JobsController:
    def __init__(self, store: Store, scheduler: Scheduler, state: Clusters,
                 logs_dir: Path, is_admin: Callable[[int], bool], parallelism: int,
                 recover_after: float):
        self.store = store
        self.scheduler = scheduler
        self.state = state
        self.logs_dir = logs_dir
        self.jobs: dict[int, Job] = {}          # unfinished, or finished with teardown left
        self.next_id = 1
        self.journal = Journal(store, state, logs_dir, scheduler.log_path)
        self.admission = Admission(state.hosts, parallelism,
                                   lambda job: self.machine.start(job, admitted=True),
                                   state.placements)
        self.machine = StateMachine(store, scheduler, state, self.journal, self.admission,
                                    self.jobs, is_admin, recover_after)
        state.registry.listeners.append(self._cluster_changed)

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
            if job.record.status == ManagedJobStatus.PENDING:
                self.admission.add(job)
                continue
            if job.record.status == ManagedJobStatus.STARTING and job.record.request_id:
                self.admission.resume_slot(job)       # its launch request is queued again
            self.machine.start(job)
        self.admission.admit()
        return len(self.jobs)

    async def close(self) -> None:
        self.admission.closing = True
        drivers = [j.driver for j in self.jobs.values() if j.driver is not None]
        for t in drivers:
            t.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        await self.journal.appender.close()

    # ---- submission -----------------------------------------------------------------------

    async def submit(self, op: protocol.JobsLaunch, caller: Caller,
                     with_insert: Callable[[RequestRecord], Awaitable[object]] | None = None
                     ) -> tuple[RequestRecord, ManagedJobRecord, int]:
        """Validate, store the job and its request in one commit, queue it.
        `with_insert(request)`: writes to commit with them (an idempotency key)."""
        if not self.scheduler.accepting:
            raise SkydError(ErrorCode.UNAVAILABLE, "the server is shutting down",
                            "retry in a few seconds")
        task = check_task(op, self.state.hosts, self.state.host, self.state.placements,
                          caller.uid)
        now = time.time()
        job_id, self.next_id = self.next_id, self.next_id + 1
        rid = str(uuid.uuid4())
        record = ManagedJobRecord(
            job_id=job_id, name=task.name or "-", status=ManagedJobStatus.PENDING,
            user=caller.user, uid=caller.uid, submitted_at=now,
            infra=infra_name(task.resources.infra),
            resources=describe_resources(task), cluster=f"{MANAGED_PREFIX}{job_id}",
            max_restarts_on_errors=max_restarts_on_errors(task), submit_request=rid,
            priority=op.priority)
        request = RequestRecord(id=rid, name="jobs_launch", queue=Queue.JOBS,
                                status=Status.SUCCEEDED, user=caller.user, uid=caller.uid,
                                created_at=now, cluster=record.cluster, started_at=now,
                                finished_at=now)
        op = msgspec.structs.replace(op, task=task)
        await asyncio.gather(self.store.add_finished_request(request, _enc.encode(op),
                                                             _enc.encode(record)),
                             self.store.add_managed_job(record, _enc.encode(task)),
                             *(() if with_insert is None else (with_insert(request),)))
        job = Job(record, task)
        self.jobs[job_id] = job
        self.admission.add(job)
        self.journal.note(job, f"submitted by {caller.user} (request {rid})")
        self.scheduler.counters["jobs_accepted"] += 1
        metrics.request_finished(request)
        metrics.status_changed(record)      # queued
        self.admission.admit()
        # Started at once: nothing ahead; still queued: every job queued before it.
        pending = self.admission.pending
        return request, record, len(pending) - 1 if job_id in pending else 0

    # ---- cancel ------------------------------------------------------------------------------

    async def cancel(self, job_id: int) -> CancelResult:
        """Cancel one job (visibility and ownership are checked by the caller)."""
        job = self.jobs.get(job_id)
        if job is None or job.record.status not in ACTIVE:
            return CancelResult.FINISHED
        if job.record.status == ManagedJobStatus.CANCELLING or job.record.cancel_requested:
            return CancelResult.CANCELLING
        if job_id in self.admission.pending:
            # Only a queued row: it never starts.
            self.admission.forget(job_id)
            await self.journal.set(job, cancel_requested=True)
            await self.journal.finish(job, ManagedJobStatus.CANCELLED,
                                      "cancelled before it started", teardown=False)
            self.jobs.pop(job_id, None)
            job.topic.notify()
            self.admission.admit_later()
            return CancelResult.CANCELLED
        await self.journal.set(job, cancel_requested=True, status=ManagedJobStatus.CANCELLING,
                               reason="cancelled by its owner")
        # Its launch may still be a pending request: cancel it now, before it starts (or
        # stop it where it is). A teardown in flight is left to finish.
        if job.record.request_id:
            req = self.scheduler.active(job.record.request_id)
            if req is not None and req.record.name == "launch":
                await self.scheduler.cancel(req)
        job.wake.set()
        return CancelResult.CANCELLING

    # ---- events ----------------------------------------------------------------------------

    def _cluster_changed(self, cluster: str) -> None:
        if cluster.startswith(MANAGED_PREFIX):
            job = self.jobs.get(job_id_of(cluster))
            if job is not None:
                job.wake.set()
        if self.admission.pending:
            self.admission.admit_later()    # a cluster went away: its hosts may be free

    # ---- what jobs queue and jobs logs read ---------------------------------------------

    def live(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)

    def log_path(self, job_id: int) -> Path:
        return self.journal.log_path(job_id)

    def controller_log_path(self, job_id: int) -> Path:
        return self.journal.controller_log_path(job_id)
