"""Each cluster's job queue: the jobs not yet finished, started in submission order while
they fit (CPUs, and GPUs: each job gets its own indices of what its cluster holds on each
node, named by CUDA_VISIBLE_DEVICES), watched through pidfds so that their end is recorded
the moment it happens.

Saving a job never starts one: `start_ready(cluster)` is the explicit step, taken where
room may have appeared — a job was queued or ended, the cluster came up, the daemon
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import msgspec

from skyd import privilege
from skyd.clusters.registry import Registry
from skyd.identity import user_identity
from skyd.infra.base import JobHandle, JobRunner, handle_dec, handle_enc
from skyd.infra.local import control_dir, control_root
from skyd.protocol import CLUSTER_RUNNABLE, JOB_FINISHED, ClusterRecord, JobRecord, JobStatus, NodeInfo
from skyd.requests.messages import JobEntry
from skyd.streams import Topic

log = logging.getLogger("skyd.clusters.jobqueue")


@dataclass
class LiveJob:
    record: JobRecord
    handle: JobHandle | None = None
    handle_bytes: bytes | None = None
    topic: Topic = field(default_factory=Topic)
    watcher: asyncio.Task | None = None
    starting: bool = False        # its runner is spawning it
    assigned: dict[int, list[int] | None] = field(default_factory=dict)  # rank -> its GPUs

    def gpus(self) -> dict[int, list[int] | None]:
        """The GPU indices it holds on each node (rank), once started or starting."""
        if self.handle is not None and self.handle.spawned:
            return {np.rank: np.gpus for np in self.handle.nodes}
        return self.assigned


class JobQueue:
    def __init__(self, registry: Registry, has_gpus: Callable[[str], bool] = lambda host: False):
        self.registry = registry
        self.store = registry.store
        self.jobs: dict[tuple[str, int], LiveJob] = {}    # jobs not yet finished
        self.has_gpus = has_gpus      # does this host (ledger key) have GPUs to keep jobs from

    async def load(self) -> None:
        """The unfinished jobs (after the clusters): watch the started ones again. The
        device cgroups of local jobs that ended while the daemon was down go."""
        await asyncio.to_thread(self.registry.runners.local.sweep_fences)
        for job, handle in await self.store.active_jobs():
            live = LiveJob(job, handle_dec.decode(handle) if handle else None, handle)
            self.jobs[(job.cluster, job.job_id)] = live
            if live.handle is not None and live.handle.spawned:
                self._watch(live)

    # ---- lookup ------------------------------------------------------------------------

    def of_request(self, request_id: str) -> LiveJob | None:
        for live in self.jobs.values():
            if live.record.request_id == request_id:
                return live
        return None

    def live(self, cluster: str) -> list[JobEntry]:
        return [JobEntry(j.record, j.handle_bytes) for (c, _), j in self.jobs.items()
                if c == cluster]

    def busy(self, cluster: str) -> bool:
        return any(c == cluster for c, _ in self.jobs)

    def topic(self, cluster: str, job_id: int) -> Topic | None:
        live = self.jobs.get((cluster, job_id))
        return live.topic if live else None

    # ---- records -----------------------------------------------------------------------

    async def new(self, cluster: str, name: str, request_id: str) -> JobRecord:
        entry = self.registry.clusters[cluster]
        # An admin's exec on someone's cluster is a job of that someone (it runs as them).
        job = JobRecord(cluster=cluster, job_id=entry.next_job_id, name=name,
                        status=JobStatus.PENDING, user=entry.record.user, uid=entry.record.uid,
                        submitted_at=time.time(), request_id=request_id)
        entry.next_job_id += 1
        # Nothing left from an earlier cluster of this name passes for this job's files.
        await asyncio.to_thread(privilege.remove_private_tree,
                                control_root(self.registry.state_dir) / cluster / str(job.job_id))
        self.jobs[(cluster, job.job_id)] = LiveJob(job)
        await asyncio.gather(self.store.save_cluster(entry.record, entry.next_job_id),
                             self.store.save_job(job, None))    # one commit
        return job

    async def save(self, record: JobRecord, handle: bytes | None) -> None:
        """Record what the job is now (a finished one leaves the queue). Starts nothing."""
        key = (record.cluster, record.job_id)
        live = self.jobs.get(key)
        if live is None:
            live = self.jobs[key] = LiveJob(record)
        live.record = record
        if handle is not None:
            live.handle_bytes, live.handle = handle, handle_dec.decode(handle)
        await self.store.save_job(record, live.handle_bytes)
        if record.status in JOB_FINISHED:
            self.jobs.pop(key, None)
            if live.watcher is not None and live.watcher is not asyncio.current_task():
                live.watcher.cancel()
        elif live.handle is not None and live.handle.spawned and live.watcher is None:
            self._watch(live)
        live.topic.notify()
        self.registry.changed(record.cluster)

    async def end(self, record: JobRecord, status: JobStatus, **changes) -> None:
        """The job ends (or will never start): recorded, and its room goes to the next."""
        await self.save(msgspec.structs.replace(record, status=status, ended_at=time.time(),
                                                **changes), None)
        self.start_ready(record.cluster)

    def forget(self, cluster: str) -> None:
        """The cluster is gone: so are its jobs (their followers are told)."""
        for key in [k for k in self.jobs if k[0] == cluster]:
            live = self.jobs.pop(key)
            if live.watcher is not None:
                live.watcher.cancel()
            live.topic.notify()

    # ---- starting jobs -----------------------------------------------------------------

    def start_ready(self, cluster: str) -> None:
        """Start the cluster's waiting jobs in submission order while they fit: like
        SkyPilot's job queue, a job that does not fit holds back the ones behind it."""
        entry = self.registry.clusters.get(cluster)
        if entry is None or entry.record.status not in CLUSTER_RUNNABLE:
            return
        runner, nodes = self.registry.runner_of(cluster)
        jobs = sorted(((j, j.handle) for (c, _), j in self.jobs.items()
                       if c == cluster and j.handle is not None),
                      key=lambda jh: jh[0].record.job_id)
        used = sum(h.cpus for j, h in jobs if h.spawned or j.starting)
        held = {s.rank: s for s in entry.record.held}
        # CPUs: what the cluster holds of each node if it asked for some, else the node's.
        room = min((held[n.rank].cpus if n.rank in held and held[n.rank].cpus else
                    runner.capacity(n) for n in nodes), default=0.0)
        free = self._free_gpus(entry.record, nodes, [j for j, h in jobs if h.spawned or j.starting])
        for live, handle in jobs:
            if handle.spawned or live.starting:
                continue
            if used + handle.cpus > room + 1e-9 and used > 0:
                break      # it waits for room; so do the jobs behind it
            gpus = _take_gpus(free, handle.gpus)
            if gpus is None:
                break      # it waits for GPUs; so do the jobs behind it
            used += handle.cpus
            live.starting, live.assigned = True, gpus
            asyncio.get_running_loop().create_task(self._start(live, handle, runner, nodes))

    def _free_gpus(self, record: ClusterRecord, nodes: list[NodeInfo],
                   busy: list[LiveJob]) -> dict[int, list[int] | None]:
        """Per node (rank): the cluster's GPUs there that no running job holds; None on a
        host without GPUs (nothing to keep a job from)."""
        held = {s.rank: s.gpus for s in record.held}
        free: dict[int, list[int] | None] = {}
        for n in nodes:
            key = "local" if record.infra == "local" else f"{n.ip}:{n.port}"
            if record.infra.startswith("slurm") or not (held.get(n.rank) or self.has_gpus(key)):
                free[n.rank] = None
                continue
            taken = {i for j in busy for i in (j.gpus().get(n.rank) or [])}
            free[n.rank] = [i for i in held.get(n.rank, []) if i not in taken]
        return free

    async def _start(self, live: LiveJob, prepared: JobHandle, runner: JobRunner,
                     nodes: list[NodeInfo]) -> None:
        rec = live.record
        entry = self.registry.clusters.get(rec.cluster)
        # A job runs as its cluster's owner, whoever asked for it (an admin's exec too).
        owner = entry.record.uid if entry is not None else rec.uid
        # Where its output and exit status go is the daemon's choice, never the worker's.
        state_dir = self.registry.state_dir
        # Which GPUs it uses, too: those start_ready gave it (CUDA_VISIBLE_DEVICES).
        handle = msgspec.structs.replace(prepared, nodes=[
            msgspec.structs.replace(np, ctl=control_dir(state_dir, rec.cluster, rec.job_id,
                                                        np.rank), gpus=live.assigned.get(np.rank))
            for np in prepared.nodes])
        try:
            handle = await runner.spawn(handle, nodes, owner, user_identity(owner)[1])
        except Exception as e:  # noqa: BLE001 - the job fails, the daemon goes on
            log.warning("job %s on %s could not start: %s", rec.job_id, rec.cluster, e)
            live.starting = False
            await self.end(rec, JobStatus.FAILED)
            return
        live.starting = False
        if (rec.cluster, rec.job_id) not in self.jobs:       # cancelled meanwhile
            await runner.cancel(handle, nodes)
            return
        await self.save(msgspec.structs.replace(live.record, status=JobStatus.RUNNING,
                                                started_at=time.time()),
                        handle_enc.encode(handle))

    # ---- the end of a job ------------------------------------------------------------------

    def _watch(self, live: LiveJob) -> None:
        live.watcher = asyncio.get_running_loop().create_task(
            self._watch_job(live), name=f"job-{live.record.cluster}-{live.record.job_id}")

    async def _watch_job(self, live: LiveJob) -> None:
        assert live.handle is not None
        runner, nodes = self.registry.runner_of(live.record.cluster)
        outcome = await runner.wait_outcome(live.handle, nodes)
        status = JobStatus(outcome.status)
        if status is JobStatus.FAILED:
            # One node failed: the job has failed; stop its other nodes.
            await runner.kill(live.handle, nodes)
            if outcome.exit_code is None:
                log.warning("job %s on %s ended without an exit status: %s (runners %s)",
                            live.record.job_id, live.record.cluster, outcome.reason,
                            [(n.pid, n.start) for n in live.handle.nodes])
        await self.end(live.record, status, exit_code=outcome.exit_code)

    async def fail_unstarted(self, request_id: str, status: JobStatus, reason: str) -> None:
        """A launch or exec that ended before its job started: the job cannot run now
        (it ends `status`: CANCELLED or FAILED, as its request)."""
        live = self.of_request(request_id)
        if live is not None and live.record.status in (JobStatus.PENDING, JobStatus.SETTING_UP):
            log.warning("job %s on %s ends %s before it started: its request ended (%s); "
                        "handle %s", live.record.job_id, live.record.cluster, status, reason,
                        live.handle)
            await self.end(live.record, status)

    async def cancel(self, cluster: str, job_id: int) -> bool:
        live = self.jobs.get((cluster, job_id))
        if live is None:
            return False
        if live.handle is None:
            # Not started yet (its launch/exec is still queued or setting up).
            return False
        if not live.handle.spawned:
            # Waiting for room on the cluster: it simply never starts.
            await self.end(live.record, JobStatus.CANCELLED)
            return True
        runner, nodes = self.registry.runner_of(cluster)
        await runner.cancel(live.handle, nodes)
        return True

    def job_gpus(self) -> dict[tuple[str, int, int], int]:
        """(cluster, rank, GPU index) -> the job using it now."""
        return {(c, rank, i): jid for (c, jid), live in self.jobs.items()
                for rank, gpus in live.gpus().items() for i in gpus or []}

    async def close(self) -> None:
        for live in self.jobs.values():
            if live.watcher is not None:
                live.watcher.cancel()
                with contextlib.suppress(BaseException):
                    await live.watcher


def _take_gpus(free: dict[int, list[int] | None], count: int) -> dict[int, list[int] | None] | None:
    """`count` GPUs on every node, taken from `free` (None: some node has too few). A job
    that asks for none gets none ([]: every GPU of a GPU host hidden from it)."""
    if any(f is not None and len(f) < count for f in free.values()):
        return None
    if count and any(f is None for f in free.values()):
        return None
    taken: dict[int, list[int] | None] = {}
    for rank, f in free.items():
        if f is None:
            taken[rank] = None
        else:
            taken[rank], free[rank] = f[:count], f[count:]
    return taken
