"""Clusters as the work of long requests: the scheduler's Workload (skyd.requests.workload).

admit: refuse at submission what can never run, name an unnamed launch's cluster.
hold: a launch (or start) waits, holding no slot, until placement gives it room on hosts.
prepare: at dispatch, the cluster as it is now and the job the request creates.
apply: a change its worker reports, checked against what the request may change.
on_end: a request that ended without success leaves no job or reservation waiting for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Awaitable, Callable

import msgspec

from skyd import protocol
from skyd.clusters.claims import Claim
from skyd.clusters.gpuchecks import check_caps, check_job_gpus, restart_demand
from skyd.clusters.hosts import HostPools
from skyd.clusters.jobqueue import JobQueue
from skyd.clusters.ledger import LOCAL
from skyd.clusters.placement import demand_of, why_waiting
from skyd.clusters.placements import Placements
from skyd.clusters.names import MANAGED_PREFIX, check_cluster_name, describe_resources, \
    generate_cluster_name
from skyd.clusters.registry import Registry
from skyd.infra import runs_on_daemon_host
from skyd.infra.base import handle_dec
from skyd.infra.local import cluster_dir as local_cluster_dir, mark_cancelled as local_mark_cancelled
from skyd.infra.nodepools import same_hosts
from skyd.protocol import (ClusterRecord, ClusterState, ErrorCode, HeldSlice, JobStatus, Op,
                           RequestRecord, SkydError, Status)
from skyd.requests.messages import DropCluster, JobEntry, SaveCluster, SaveJob
from skyd.requests.workload import QueuedOn
from skyd.sizing.hardware import Hardware
from skyd.taskspec import TaskError, infra_kind, infra_name, normalise, shortfall

# Told when a held request's reason to wait changes: (request id, reason); "" once it may
# go (placed, or refused: prepare then says why).
Changed = Callable[[str, str], None]

log = logging.getLogger("skyd.clusters.workload")


class ClusterWorkload:
    def __init__(self, registry: Registry, queue: JobQueue, hosts: HostPools,
                 placements: Placements, host: Hardware, is_admin: Callable[[int], bool],
                 drop: Callable[[str], Awaitable[None]], ssh_known_hosts: str = ""):
        self.registry = registry
        self.queue = queue
        self.hosts = hosts
        self.placements = placements
        self.refused: dict[str, str] = {}    # request id -> why it can never be placed
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
            if isinstance(op, protocol.Exec) and entry is not None:
                check_job_gpus(entry.record, op.task)
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
        if entry is not None:
            check_job_gpus(entry.record, op.task)
            return op
        demand = demand_of(op.task)
        if demand is not None:
            never = self.placements.never_fits(demand)
            if never:
                raise SkydError(ErrorCode.INVALID_TASK, never,
                                "ask for GPUs a host has (skyctl gpus lists them)")
            check_caps(self.placements, demand, uid, internal)
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

    # ---- hold ----------------------------------------------------------------------------

    def hold(self, op: Op, req: RequestRecord, changed: Changed) -> str:
        """At queueing: why the request must wait for room on hosts ("": it need not). A
        launch of a new cluster (or a start of a stopped one that gave its GPUs back)
        claims room; placement tells `changed` as its reason changes, and once it is
        placed (or can never be)."""
        claim = self._claim_for(op, req)
        if claim is None:
            return ""
        queued = False

        def notify(c: Claim) -> None:
            if c.error:
                self.refused[req.id] = c.error
            if queued:
                changed(req.id, "" if c.slices is not None or c.error else c.reason)
        claim.notify = notify
        self.placements.claim(claim)
        if claim.slices is not None or claim.error:
            return ""
        queued = True
        return claim.reason

    def _claim_for(self, op: Op, req: RequestRecord) -> Claim | None:
        name = op.target_cluster()
        if name is None or not isinstance(op, (protocol.Launch, protocol.Start)):
            return None
        p = self.placements
        if name in p.claims.by_key or p.ledger.reserved(name):
            return None       # already waiting, or placed (a managed job's admission)
        entry = self.registry.clusters.get(name)
        if entry is None and isinstance(op, protocol.Launch):
            demand = demand_of(op.task)
            if demand is None or demand.empty:
                return None
            return Claim(name, req.uid, req.user, demand, _ignore)
        if entry is not None and entry.record.status == ClusterState.STOPPED:
            demand = restart_demand(entry.record)
            if demand is not None:
                return Claim(name, entry.record.uid, entry.record.user, demand, _ignore,
                             new_cluster=False)
        return None

    # ---- prepare -------------------------------------------------------------------------

    async def prepare(self, op: Op, req: RequestRecord
                      ) -> tuple[ClusterRecord | None, list[JobEntry]]:
        """At dispatch: the cluster as it is now, and the job this request creates."""
        name = op.target_cluster()
        if name is None:
            return None, []
        why = self.refused.pop(req.id, "")
        if why:
            raise SkydError(ErrorCode.INVALID_TASK, why, "ask for GPUs a host has (skyctl gpus "
                            "lists them)")
        entry = self.registry.clusters.get(name)
        if isinstance(op, protocol.Launch) and entry is None:
            entry = await self.registry.save(self._new_cluster(op, name, req, self._room(op, name, req)))
            self.placements.confirm(name)
        if entry is None:
            raise SkydError(ErrorCode.NOT_FOUND, f"cluster {name!r} does not exist")
        if entry.record.status == ClusterState.STOPPED and self.placements.ledger.reserved(name):
            # A stopped cluster's GPUs, placed again on its own hosts for this start.
            rec = msgspec.structs.replace(entry.record, held=self.placements.ledger.holding(name))
            entry = await self.registry.save(rec)
            self.placements.ledger.confirm(name)
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

    def _room(self, op: protocol.Launch, name: str, req: RequestRecord) -> list[HeldSlice]:
        """What a new cluster holds: its reservation, or room found now (its request
        was queued behind another that held the reservation and gave it up)."""
        ledger = self.placements.ledger
        if ledger.reserved(name):
            return ledger.holding(name)
        demand = demand_of(op.task)
        if demand is None:
            return []
        if demand.empty:
            # Nothing held; but on a host with GPUs its nodes are marked, so that its
            # setup and jobs are kept from them (CUDA_VISIBLE_DEVICES empty).
            local = ledger.hosts.get(LOCAL)
            return [HeldSlice(rank=r, host=LOCAL) for r in range(op.task.num_nodes)] \
                if demand.pool == LOCAL and local is not None and local.gpus else []
        held = self.placements.place_now(name, req.uid, req.user, demand)
        if held is None:
            raise SkydError(ErrorCode.UNAVAILABLE, why_waiting(ledger, demand),
                            "launch it again: it then waits its turn")
        return held

    def _new_cluster(self, op: protocol.Launch, name: str, req: RequestRecord,
                     held: list[HeldSlice]) -> ClusterRecord:
        kind, pool = infra_kind(op.task.resources.infra)
        now = time.time()
        return ClusterRecord(
            name=name, status=ClusterState.INIT, infra=infra_name(op.task.resources.infra),
            num_nodes=op.task.num_nodes, user=req.user, uid=req.uid, launched_at=now,
            last_use=now, resources=describe_resources(op.task), held=held,
            nodes=self.hosts.nodes_for(name, pool, held, req.uid, req.user)
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
            await self.registry.save(self._stamped(msg.record))
            if msg.record.status == ClusterState.STOPPED:
                self.placements.release(msg.record.name, gpus_only=True)
            self.queue.start_ready(msg.record.name)
        elif isinstance(msg, SaveJob):
            await self.queue.save(msg.record, msg.handle)
            self.queue.start_ready(msg.record.cluster)
        elif isinstance(msg, DropCluster):
            await self.drop(msg.name)

    def _stamped(self, record: ClusterRecord) -> ClusterRecord:
        """What a cluster holds is the daemon's to say, never its worker's: the record as
        the ledger has it (a stopping cluster keeps the GPUs it held on its record, to ask
        for them again at start)."""
        entry = self.registry.clusters.get(record.name)
        held = entry.record.held if entry is not None else []
        if record.status != ClusterState.STOPPED and self.placements.ledger.by_cluster.get(record.name):
            held = self.placements.ledger.holding(record.name)
        return msgspec.structs.replace(record, held=held)

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
        """A launch or exec that ended before its job started: the job cannot run now. A
        launch or start that ended without its cluster gives back what was placed for it."""
        if req.status is Status.SUCCEEDED:
            return
        self.refused.pop(req.id, None)
        if req.name in ("launch", "start") and req.cluster:
            self._give_back(req.cluster)
        if req.status is Status.CANCELLED:
            await self.queue.fail_unstarted(req.id, JobStatus.CANCELLED, "cancelled")
        else:
            await self.queue.fail_unstarted(req.id, JobStatus.FAILED, req.error or "failed")


    def _give_back(self, name: str) -> None:
        p = self.placements
        p.claims.drop(name)
        entry = self.registry.clusters.get(name)
        if entry is None:
            if p.ledger.reserved(name):
                p.release(name)
        elif entry.record.status == ClusterState.STOPPED:
            p.confirm(name)           # its GPUs placed for the start go back
            p.run_soon()


def _ignore(claim: Claim) -> None:
    """A claim's notify until the workload sets its own."""


def _inside(path: str, directory: Path) -> bool:
    p = Path(path)
    return p.is_absolute() and ".." not in p.parts and p.is_relative_to(directory)
