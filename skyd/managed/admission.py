"""Which managed jobs may start: a submission is checked at once (refused now if it can
never run), then waits for room on hosts — placement gives freed room fairly across
people, by priority within one person's jobs (skyd.clusters.claims) — and then, in job-id
order, for one of the controller's launch slots. Teardowns and relaunches waiting for a
slot go first."""

from __future__ import annotations

import asyncio
import collections
from typing import Callable

import msgspec

from skyd import protocol
from skyd.clusters.claims import Claim
from skyd.clusters.gpuchecks import check_caps
from skyd.clusters.hosts import HostPools
from skyd.clusters.placement import demand_of
from skyd.clusters.placements import Placements
from skyd.managed.job import Job
from skyd.protocol import ErrorCode, SkydError
from skyd.requests.slots import FifoSlots
from skyd.sizing.hardware import Hardware
from skyd.taskspec import Task, TaskError, infra_kind, normalise, shortfall


def check_task(op: protocol.JobsLaunch, hosts: HostPools, host: Hardware,
               placements: Placements | None = None, uid: int = -1) -> Task:
    """The job's task, normalised; refused now if it can never run."""
    try:
        task = op.task if op.name is None else msgspec.structs.replace(op.task, name=op.name)
        task = normalise(task)
    except TaskError as e:
        raise SkydError(ErrorCode.INVALID_TASK, f"invalid task: {e}") from None
    if task.run is None:
        raise SkydError(ErrorCode.INVALID_TASK, "invalid task: a managed job needs `run`")
    kind, pool = infra_kind(task.resources.infra)
    if kind == "ssh":
        hosts.pool(pool, task.num_nodes)      # unknown or too small: refused now
    elif kind == "local":
        why = shortfall(task, host.cpus, host.memory_bytes)
        if why:
            raise SkydError(ErrorCode.INVALID_TASK, f"a local node (this host) {why}")
    demand = demand_of(task)
    if placements is not None and demand is not None:
        never = placements.never_fits(demand)
        if never:
            raise SkydError(ErrorCode.INVALID_TASK, never,
                            "ask for GPUs a host has (skyctl gpus lists them)")
        check_caps(placements, demand, uid, internal=True)   # beyond a cap: refused
    return task


class Admission:
    def __init__(self, hosts: HostPools, parallelism: int, start: Callable[[Job], None],
                 placements: Placements | None = None):
        self.hosts = hosts
        self.start = start                      # drive an admitted job
        self.placements = placements            # None: ssh pools' free hosts are counted here
        self.pending: dict[int, Job] = {}       # waiting for a launch slot, in job-id order
        self.placing: dict[int, str] = {}       # job id -> why it still waits for room
        # Launch and down requests the controller has running at once (FIFO among those
        # waiting).
        self.slots = FifoSlots(max(1, parallelism))
        self._reserved: collections.Counter[str] = collections.Counter()  # pool -> hosts
        self._soon = False
        self.closing = False

    def add(self, job: Job) -> None:
        self.pending[job.record.job_id] = job
        self._claim(job)

    def _claim(self, job: Job) -> None:
        """Room on hosts for the job's cluster, in the fair order of placement."""
        p = self.placements
        name = job.record.cluster
        demand = demand_of(job.task)
        if p is None or demand is None or demand.empty or name in p.claims.by_key \
                or p.ledger.reserved(name):
            return
        job_id = job.record.job_id
        self.placing[job_id] = ""

        def notify(c: Claim) -> None:
            if c.slices is not None or c.error:     # placed (or never: its launch says why)
                if self.placing.pop(job_id, None):
                    job.record = msgspec.structs.replace(job.record, reason="")
                self.admit_later()
            else:
                self.placing[job_id] = c.reason
                job.record = msgspec.structs.replace(job.record, reason=c.reason)
                job.topic.notify()
        p.claim(Claim(name, job.record.uid, job.record.user, demand, notify,
                      priority=job.record.priority))
        if job_id in self.placing:
            notify(p.claims.by_key[name])

    def forget(self, job_id: int) -> None:
        """A pending job was cancelled: it waits for nothing any more."""
        job = self.pending.pop(job_id, None)
        self.placing.pop(job_id, None)
        p = self.placements
        if job is not None and p is not None:
            p.claims.drop(job.record.cluster)
            if p.ledger.reserved(job.record.cluster):
                p.release(job.record.cluster)

    def requeue(self, job: Job) -> None:
        """Back in the queue (its pool's hosts were taken meanwhile), in job-id order."""
        self.pending[job.record.job_id] = job
        self.pending = dict(sorted(self.pending.items()))

    def admit(self) -> None:
        """Start pending jobs in order while there are slots (teardowns and relaunches
        waiting for one go first) and their ssh pool has free hosts."""
        self._soon = False
        if self.slots.waiting or self.closing:
            return
        free: dict[str, int] = {}
        for job in list(self.pending.values()):
            if self.slots.in_use >= self.slots.size:
                return
            if job.record.job_id in self.placing:
                continue            # waits for room on hosts; jobs placed go on
            pool = job.pool
            if pool is not None and self.placements is None:
                if pool not in free:
                    free[pool] = self.hosts.free_hosts(pool) - self._reserved[pool]
                if free[pool] < job.task.num_nodes:
                    continue        # waits for hosts; jobs elsewhere go on
                free[pool] -= job.task.num_nodes
                job.reserved = job.task.num_nodes
                self._reserved[pool] += job.reserved
            del self.pending[job.record.job_id]
            self.slots.take()
            job.holds_slot = True
            self.start(job)

    def admit_later(self) -> None:
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.admit)

    # ---- a driven job's slot ---------------------------------------------------------------

    def resume_slot(self, job: Job) -> None:
        """After a restart: its launch request is queued again and holds a slot."""
        self.slots.take()
        job.holds_slot = True

    async def take_slot(self, job: Job) -> None:
        if job.holds_slot:
            return
        await self.slots.acquire()
        job.holds_slot = True

    def release_slot(self, job: Job) -> None:
        if job.reserved:
            self._reserved[job.pool or ""] -= job.reserved
            job.reserved = 0
        if not job.holds_slot:
            return
        job.holds_slot = False
        self.slots.release()              # passed to the first waiter, if any
        self.admit()
