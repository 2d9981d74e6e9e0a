"""Short managed-job requests: `jobs queue`, `jobs cancel`, `jobs logs`. Coroutines in the
loop; unfinished jobs are read from memory (ahead of the store), finished ones from SQLite."""

from __future__ import annotations

from skyd import protocol

from skyd.managed.controller import ACTIVE
from skyd.managed.logs import ManagedJobLog, controller_log
from skyd.server.handlers.clusters import LogStream
from skyd.protocol import (ErrorCode, JobsCancel, JobsLogs, JobsQueue, ManagedJobRecord,
                           SkydError)
from skyd.identity import Caller
from skyd.server.dispatch import handles
from skyd.server.services import Services


MAX_IDS = 10_000


@handles(protocol.JobsQueue)
async def jobs_queue(s: Services, caller: Caller, op: JobsQueue) -> list[ManagedJobRecord]:
    if len(op.job_ids) > MAX_IDS:
        raise SkydError(ErrorCode.BAD_REQUEST, f"at most {MAX_IDS} job ids at once")
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED,
                        "admins only: -u (every user's managed jobs) needs an admin",
                        "list your own with: skyctl jobs queue")
    uid = None if op.all_users else caller.uid
    live = s.jobs.jobs
    if op.skip_finished:
        # Every unfinished job is in memory.
        records = sorted((j.record for j in live.values() if j.record.status in ACTIVE
                          and (uid is None or j.record.uid == uid)
                          and (not op.job_ids or j.record.job_id in op.job_ids)),
                         key=lambda r: r.job_id, reverse=True)
        return records[:op.limit] if op.limit > 0 else records
    stored = await s.store.managed_jobs(uid, op.job_ids, op.limit)
    return [live[r.job_id].record if r.job_id in live else r for r in stored]


async def _record(s: Services, caller: Caller, job_id: int) -> ManagedJobRecord:
    """The caller's managed job (any, for an admin); someone else's answers exactly as
    one that does not exist."""
    job = s.jobs.live(job_id)
    rec: ManagedJobRecord | None
    if job is not None:
        rec = job.record
    else:
        rows = await s.store.managed_jobs(None, [job_id])
        rec = rows[0] if rows else None
    if rec is None or (rec.uid != caller.uid and not caller.admin):
        raise SkydError(ErrorCode.NOT_FOUND, f"no managed job {job_id}",
                        "list them with: skyctl jobs queue")
    return rec


@handles(protocol.JobsCancel)
async def jobs_cancel(s: Services, caller: Caller, op: JobsCancel) -> list[int]:
    if not (op.job_ids or op.all or op.all_users):
        raise SkydError(ErrorCode.BAD_REQUEST, "name the managed jobs to cancel, or pass --all")
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, "only admins may cancel everyone's jobs")
    if op.all or op.all_users:
        ids = [j.record.job_id for j in list(s.jobs.jobs.values())
               if j.record.status in ACTIVE and (op.all_users or j.record.uid == caller.uid)]
    else:
        if len(op.job_ids) > MAX_IDS:
            raise SkydError(ErrorCode.BAD_REQUEST, f"at most {MAX_IDS} job ids at once")
        ids = list(dict.fromkeys(op.job_ids))
        # Check them all before touching any: a bad id changes nothing.
        for job_id in ids:
            rec = await _record(s, caller, job_id)
            if rec.status not in ACTIVE:
                raise SkydError(ErrorCode.CONFLICT,
                                f"managed job {job_id} has already finished ({rec.status})")
    done = []
    for job_id in ids:
        if await s.jobs.cancel(job_id) != "finished":
            done.append(job_id)
    return done


class ManagedLogStream(LogStream):
    """A managed job's output over all its attempts (or its controller log), then its
    record."""

    def __init__(self, s: Services, job_id: int, controller: bool, follow_log: bool,
                 offset: int):
        self.s, self.job_id, self.offset = s, job_id, offset
        self.source = (controller_log(s.jobs, job_id, follow_log) if controller
                       else ManagedJobLog(s.jobs, job_id, follow_log))

    async def final(self) -> ManagedJobRecord:
        job = self.s.jobs.live(self.job_id)
        if job is not None:
            return job.record
        rows = await self.s.store.managed_jobs(None, [self.job_id])
        if not rows:
            raise SkydError(ErrorCode.NOT_FOUND, f"managed job {self.job_id} no longer exists")
        return rows[0]


@handles(protocol.JobsLogs)
async def jobs_logs(s: Services, caller: Caller, op: JobsLogs) -> ManagedLogStream:
    job_id = op.job_id
    if job_id is None:
        mine = await s.store.managed_jobs(caller.uid, limit=1)
        if not mine:
            raise SkydError(ErrorCode.NOT_FOUND, "you have no managed jobs yet",
                            "submit one with: skyctl jobs launch TASK.yaml")
        job_id = mine[0].job_id
    await _record(s, caller, job_id)
    if op.offset < 0:
        raise SkydError(ErrorCode.BAD_REQUEST, "offset must be >= 0")
    return ManagedLogStream(s, job_id, op.controller, op.follow, op.offset)
