"""Long cluster requests: plain blocking functions that run in a worker process.

Each reports state changes to the daemon as they happen (SaveCluster, SaveJob), so a
daemon restart finds the truth in SQLite, and an interrupted launch can be finished
instead of repeated.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import msgspec

from skyd import privilege, protocol
from skyd.clusters.gpuchecks import job_gpus
from skyd.infra.gpus import gpu_env
from skyd.infra.base import JobHandle, Provisioner, handle_dec, handle_enc, node_ips
from skyd.protocol import (JOB_FINISHED, ClusterRecord, ClusterState, ErrorCode, Exec, JobRecord,
                           JobStatus, Launch, LaunchResult, NodeInfo, SkydError)
from skyd.taskspec import Task, parse_amount, shortfall
from skyd.requests.context import WorkerContext, register_long_ops
from skyd.requests.messages import Assignment, DropCluster, JobEntry, SaveCluster, SaveJob



def task_env(ctx: WorkerContext, task: Task, cluster: ClusterRecord, node: NodeInfo,
             job_id: int | None, setup: bool) -> dict[str, str]:
    """A clean environment: the task's envs and secrets and SkyPilot's variables,
    never the daemon's own environment."""
    a = ctx.assignment
    env = privilege.login_env(a.uid)
    env.update(HOME=a.home, USER=a.user, LOGNAME=a.user, PYTHONUNBUFFERED="1")
    # normalise() made every value a string (the daemon validates every task it accepts).
    env.update({k: str(v) for k, v in task.envs.items()})
    env.update({k: str(v) for k, v in task.secrets.items()})
    ips = node_ips(cluster.nodes)
    prefix = "SKYPILOT_SETUP_" if setup else "SKYPILOT_"
    env[prefix + "NODE_RANK"] = str(node.rank)
    env[prefix + "NODE_IPS"] = ips
    env[prefix + "NUM_NODES"] = str(cluster.num_nodes)
    # GPUs: setup sees what the node holds; a job, the GPUs it asked for (which ones, the
    # daemon says when it starts it: CUDA_VISIBLE_DEVICES).
    held = next((s for s in cluster.held if s.rank == node.rank), None)
    if setup:
        env["SKYPILOT_NUM_GPUS_PER_NODE"] = str(len(held.gpus) if held else 0)
        env.update(gpu_env(held.gpus if held else None))
    else:
        env["SKYPILOT_NUM_GPUS_PER_NODE"] = str(job_gpus(cluster, task))
    env["SKYPILOT_CLUSTER_NAME"] = cluster.name
    if job_id is not None:
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(a.jobs[0].record.submitted_at))
        env["SKYPILOT_TASK_ID"] = f"sky-{stamp}_{cluster.name}_{job_id}"
        env["SKYPILOT_JOB_ID"] = str(job_id)
    env["SKYPILOT_CLUSTER_INFO"] = msgspec.json.encode(
        {"cluster_name": cluster.name, "infra": cluster.infra,
         "num_nodes": cluster.num_nodes}).decode()
    return env


def _save_job(ctx: WorkerContext, job: JobRecord, status: JobStatus, handle: JobHandle | None = None,
              **changes) -> JobRecord:
    job = msgspec.structs.replace(job, status=status, **changes)
    ctx.send(SaveJob(job, handle_enc.encode(handle) if handle else None))
    return job


def _run_task(ctx: WorkerContext, task: Task, cluster: ClusterRecord, with_setup: bool) -> int | None:
    """Sync files, optionally run setup, start `run` as the assigned job."""
    entry = ctx.assignment.jobs[0] if ctx.assignment.jobs else None
    if entry is not None and (entry.handle is not None or entry.record.status in JOB_FINISHED):
        ctx.say(f"Job {entry.record.job_id} was already submitted; not submitting it again.")
        return entry.record.job_id
    infra = ctx.provisioners.get(cluster.infra)
    if task.workdir:
        ctx.say(f"Syncing workdir {task.workdir} to {cluster.num_nodes} node(s)...")
        infra.sync_workdir(cluster.nodes, task.workdir)
    if task.file_mounts:
        ctx.say(f"Syncing {len(task.file_mounts)} file mount(s)...")
        infra.sync_file_mounts(cluster.nodes, task.file_mounts)
    job = entry.record if entry else None
    if with_setup and task.setup:
        if job is not None:
            job = _save_job(ctx, job, JobStatus.SETTING_UP)
        ctx.say("Running setup...")
        try:
            infra.run_setup(cluster.nodes, task.setup,
                            lambda n: task_env(ctx, task, cluster, n, None, setup=True))
        except SkydError:
            if job is not None:
                _save_job(ctx, job, JobStatus.FAILED_SETUP, ended_at=time.time())
            raise
        ctx.say("Setup done.")
    if job is None:
        return None
    handle = infra.prepare_job(cluster.nodes, job.job_id, task.run or "",
                               lambda n: task_env(ctx, task, cluster, n, job.job_id, setup=False))
    cpus = parse_amount("cpus", task.resources.cpus)
    if cpus is not None:
        handle = msgspec.structs.replace(handle, cpus=cpus.value)
    handle = msgspec.structs.replace(handle, gpus=job_gpus(cluster, task))
    # The daemon starts it, in submission order, when the cluster has room for it.
    _save_job(ctx, job, JobStatus.PENDING, handle)
    ctx.say(f"Job {job.job_id} submitted to cluster {cluster.name}.")
    return job.job_id


def launch(ctx: WorkerContext) -> LaunchResult:
    op: Launch = ctx.op  # type: ignore[assignment]
    a = ctx.assignment
    cluster = a.cluster
    assert cluster is not None, "the daemon assigns the cluster record"
    if cluster.status != ClusterState.UP or len(cluster.nodes) != cluster.num_nodes:
        ctx.say(f"Provisioning cluster {cluster.name} on {cluster.infra} "
                f"({cluster.num_nodes} node{'s' if cluster.num_nodes > 1 else ''})...")
        nodes = ctx.provisioners.get(cluster.infra).provision(a.state_dir, cluster)
        cluster = msgspec.structs.replace(cluster, nodes=nodes, status=ClusterState.INIT)
        ctx.send(SaveCluster(cluster))
        check_fits(op.task, nodes)
    else:
        ctx.say(f"Reusing cluster {cluster.name} (UP).")
    # As in SkyPilot, a launch runs setup again, also on a cluster that is already up.
    job_id = _run_task(ctx, op.task, cluster, with_setup=True)
    changes = {}
    if op.idle_minutes_to_autostop is not None:
        changes = {"autostop": op.idle_minutes_to_autostop, "autostop_down": op.down}
    if cluster.status != ClusterState.UP or changes:
        cluster = msgspec.structs.replace(cluster, status=ClusterState.UP, status_reason="",
                                          last_use=time.time(), **changes)
        ctx.send(SaveCluster(cluster))
    return LaunchResult(cluster=cluster.name, job_id=job_id)


def exec_(ctx: WorkerContext) -> LaunchResult:
    op: Exec = ctx.op  # type: ignore[assignment]
    cluster = _require_up(ctx)
    job_id = _run_task(ctx, op.task, cluster, with_setup=False)
    return LaunchResult(cluster=cluster.name, job_id=job_id)


def check_fits(task: Task, nodes: list[NodeInfo]) -> None:
    """Every node must offer what the task asks for (where the node's size is known)."""
    for n in nodes:
        why = shortfall(task, n.cpus, n.memory_bytes)
        if why:
            raise SkydError(ErrorCode.INVALID_TASK, f"node {n.rank} ({n.host}) {why}")


def _require_up(ctx: WorkerContext) -> ClusterRecord:
    cluster = ctx.assignment.cluster
    if cluster is None:
        raise SkydError(ErrorCode.NOT_FOUND, "the cluster no longer exists")
    if cluster.status != ClusterState.UP:
        raise SkydError(ErrorCode.CONFLICT, f"cluster {cluster.name} is {cluster.status}, not UP",
                        f"start it with: skyctl start {cluster.name}")
    return cluster


def _kill_jobs(ctx: WorkerContext, infra: Provisioner, cluster: ClusterRecord,
               entries: list[JobEntry], why: str) -> None:
    live = [(e.record, handle_dec.decode(e.handle)) for e in entries if e.handle]
    infra.stop_jobs(cluster.nodes, [h for _, h in live if h.spawned])
    for rec, h in live:
        if not h.spawned:      # still waiting for room: it will never start now
            _save_job(ctx, rec, JobStatus.CANCELLED, ended_at=time.time())
        ctx.say(f"Job {rec.job_id} {why}.")


def stop(ctx: WorkerContext) -> ClusterRecord:
    cluster = ctx.assignment.cluster
    assert cluster is not None
    ctx.say(f"Stopping cluster {cluster.name}...")
    _kill_jobs(ctx, ctx.provisioners.get(cluster.infra), cluster, ctx.assignment.jobs, "killed by stop")
    cluster = msgspec.structs.replace(cluster, status=ClusterState.STOPPED, status_reason="stopped by user",
                                      last_use=time.time())
    ctx.send(SaveCluster(cluster))
    return cluster


def start(ctx: WorkerContext) -> ClusterRecord:
    cluster = ctx.assignment.cluster
    assert cluster is not None
    ctx.say(f"Starting cluster {cluster.name}...")
    nodes = ctx.provisioners.get(cluster.infra).provision(ctx.assignment.state_dir, cluster)
    cluster = msgspec.structs.replace(cluster, status=ClusterState.UP, nodes=nodes, status_reason="",
                                      last_use=time.time())
    ctx.send(SaveCluster(cluster))
    return cluster


def down(ctx: WorkerContext) -> str:
    cluster = ctx.assignment.cluster
    assert cluster is not None
    ctx.say(f"Tearing down cluster {cluster.name}...")
    infra = ctx.provisioners.get(cluster.infra)
    try:
        _kill_jobs(ctx, infra, cluster, ctx.assignment.jobs, "killed by down")
    except SkydError as e:
        # A node that does not answer cannot hold the others (or its host) hostage.
        ctx.say(f"warning: could not stop the jobs on every node: {e.message}")
    infra.teardown(ctx.assignment.state_dir, cluster)
    ctx.send(DropCluster(cluster.name))
    ctx.say(f"Cluster {cluster.name} is down.")
    return cluster.name


# ---- the worker's table of long requests -------------------------------------------------

LONG_HANDLERS: dict[type, Callable[[WorkerContext], object]] = {
    Launch: launch, Exec: exec_, protocol.Stop: stop, protocol.Start: start, protocol.Down: down,
}


def prepare_as_root(a: Assignment, op: protocol.Op) -> None:
    """Work that needs the daemon's privileges, done before the worker drops them: the
    cluster's directory (local) or the owner's ssh control directory (ssh), each created
    in a directory of the daemon's and handed to the owner."""
    if a.cluster is None:
        return
    if a.cluster.infra == "local":
        if isinstance(op, (Launch, protocol.Start)):
            from skyd.infra import local
            local.prepare_cluster_dir(a.state_dir, a.cluster, a.uid, a.gid)
        return
    base = os.path.join(a.state_dir, "ssh")
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o711)
    control = os.path.join(base, str(a.uid))       # this user's ssh multiplexing sockets
    os.makedirs(control, mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(control, a.uid, a.gid)


register_long_ops(LONG_HANDLERS, prepare_as_root)
