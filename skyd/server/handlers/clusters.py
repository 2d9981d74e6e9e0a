"""Short cluster requests: `status`, `queue`, `logs`, `cancel`. Coroutines in the loop."""

from __future__ import annotations

import asyncio

from skyd import protocol

from skyd.clusters.joblog import JobLog
from skyd.streams import LogSource
from skyd.protocol import (JOB_FINISHED, Autostop, CancelJobs, ClusterRecord, ClusterStatus, ErrorCode,
                           HostRecord, InfraStatus, JobLogs, JobQueue, JobRecord, JobStatus,
                           SkydError)
from skyd.identity import Caller
from skyd.server.dispatch import handles
from skyd.server.services import Services
from skyd.clusters.ledger import LOCAL
from skyd.infra.gpus import detect_remote



@handles(protocol.ClusterStatus)
async def status(s: Services, caller: Caller, op: ClusterStatus) -> list[ClusterRecord]:
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED,
                        "admins only: -u (every user's clusters) needs an admin",
                        "list your own with: skyctl status")
    # Someone else's cluster answers exactly as a missing one (an admin sees them all).
    entries = {n: e for n, e in s.state.clusters.items()
               if caller.admin or e.record.uid == caller.uid}
    if op.clusters:
        missing = [n for n in op.clusters if n not in entries]
        if missing:
            raise SkydError(ErrorCode.NOT_FOUND, f"cluster {missing[0]!r} does not exist")
        return [entries[n].record for n in op.clusters]
    return [e.record for e in entries.values() if op.all_users or e.record.uid == caller.uid]


@handles(protocol.Autostop)
async def autostop(s: Services, caller: Caller, op: Autostop) -> ClusterRecord:
    if op.idle_minutes < 0 and op.idle_minutes != -1:
        raise SkydError(ErrorCode.BAD_REQUEST, "idle minutes must be >= 0 (or -1 to cancel)")
    return await s.state.autostop.set(op.cluster, caller.uid, caller.admin, op.idle_minutes,
                                      op.down)


async def _jobs(s: Services, cluster: str) -> list[JobRecord]:
    # Memory is ahead of the last commit, but a job may end while the store is read:
    # of the two records, keep the one further along its life.
    live = {jid: j.record for (c, jid), j in s.state.jobs.items() if c == cluster}
    merged = {j.job_id: j for j in await s.store.jobs_of(cluster)}
    for jid, rec in live.items():
        if jid not in merged or _progress(rec) >= _progress(merged[jid]):
            merged[jid] = rec
    return sorted(merged.values(), key=lambda j: j.job_id, reverse=True)


def _progress(job: JobRecord) -> int:
    return 3 if job.status in JOB_FINISHED else \
        {JobStatus.RUNNING: 2, JobStatus.SETTING_UP: 1}.get(job.status, 0)


@handles(protocol.JobQueue)
async def queue(s: Services, caller: Caller, op: JobQueue) -> list[JobRecord]:
    s.state.registry.require(op.cluster, caller.uid, caller.admin)
    jobs = await _jobs(s, op.cluster)
    if op.skip_finished:
        jobs = [j for j in jobs if j.status not in JOB_FINISHED]
    return jobs


@handles(protocol.CancelJobs)
async def cancel(s: Services, caller: Caller, op: CancelJobs) -> list[int]:
    s.state.registry.require(op.cluster, caller.uid, caller.admin)
    if not op.all and not op.job_ids:
        raise SkydError(ErrorCode.BAD_REQUEST, "name the jobs to cancel, or pass --all")
    live = {jid: j for (c, jid), j in s.state.jobs.items() if c == op.cluster}
    ids = sorted(live) if op.all else op.job_ids
    done = []
    for jid in ids:
        job = live.get(jid)
        if job is None:
            if not op.all and not await s.store.get_job(op.cluster, jid):
                raise SkydError(ErrorCode.NOT_FOUND, f"cluster {op.cluster!r} has no job {jid}")
            continue
        if await s.state.queue.cancel(op.cluster, jid):
            done.append(jid)
            continue
        # Not started yet: cancel the request that would start it, before it does.
        req = s.scheduler.active(job.record.request_id or "")
        if req is not None and await s.scheduler.cancel(req):
            done.append(jid)
    return done


FINAL_WAIT = 30.0    # seconds a follower waits for a job's outcome once its log has ended


class LogStream:
    """What a streaming short request returns: a log source that the session follows
    from `offset` (skyd.streams.follow: chunks of log, and progress notices), then a
    final record."""

    source: LogSource
    offset: int = 0

    async def final(self):
        raise NotImplementedError


class JobLogStream(LogStream):
    """A job's log (from when it starts), then the job's final record."""

    def __init__(self, s: Services, cluster: str, job_id: int, follow: bool, offset: int):
        self.s, self.cluster, self.job_id = s, cluster, job_id
        self.follow, self.offset = follow, offset
        self.source = JobLog(s.state, cluster, job_id, follow)

    def _live(self):
        return self.s.state.jobs.get((self.cluster, self.job_id))

    async def final(self) -> JobRecord:
        live = self._live()
        if live is not None and self.follow and live.handle and live.handle.spawned:
            # The log can end (its writer exited) a moment before the job's watcher has
            # recorded how it ended: wait for that, so a follower sees the outcome.
            deadline = asyncio.get_running_loop().time() + FINAL_WAIT
            while live is not None and asyncio.get_running_loop().time() < deadline:
                await live.topic.wait(live.topic.version, 1.0)
                live = self._live()
        if live is not None:
            return live.record
        row = await self.s.store.get_job(self.cluster, self.job_id)
        if row is None:
            raise SkydError(ErrorCode.NOT_FOUND, f"job {self.job_id} no longer exists")
        return row[0]


@handles(protocol.JobLogs)
async def logs(s: Services, caller: Caller, op: JobLogs) -> JobLogStream:
    entry = s.state.registry.require(op.cluster, caller.uid, caller.admin)
    job_id = op.job_id
    if job_id is None:
        job_id = entry.next_job_id - 1
        if job_id < 1:
            raise SkydError(ErrorCode.NOT_FOUND, f"cluster {op.cluster!r} has no jobs yet")
    if (op.cluster, job_id) not in s.state.jobs and not await s.store.get_job(op.cluster, job_id):
        raise SkydError(ErrorCode.NOT_FOUND, f"cluster {op.cluster!r} has no job {job_id}",
                        f"list its jobs with: skyctl queue {op.cluster}")
    return JobLogStream(s, op.cluster, job_id, op.follow, op.offset)


PROBE_TIMEOUT = 15.0


@handles(protocol.InfraStatus)
async def infra(s: Services, caller: Caller, op: InfraStatus) -> list[HostRecord]:
    """Probe every host of the pools over ssh, all at once, each bounded in time: CPUs,
    memory and GPUs (`refresh`: what the GPUs found is recorded for placement)."""
    pools = s.state.hosts.pool_map()
    unknown = [p for p in op.pools if p not in pools]
    if unknown:
        raise SkydError(ErrorCode.NOT_FOUND, f"no ssh node pool {unknown[0]!r}")
    owners = s.state.hosts.clusters_on()

    def visible(name: str) -> str:
        """A cluster's name if it is the caller's (or for an admin), else "(in use)"."""
        entry = s.state.clusters.get(name)
        return name if entry is None or caller.admin or entry.record.uid == caller.uid \
            else "(in use)"

    async def probe(pool: str, h) -> HostRecord:
        # Reached as the caller would reach it: their own login on a per-user pool.
        node = pools[pool].node(h, 0, "", caller.uid, caller.user)
        names = [visible(n) for n in owners.get((h.ip, h.port), [])]
        rec = HostRecord(pool=pool, ip=h.ip, port=h.port, user=node.user, reachable=False,
                         cluster=names[0] if names else None, clusters=names,
                         shared_login=pools[pool].shared_login)
        found = await detect_remote(s.ssh, node)
        if found.error.startswith("cannot reach") or found.error.startswith("no answer"):
            rec.error = found.error.partition(": ")[2] if found.error.startswith("cannot") \
                else found.error
            return rec
        rec.reachable = True
        if found.cpus:
            rec.cpus, rec.memory_bytes = int(found.cpus), found.memory_bytes
        rec.gpu_error = found.error
        if op.refresh:
            s.state.placements.record(h.key, found)
        return rec

    wanted = op.pools or sorted(pools)
    if op.refresh:
        await s.state.placements.detect(LOCAL)
    hosts = list(await asyncio.gather(*(probe(name, h) for name in wanted
                                        for h in pools[name].hosts)))
    gpus = {g.host: g for g in s.state.gpu_hosts(visible)}
    for rec in hosts:
        known = gpus.get(f"{rec.ip}:{rec.port}")
        if known is not None:
            rec.gpus = known.gpus
            rec.gpu_error = rec.gpu_error or known.error
    return hosts
