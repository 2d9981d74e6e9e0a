"""Clusters and jobs as the daemon knows them: in memory, written through to the store.

Workers report changes (SaveCluster, SaveJob, DropCluster); the daemon applies them here,
the single writer. Running jobs are watched through pidfds, so their end is recorded the
moment it happens — and, after a restart, reconciled from what the nodes wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgspec

from skyd.infra import get_infra
from skyd.infra.base import Infra, JobHandle, handle_dec, handle_enc
from skyd.streams import Topic
from skyd import privilege, protocol
from skyd.protocol import JOB_FINISHED, ClusterRecord, ErrorCode, JobRecord, NodeInfo, SkydError
from skyd.store import Store
from skyd.sizing.hardware import Hardware
from skyd.infra.local import cluster_dir as local_cluster_dir, control_dir, control_root
from skyd.infra.local import mark_cancelled as local_mark_cancelled
from skyd.infra.ssh import node_dir as ssh_node_dir
from skyd.infra.nodepools import NodePools, Pool, PoolError, same_hosts
from skyd.taskspec import Task, TaskError, infra_kind, normalise, shortfall
from skyd.identity import user_identity
from skyd.requests.messages import DropCluster, JobEntry, SaveCluster, SaveJob

log = logging.getLogger("skyd.clusters.registry")


@dataclass
class ClusterEntry:
    record: ClusterRecord
    next_job_id: int = 1
    last_busy: float = 0.0        # last seen with a job or a request (memory only)
    autostopping: bool = False    # its autostop request is queued


@dataclass
class LiveJob:
    record: JobRecord
    handle: JobHandle | None = None
    handle_bytes: bytes | None = None
    topic: Topic = field(default_factory=Topic)
    watcher: asyncio.Task | None = None
    spawning: bool = False


class ClusterState:
    def __init__(self, store: Store, state_dir: str, host: Hardware,
                 is_admin: Callable[[int], bool]):
        self.store = store
        self.state_dir = state_dir
        self.host = host              # what a local node has
        self.is_admin = is_admin
        self.pools: NodePools | None = None
        self.ssh_known_hosts = ""
        self.clusters: dict[str, ClusterEntry] = {}
        self.jobs: dict[tuple[str, int], LiveJob] = {}    # jobs not yet finished
        # ssh hosts that did not answer last time (address -> why): new clusters take
        # the pool's other free hosts first.
        self.host_trouble: dict[str, str] = {}
        # Told the name of a cluster whenever it or one of its jobs changes (the jobs
        # controller listens); must not block.
        self.listeners: list[Callable[[str], None]] = []
        self._closing = False

    # ---- start-up ----------------------------------------------------------------------

    async def load(self) -> None:
        for cluster, next_id in await self.store.load_clusters():
            self.clusters[cluster.name] = ClusterEntry(cluster, next_id)
        for job, handle in await self.store.active_jobs():
            live = LiveJob(job, handle_dec.decode(handle) if handle else None, handle)
            self.jobs[(job.cluster, job.job_id)] = live
            if live.handle is not None and live.handle.spawned:
                self._watch(live)
        for name in self.clusters:
            self.schedule_jobs(name)

    # ---- ssh node pools -------------------------------------------------------------------

    def pool_map(self) -> dict[str, Pool]:
        try:
            return self.pools.get() if self.pools is not None else {}
        except PoolError as e:
            raise SkydError(ErrorCode.INVALID_TASK, f"the node pool file is invalid: {e}") from None

    def pool(self, name: str | None, num_nodes: int) -> Pool:
        pools = self.pool_map()
        pool = pools.get(name or "")
        if pool is None:
            known = ", ".join(sorted(pools)) or "none configured"
            raise SkydError(ErrorCode.INVALID_TASK, f"resources.infra: no ssh node pool {name!r} "
                            f"(pools: {known})")
        if len(pool.hosts) < num_nodes:
            raise SkydError(ErrorCode.INVALID_TASK, f"pool {name!r} has {len(pool.hosts)} host(s); "
                            f"the task needs {num_nodes}")
        return pool

    def allocate(self, cluster: str, pool_name: str | None, num_nodes: int, uid: int,
                 login: str) -> list[NodeInfo]:
        """Free hosts of the pool, in the pool's order: a host serves one cluster at a time.
        The nodes are reached as the owner (uid, login) unless the pool has a shared login."""
        pool = self.pool(pool_name, num_nodes)
        taken = self.host_owners()
        free = [h for h in pool.hosts if (h.ip, h.port) not in taken]
        free.sort(key=lambda h: h.address in self.host_trouble)    # stable: pool order
        if len(free) < num_nodes:
            raise SkydError(ErrorCode.UNAVAILABLE,
                            f"pool {pool.name!r} has {len(free)} free host(s) of "
                            f"{len(pool.hosts)}; the task needs {num_nodes}",
                            "down a cluster on this pool, or add hosts to it")
        return [pool.node(h, i, ssh_node_dir(cluster, i), uid, login)
                for i, h in enumerate(free[:num_nodes])]

    def free_hosts(self, pool_name: str) -> int:
        """Hosts of the pool serving no cluster (0 for an unknown pool)."""
        try:
            pool = self.pool_map().get(pool_name)
        except SkydError:
            return 0
        if pool is None:
            return 0
        taken = self.host_owners()
        return sum((h.ip, h.port) not in taken for h in pool.hosts)

    def host_owners(self) -> dict[tuple[str, int], str]:
        """(ip, port) of every ssh host serving a cluster -> that cluster's name."""
        return {(n.ip, n.port): e.record.name for e in self.clusters.values()
                if e.record.infra != "local" for n in e.record.nodes}

    def busy(self, name: str) -> bool:
        return any(c == name for c, _ in self.jobs)

    def _changed(self, cluster: str) -> None:
        for listener in self.listeners:
            listener(cluster)

    async def set_autostop(self, name: str, uid: int, admin: bool, minutes: float,
                           down: bool) -> ClusterRecord:
        entry = self.require(name, uid, admin)
        entry.record = _with(entry.record, autostop=minutes, autostop_down=down,
                             last_use=time.time())
        entry.autostopping = False
        await self.store.save_cluster(entry.record, entry.next_job_id)
        return entry.record

    def idle_clusters(self, now: float, busy: Callable[[str], bool]) -> list[ClusterEntry]:
        """UP clusters idle for longer than their autostop, not yet being stopped."""
        due = []
        for entry in self.clusters.values():
            rec = entry.record
            if rec.autostop < 0 or rec.status != "UP" or entry.autostopping:
                continue
            if busy(rec.name) or self.busy(rec.name):
                entry.last_busy = now
                continue
            if now - max(entry.last_busy, rec.last_use) >= rec.autostop * 60:
                due.append(entry)
        return due

    def node_health(self, host: str, ok: bool, reason: str) -> None:
        """A node started or stopped answering: its cluster's status says so."""
        if ok:
            self.host_trouble.pop(host, None)
        else:
            self.host_trouble[host] = reason
        for entry in self.clusters.values():
            rec = entry.record
            if not any(n.host == host for n in rec.nodes):
                continue
            if not ok and rec.status == "UP":
                self.store.save_cluster(_with(rec, status="UNHEALTHY", status_reason=reason),
                                        entry.next_job_id)
                entry.record = _with(rec, status="UNHEALTHY", status_reason=reason)
                self._changed(rec.name)
            elif ok and rec.status == "UNHEALTHY":
                entry.record = _with(rec, status="UP", status_reason="")
                self.store.save_cluster(entry.record, entry.next_job_id)
                self._changed(rec.name)

    # ---- clusters ----------------------------------------------------------------------

    def get(self, name: str) -> ClusterEntry | None:
        return self.clusters.get(name)

    def require(self, name: str, uid: int, admin: bool) -> ClusterEntry:
        """The cluster if the caller may act on it; someone else's answers exactly as a
        missing one (its owner and its existence stay private); admins may act on any."""
        entry = self.clusters.get(name)
        if entry is None or (entry.record.uid != uid and not admin):
            raise SkydError(ErrorCode.NOT_FOUND, f"cluster {name!r} does not exist",
                            "list clusters with: skyctl status")
        return entry

    async def save_cluster(self, record: ClusterRecord) -> None:
        entry = self.clusters.get(record.name)
        if entry is None:
            entry = self.clusters[record.name] = ClusterEntry(record)
        if record.status != entry.record.status:
            entry.autostopping = False
        entry.record = record
        await self.store.save_cluster(record, entry.next_job_id)
        self.schedule_jobs(record.name)
        self._changed(record.name)

    async def drop_cluster(self, name: str) -> None:
        self.clusters.pop(name, None)
        for key in [k for k in self.jobs if k[0] == name]:
            live = self.jobs.pop(key)
            if live.watcher is not None:
                live.watcher.cancel()
            live.topic.notify()
        await self.store.delete_cluster(name)
        await asyncio.to_thread(_remove_cluster_dirs, self.state_dir, name)
        self._changed(name)

    # ---- jobs --------------------------------------------------------------------------

    async def new_job(self, cluster: str, name: str, uid: int, user: str,
                      request_id: str) -> JobRecord:
        entry = self.clusters[cluster]
        # An admin's exec on someone's cluster is a job of that someone (it runs as them).
        uid, user = entry.record.uid, entry.record.user
        job = JobRecord(cluster=cluster, job_id=entry.next_job_id, name=name, status="PENDING",
                        user=user, uid=uid, submitted_at=time.time(), request_id=request_id)
        entry.next_job_id += 1
        # Nothing left from an earlier cluster of this name passes for this job's files.
        await asyncio.to_thread(privilege.remove_private_tree,
                                control_root(self.state_dir) / cluster / str(job.job_id))
        self.jobs[(cluster, job.job_id)] = LiveJob(job)
        await asyncio.gather(self.store.save_cluster(entry.record, entry.next_job_id),
                             self.store.save_job(job, None))    # one commit
        return job

    def job_of_request(self, request_id: str) -> LiveJob | None:
        for live in self.jobs.values():
            if live.record.request_id == request_id:
                return live
        return None

    def live_jobs(self, cluster: str) -> list[JobEntry]:
        return [JobEntry(j.record, j.handle_bytes) for (c, _), j in self.jobs.items()
                if c == cluster]

    async def save_job(self, record: JobRecord, handle: bytes | None) -> None:
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
            self.schedule_jobs(record.cluster)     # its room is free for the next ones
        elif live.handle is not None and live.handle.spawned and live.watcher is None:
            self._watch(live)
        elif live.handle is not None and not live.handle.spawned:
            self.schedule_jobs(record.cluster)
        live.topic.notify()
        self._changed(record.cluster)

    # ---- the job queue of each cluster -------------------------------------------------

    def schedule_jobs(self, cluster: str) -> None:
        """Start the cluster's waiting jobs in submission order while they fit: like
        SkyPilot's job queue, a job that does not fit holds back the ones behind it."""
        entry = self.clusters.get(cluster)
        if entry is None or entry.record.status not in ("UP", "UNHEALTHY"):
            return
        infra, nodes = get_infra(entry.record.infra), entry.record.nodes
        jobs = sorted(((j, j.handle) for (c, _), j in self.jobs.items()
                       if c == cluster and j.handle is not None),
                      key=lambda jh: jh[0].record.job_id)
        used = sum(h.cpus for j, h in jobs if h.spawned or j.spawning)
        room = min((infra.capacity(n) for n in nodes), default=0.0)
        for live, handle in jobs:
            if handle.spawned or live.spawning:
                continue
            if used + handle.cpus > room + 1e-9 and used > 0:
                break      # it waits for room; so do the jobs behind it
            used += handle.cpus
            live.spawning = True
            asyncio.get_running_loop().create_task(self._spawn(live, handle, infra, nodes))

    async def _spawn(self, live: LiveJob, prepared: JobHandle, infra: Infra,
                     nodes: list[NodeInfo]) -> None:
        rec = live.record
        entry = self.clusters.get(rec.cluster)
        # A job runs as its cluster's owner, whoever asked for it (an admin's exec too).
        owner = entry.record.uid if entry is not None else rec.uid
        # Where its output and exit status go is the daemon's choice, never the worker's.
        handle = msgspec.structs.replace(prepared, nodes=[
            msgspec.structs.replace(np, ctl=control_dir(self.state_dir, rec.cluster,
                                                        rec.job_id, np.rank))
            for np in prepared.nodes])
        try:
            handle = await infra.spawn(handle, nodes, owner, user_identity(owner)[1])
        except Exception as e:  # noqa: BLE001 - the job fails, the daemon goes on
            log.warning("job %s on %s could not start: %s", rec.job_id, rec.cluster, e)
            live.spawning = False
            await self.save_job(msgspec.structs.replace(rec, status="FAILED",
                                                        ended_at=time.time()), None)
            return
        live.spawning = False
        if (rec.cluster, rec.job_id) not in self.jobs:       # cancelled meanwhile
            await infra.cancel(handle, nodes)
            return
        await self.save_job(msgspec.structs.replace(live.record, status="RUNNING",
                                                    started_at=time.time()),
                            handle_enc.encode(handle))

    async def fail_unstarted_job(self, request_id: str, reason: str) -> None:
        """A launch or exec that ended before its job started: the job cannot run now."""
        live = self.job_of_request(request_id)
        if live is not None and live.record.status in ("PENDING", "SETTING_UP"):
            status = "CANCELLED" if reason == "cancelled" else "FAILED"
            log.warning("job %s on %s ends %s before it started: its request ended (%s); "
                        "handle %s", live.record.job_id, live.record.cluster, status, reason,
                        live.handle)
            await self.save_job(msgspec.structs.replace(live.record, status=status,
                                                        ended_at=time.time()), None)

    async def apply(self, msg: SaveCluster | SaveJob | DropCluster,
                    req: protocol.RequestRecord) -> None:
        """A change reported by the worker of `req`. Workers run as users: what they say
        is checked against what the request may change before it is applied."""
        why = self._refuse(msg, req)
        if why:
            log.warning("request %s: worker message refused: %s", req.id, why)
            return
        if isinstance(msg, SaveCluster):
            await self.save_cluster(msg.record)
        elif isinstance(msg, SaveJob):
            await self.save_job(msg.record, msg.handle)
        elif isinstance(msg, DropCluster):
            await self.drop_cluster(msg.name)

    def _refuse(self, msg: SaveCluster | SaveJob | DropCluster,
                req: protocol.RequestRecord) -> str:
        name = msg.name if isinstance(msg, DropCluster) else \
            msg.record.name if isinstance(msg, SaveCluster) else msg.record.cluster
        if name != req.cluster:
            return f"it names cluster {name!r}, the request is for {req.cluster!r}"
        entry = self.clusters.get(name)
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
            if old.infra != "local" and not same_hosts(old.nodes, new.nodes):
                return "it changes the cluster's hosts or how they are reached"
        if isinstance(msg, SaveJob):
            live = self.jobs.get((msg.record.cluster, msg.record.job_id))
            if live is None:
                return f"no job {msg.record.job_id} waits on {name!r}"
            if (msg.record.uid, msg.record.request_id) != (live.record.uid, live.record.request_id):
                return "it changes the job's owner or request"
            if msg.handle is not None and any(np.pid or np.start or np.ctl for np in
                                              handle_dec.decode(msg.handle).nodes):
                return "a job handle that claims to be started"
        return ""

    def _watch(self, live: LiveJob) -> None:
        live.watcher = asyncio.get_running_loop().create_task(
            self._watch_job(live), name=f"job-{live.record.cluster}-{live.record.job_id}")

    def infra_of(self, cluster: str) -> tuple[Infra, list[NodeInfo]]:
        entry = self.clusters.get(cluster)
        if entry is None:
            return get_infra("local"), []
        return get_infra(entry.record.infra), entry.record.nodes

    async def _watch_job(self, live: LiveJob) -> None:
        assert live.handle is not None
        infra, nodes = self.infra_of(live.record.cluster)
        outcome = await infra.wait_outcome(live.handle, nodes)
        if outcome.status == "FAILED":
            # One node failed: the job has failed; stop its other nodes.
            await infra.kill(live.handle, nodes)
            if outcome.exit_code is None:
                log.warning("job %s on %s ended without an exit status: %s (runners %s)",
                            live.record.job_id, live.record.cluster, outcome.reason,
                            [(n.pid, n.start) for n in live.handle.nodes])
        rec = msgspec.structs.replace(live.record, status=outcome.status,
                                      exit_code=outcome.exit_code, ended_at=time.time())
        await self.save_job(rec, None)

    async def cancel_job(self, cluster: str, job_id: int) -> bool:
        live = self.jobs.get((cluster, job_id))
        if live is None:
            return False
        if live.handle is None:
            # Not started yet (its launch/exec is still queued or setting up).
            return False
        if not live.handle.spawned:
            # Waiting for room on the cluster: it simply never starts.
            await self.save_job(msgspec.structs.replace(live.record, status="CANCELLED",
                                                        ended_at=time.time()), None)
            return True
        infra, nodes = self.infra_of(cluster)
        await infra.cancel(live.handle, nodes)
        return True

    def job_topic(self, cluster: str, job_id: int) -> Topic | None:
        live = self.jobs.get((cluster, job_id))
        return live.topic if live else None

    async def close(self) -> None:
        self._closing = True
        for live in self.jobs.values():
            if live.watcher is not None:
                live.watcher.cancel()
                with contextlib.suppress(BaseException):
                    await live.watcher

    # ---- what a long request needs before it runs ----------------------------------------

    def check_submit(self, op: protocol.Op, uid: int, admin: bool,
                     queued_launch_owner: Callable[[str], int | None],
                     internal: bool = False) -> protocol.Op:
        """Refuse at submission what can never run; name a launch's cluster if unnamed.
        The task is validated again here: the daemon trusts no client's checks.
        `internal`: submitted by the daemon itself (the jobs controller, autostop)."""
        if isinstance(op, (protocol.Launch, protocol.Exec)):
            try:
                op = msgspec.structs.replace(op, task=normalise(op.task))
            except TaskError as e:
                raise SkydError(ErrorCode.INVALID_TASK, f"invalid task: {e}") from None
        if isinstance(op, protocol.Launch):
            kind, pool = infra_kind(op.task.resources.infra)
            if kind == "ssh":
                self.pool(pool, op.task.num_nodes)
            if op.cluster is None:
                op = msgspec.structs.replace(op, cluster=generate_cluster_name(uid))
            assert op.cluster is not None
            check_cluster_name(op.cluster)
            if (op.cluster.startswith(MANAGED_PREFIX) and not internal
                    and op.cluster not in self.clusters):
                raise SkydError(ErrorCode.BAD_REQUEST, f"cluster names starting with "
                                f"{MANAGED_PREFIX!r} are reserved for managed jobs",
                                "pick another name, or use: skyctl jobs launch")
            self._check_owner(op.cluster, uid, admin, queued_launch_owner)
            entry = self.clusters.get(op.cluster)
            if entry is not None and entry.record.num_nodes != op.task.num_nodes:
                raise SkydError(ErrorCode.CONFLICT,
                                f"cluster {op.cluster!r} has {entry.record.num_nodes} node(s); "
                                f"the task asks for {op.task.num_nodes}",
                                "use another cluster name, or down this one first")
            wanted = "local" if kind == "local" else f"ssh/{pool}"
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
        name = op.target_cluster()
        if name is not None:
            self._check_owner(name, uid, admin, queued_launch_owner, must_exist=True)
        return op

    def _check_owner(self, name: str, uid: int, admin: bool,
                     queued_launch_owner: Callable[[str], int | None],
                     must_exist: bool = False) -> None:
        """A cluster, or the queued launch that will create it, belongs to one person.
        Acting on someone else's answers as a missing cluster; launching onto a name
        someone else holds says only that the name is taken (never by whom)."""
        entry = self.clusters.get(name)
        owner = entry.record.uid if entry is not None else queued_launch_owner(name)
        if owner is not None and (owner == uid or admin):
            return
        if must_exist:
            self.require(name, uid, admin)      # raises NOT_FOUND: missing, or not theirs
            return
        if owner is not None:
            raise SkydError(ErrorCode.PERMISSION_DENIED,
                            f"cluster name {name!r} is taken by another user",
                            "pick another name with: -c NAME")

    async def prepare(self, op: protocol.Op, req: protocol.RequestRecord
                      ) -> tuple[ClusterRecord | None, list[JobEntry]]:
        """At dispatch: the cluster as it is now, and the job this request creates."""
        name = op.target_cluster()
        if name is None:
            return None, []
        entry = self.clusters.get(name)
        if isinstance(op, protocol.Launch):
            if entry is None:
                kind, pool = infra_kind(op.task.resources.infra)
                record = ClusterRecord(name=name, status="INIT",
                                       infra="local" if kind == "local" else f"ssh/{pool}",
                                       num_nodes=op.task.num_nodes, user=req.user, uid=req.uid,
                                       launched_at=time.time(), last_use=time.time(),
                                       resources=describe_resources(op.task),
                                       nodes=self.allocate(name, pool, op.task.num_nodes,
                                                           req.uid, req.user)
                                       if kind == "ssh" else [])
                await self.save_cluster(record)
                entry = self.clusters[name]
        if entry is None:
            raise SkydError(ErrorCode.NOT_FOUND, f"cluster {name!r} does not exist")
        if entry.record.uid != req.uid and not self.is_admin(req.uid):
            # Checked at submission too; the owner may have changed since (down + launch).
            raise SkydError(ErrorCode.PERMISSION_DENIED,
                            f"cluster {name!r} belongs to {entry.record.user}")
        if isinstance(op, (protocol.Launch, protocol.Exec)):
            if isinstance(op, protocol.Exec) and entry.record.status != "UP":
                raise SkydError(ErrorCode.CONFLICT,
                                f"cluster {name!r} is {entry.record.status}, not UP",
                                f"start it with: skyctl start {name}")
            live = self.job_of_request(req.id)
            if live is None and op.task.run is not None:
                # Run again after a restart, its job may have finished meanwhile: never
                # submit it twice.
                done = await self.store.job_of_request(name, req.id)
                if done is not None:
                    return entry.record, [JobEntry(done, None)]
                await self.new_job(name, op.task.name or "-", req.uid, req.user, req.id)
                live = self.job_of_request(req.id)
            jobs = [JobEntry(live.record, live.handle_bytes)] if live else []
            return entry.record, jobs
        if isinstance(op, (protocol.Stop, protocol.Down)) and entry.record.infra == "local":
            # The worker stops them as their owner; that they were cancelled is the
            # daemon's to record, in its own files.
            for (c, _), live in self.jobs.items():
                if c == name and live.handle is not None and live.handle.spawned:
                    local_mark_cancelled(live.handle)
        return entry.record, self.live_jobs(name)


MANAGED_PREFIX = "managed-"      # managed job N runs on cluster managed-N


# ASCII only (with IGNORECASE, [a-z] would also take the Kelvin sign and the long s);
# fullmatch, since `$` also matches before a final newline.
_CLUSTER_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE | re.ASCII)


def check_cluster_name(name: str) -> None:
    if not _CLUSTER_NAME.fullmatch(name):
        raise SkydError(ErrorCode.BAD_REQUEST,
                        f"invalid cluster name {name!r}: use 1-63 letters, digits and '-', "
                        "starting and ending with a letter or digit")


def generate_cluster_name(uid: int) -> str:
    user = re.sub(r"[^a-z0-9]", "", user_identity(uid)[0].lower())[:16] or "user"
    return f"sky-{secrets.token_hex(2)}-{user}"


def describe_resources(task: Task) -> str:
    parts = []
    if task.resources.cpus is not None:
        parts.append(f"cpus={task.resources.cpus}")
    if task.resources.memory is not None:
        parts.append(f"mem={task.resources.memory}")
    return ", ".join(parts) or "-"


def _inside(path: str, directory: Path) -> bool:
    p = Path(path)
    return p.is_absolute() and ".." not in p.parts and p.is_relative_to(directory)


def _remove_cluster_dirs(state_dir: str, name: str) -> None:
    """After down: the cluster's control files (the daemon's) and its emptied directory
    (the owner removed what was in it; its parent is the daemon's)."""
    privilege.remove_private_tree(control_root(state_dir) / name)
    with contextlib.suppress(OSError):
        os.rmdir(local_cluster_dir(state_dir, name))


def _with(record: ClusterRecord, **changes) -> ClusterRecord:
    return msgspec.structs.replace(record, **changes)
