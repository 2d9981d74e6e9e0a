"""Clusters as the work of long requests: the scheduler's Workload (skyd.requests.workload).

admit: refuse at submission what can never run, name an unnamed launch's cluster.
prepare: at dispatch, the cluster as it is now and the job the request creates.
apply: a change its worker reports, checked against what the request may change.
on_end: a request that ended without success leaves no job waiting for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Awaitable, Callable

import msgspec

from skyd import protocol
from skyd.clusters.hosts import HostPools
from skyd.clusters.jobqueue import JobQueue
from skyd.clusters.names import MANAGED_PREFIX, check_cluster_name, describe_resources, \
    generate_cluster_name
from skyd.clusters.registry import Registry
from skyd.infra import runs_on_daemon_host
from skyd.infra.base import handle_dec
from skyd.infra.local import cluster_dir as local_cluster_dir, mark_cancelled as local_mark_cancelled
from skyd.infra.nodepools import same_hosts
from skyd.protocol import (ClusterRecord, ClusterState, ErrorCode, JobStatus, Op, RequestRecord,
                           SkydError, Status)
from skyd.requests.messages import DropCluster, JobEntry, SaveCluster, SaveJob
from skyd.requests.workload import QueuedOn
from skyd.sizing.hardware import Hardware
from skyd.taskspec import TaskError, infra_kind, infra_name, normalise, shortfall

log = logging.getLogger("skyd.clusters.workload")


class ClusterWorkload:
    def __init__(self, registry: Registry, queue: JobQueue, hosts: HostPools, host: Hardware,
                 is_admin: Callable[[int], bool], drop: Callable[[str], Awaitable[None]],
                 ssh_known_hosts: str = ""):
        self.registry = registry
        self.queue = queue
        self.hosts = hosts
        self.host = host              # what a local node has
        self.is_admin = is_admin
        self.drop = drop              # forget a cluster and its jobs
        self.state_dir = registry.state_dir
        self.ssh_known_hosts = ssh_known_hosts
        self.slurm = registry.runners.slurm.given     # the `slurm` infra's settings, if any

    # ---- admit ---------------------------------------------------------------------------

    def admit(self, op: Op, uid: int, admin: bool, queued: QueuedOn,
              internal: bool = False) -> Op:
        """Refuse at submission what can never run; name a launch's cluster if unnamed.
        The task is validated again here: the daemon trusts no client's checks.
        `internal`: submitted by the daemon itself (the jobs controller, autostop)."""
        if isinstance(op, (protocol.Launch, protocol.Exec)):
            try:
                op = msgspec.structs.replace(op, task=normalise(op.task))
            except TaskError as e:
                raise SkydError(ErrorCode.INVALID_TASK, f"invalid task: {e}") from None
        if isinstance(op, protocol.Launch):
            return self._admit_launch(op, uid, admin, queued, internal)
        name = op.target_cluster()
        if name is not None:
            self._check_owner(name, uid, admin, queued, must_exist=True)
            entry = self.registry.clusters.get(name)
            if isinstance(op, protocol.Stop) and entry and entry.record.infra.startswith("slurm"):
                raise SkydError(ErrorCode.BAD_REQUEST, f"cluster {name!r} is a Slurm allocation: "
                                "Slurm cannot stop it and start it again",
                                f"tear it down with: skyctl down {name}")
        return op

    def _admit_launch(self, op: protocol.Launch, uid: int, admin: bool, queued: QueuedOn,
                      internal: bool) -> protocol.Launch:
        kind, pool = infra_kind(op.task.resources.infra)
        if kind == "ssh":
            self.hosts.pool(pool, op.task.num_nodes)
        if kind == "slurm" and self.registry.runners.slurm.unavailable():
            raise SkydError(ErrorCode.INVALID_TASK, "resources.infra: "
                            f"{self.registry.runners.slurm.unavailable()}")
        if op.cluster is None:
            op = msgspec.structs.replace(op, cluster=generate_cluster_name(uid))
        assert op.cluster is not None
        check_cluster_name(op.cluster)
        clusters = self.registry.clusters
        if op.cluster.startswith(MANAGED_PREFIX) and not internal and op.cluster not in clusters:
            raise SkydError(ErrorCode.BAD_REQUEST, f"cluster names starting with "
                            f"{MANAGED_PREFIX!r} are reserved for managed jobs",
                            "pick another name, or use: skyctl jobs launch")
        self._check_owner(op.cluster, uid, admin, queued)
        entry = clusters.get(op.cluster)
        if entry is not None and entry.record.num_nodes != op.task.num_nodes:
            raise SkydError(ErrorCode.CONFLICT,
                            f"cluster {op.cluster!r} has {entry.record.num_nodes} node(s); "
                            f"the task asks for {op.task.num_nodes}",
                            "use another cluster name, or down this one first")
        wanted = infra_name(op.task.resources.infra)
        if entry is not None and entry.record.infra != wanted:
            raise SkydError(ErrorCode.CONFLICT,
                            f"cluster {op.cluster!r} is on {entry.record.infra}; the task "
                            f"asks for {wanted}")
        if kind == "local":
            # A local node is this host: refuse what it can never run, at submission.
            why = shortfall(op.task, self.host.cpus, self.host.memory_bytes)
            if why:
                raise SkydError(ErrorCode.INVALID_TASK, f"a local node (this host) {why}")
        return op

    def _check_owner(self, name: str, uid: int, admin: bool, queued: QueuedOn,
                     must_exist: bool = False) -> None:
        """A cluster, or the queued launch that will create it, belongs to one person.
        Acting on someone else's answers as a missing cluster; launching onto a name
        someone else holds says only that the name is taken (never by whom)."""
        entry = self.registry.clusters.get(name)
        owner = entry.record.uid if entry is not None else next(
            (rec.uid for rec, op in queued(name) if isinstance(op, protocol.Launch)), None)
        if owner is not None and (owner == uid or admin):
            return
        if must_exist:
            self.registry.require(name, uid, admin)   # raises NOT_FOUND: missing, or not theirs
            return
        if owner is not None:
            raise SkydError(ErrorCode.PERMISSION_DENIED,
                            f"cluster name {name!r} is taken by another user",
                            "pick another name with: -c NAME")

    # ---- prepare -------------------------------------------------------------------------

    async def prepare(self, op: Op, req: RequestRecord
                      ) -> tuple[ClusterRecord | None, list[JobEntry]]:
        """At dispatch: the cluster as it is now, and the job this request creates."""
        name = op.target_cluster()
        if name is None:
            return None, []
        entry = self.registry.clusters.get(name)
        if isinstance(op, protocol.Launch) and entry is None:
            entry = await self.registry.save(self._new_cluster(op, name, req))
        if entry is None:
            raise SkydError(ErrorCode.NOT_FOUND, f"cluster {name!r} does not exist")
        if entry.record.uid != req.uid and not self.is_admin(req.uid):
            # Checked at submission too; the owner may have changed since (down + launch).
            raise SkydError(ErrorCode.PERMISSION_DENIED,
                            f"cluster {name!r} belongs to {entry.record.user}")
        if isinstance(op, (protocol.Launch, protocol.Exec)):
            if isinstance(op, protocol.Exec) and entry.record.status != ClusterState.UP:
                raise SkydError(ErrorCode.CONFLICT,
                                f"cluster {name!r} is {entry.record.status}, not UP",
                                f"start it with: skyctl start {name}")
            live = self.queue.of_request(req.id)
            if live is None and op.task.run is not None:
                # Run again after a restart, its job may have finished meanwhile: never
                # submit it twice.
                done = await self.registry.store.job_of_request(name, req.id)
                if done is not None:
                    return entry.record, [JobEntry(done, None)]
                await self.queue.new(name, op.task.name or "-", req.id)
                live = self.queue.of_request(req.id)
            jobs = [JobEntry(live.record, live.handle_bytes)] if live else []
            return entry.record, jobs
        if isinstance(op, (protocol.Stop, protocol.Down)) and runs_on_daemon_host(entry.record.infra):
            # The worker stops them as their owner; that they were cancelled is the
            # daemon's to record, in its own files.
            for (c, _), live in self.queue.jobs.items():
                if c == name and live.handle is not None and live.handle.spawned:
                    local_mark_cancelled(live.handle)
        return entry.record, self.queue.live(name)

    def _new_cluster(self, op: protocol.Launch, name: str, req: RequestRecord) -> ClusterRecord:
        kind, pool = infra_kind(op.task.resources.infra)
        now = time.time()
        return ClusterRecord(
            name=name, status=ClusterState.INIT, infra=infra_name(op.task.resources.infra),
            num_nodes=op.task.num_nodes, user=req.user, uid=req.uid, launched_at=now,
            last_use=now, resources=describe_resources(op.task),
            nodes=self.hosts.allocate(name, pool, op.task.num_nodes, req.uid, req.user)
            if kind == "ssh" else [])

    # ---- apply ---------------------------------------------------------------------------

    async def apply(self, msg: SaveCluster | SaveJob | DropCluster, req: RequestRecord) -> None:
        """A change reported by the worker of `req`. Workers run as users: what they say
        is checked against what the request may change before it is applied. A change
        may make room for the cluster's waiting jobs (it came up, a job was queued or
        ended): they are started then."""
        why = self._refuse(msg, req)
        if why:
            log.warning("request %s: worker message refused: %s", req.id, why)
            return
        if isinstance(msg, SaveCluster):
            await self.registry.save(msg.record)
            self.queue.start_ready(msg.record.name)
        elif isinstance(msg, SaveJob):
            await self.queue.save(msg.record, msg.handle)
            self.queue.start_ready(msg.record.cluster)
        elif isinstance(msg, DropCluster):
            await self.drop(msg.name)

    def _refuse(self, msg: SaveCluster | SaveJob | DropCluster, req: RequestRecord) -> str:
        name = msg.name if isinstance(msg, DropCluster) else \
            msg.record.name if isinstance(msg, SaveCluster) else msg.record.cluster
        if name != req.cluster:
            return f"it names cluster {name!r}, the request is for {req.cluster!r}"
        entry = self.registry.clusters.get(name)
        if isinstance(msg, SaveCluster):
            if entry is None:
                return f"cluster {name!r} does not exist"
            old, new = entry.record, msg.record
            if (new.uid, new.user, new.infra, new.num_nodes, new.launched_at) != \
                    (old.uid, old.user, old.infra, old.num_nodes, old.launched_at):
                return "it changes who owns the cluster or what it is"
            if old.infra == "local" and any(
                    not _inside(n.path, local_cluster_dir(self.state_dir, name)) for n in new.nodes):
                return "a node outside the cluster's directory"
            if old.infra.startswith("ssh/") and not same_hosts(old.nodes, new.nodes):
                return "it changes the cluster's hosts or how they are reached"
        if isinstance(msg, SaveJob):
            live = self.queue.jobs.get((msg.record.cluster, msg.record.job_id))
            if live is None:
                return f"no job {msg.record.job_id} waits on {name!r}"
            if (msg.record.uid, msg.record.request_id) != (live.record.uid, live.record.request_id):
                return "it changes the job's owner or request"
            if msg.handle is not None and any(np.pid or np.start or np.ctl for np in
                                              handle_dec.decode(msg.handle).nodes):
                return "a job handle that claims to be started"
        return ""

    # ---- on_end --------------------------------------------------------------------------

    async def on_end(self, req: RequestRecord) -> None:
        """A launch or exec that ended before its job started: the job cannot run now."""
        if req.status is Status.SUCCEEDED:
            return
        if req.status is Status.CANCELLED:
            await self.queue.fail_unstarted(req.id, JobStatus.CANCELLED, "cancelled")
        else:
            await self.queue.fail_unstarted(req.id, JobStatus.FAILED, req.error or "failed")


def _inside(path: str, directory: Path) -> bool:
    p = Path(path)
    return p.is_absolute() and ".." not in p.parts and p.is_relative_to(directory)
