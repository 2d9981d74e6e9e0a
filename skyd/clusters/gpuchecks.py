"""GPU questions about one cluster or one person, asked at submission and by workers: does
a job's ask fit its cluster's GPUs, how many GPUs a job takes, what a stopped cluster asks
for again at start, and the per-user caps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from skyd.clusters.placement import Demand
from skyd.protocol import ClusterRecord, ErrorCode, SkydError
from skyd.taskspec import GpuAsk, Task, infra_kind, parse_accelerators

if TYPE_CHECKING:
    from skyd.clusters.placements import Placements


def per_node(record: ClusterRecord) -> tuple[str, int]:
    """(model, GPUs on its smallest node) a cluster holds, or ("", 0)."""
    if len(record.held) < record.num_nodes:
        return "", 0
    counts = [len(s.gpus) for s in record.held]
    models = {s.gpu_model for s in record.held if s.gpus}
    return (models.pop() if len(models) == 1 else "", min(counts) if counts else 0)


def matching(asks: tuple[GpuAsk, ...], model: str) -> GpuAsk | None:
    """The option of a task that a cluster's GPUs of `model` serve ("": any model)."""
    for a in asks:
        if not model or a.model.lower() == model.lower():
            return a
    return None


def check_job_gpus(record: ClusterRecord, task: Task) -> None:
    """A job on an existing cluster asks at most the GPUs each node of it holds."""
    asks = parse_accelerators(task.resources.accelerators)
    if not asks or record.infra.startswith("slurm"):     # Slurm's GRES: Slurm's to check
        return
    wanted = " or ".join(f"{a.count}× {a.model}" for a in asks)
    model, count = per_node(record)
    if count == 0:
        raise SkydError(ErrorCode.INVALID_TASK, f"cluster {record.name!r} holds no GPUs; the "
                        f"task asks for {wanted}",
                        "launch a cluster with GPUs: skyctl launch --gpus MODEL:COUNT")
    ask = matching(asks, model)
    if ask is None:
        raise SkydError(ErrorCode.INVALID_TASK, f"cluster {record.name!r} has {model} GPUs; "
                        f"the task asks for {wanted}")
    if ask.count > count:
        raise SkydError(ErrorCode.INVALID_TASK, f"cluster {record.name!r} has {count}× "
                        f"{model or 'GPU'} per node; the task asks for {ask.count}")


def job_gpus(record: ClusterRecord, task: Task) -> int:
    """GPUs per node a job of `task` takes on its cluster (0: none; on Slurm, whose steps
    Slurm gives the allocation's GPUs, none that skyd counts)."""
    if record.infra.startswith("slurm"):
        return 0
    ask = matching(parse_accelerators(task.resources.accelerators), per_node(record)[0])
    return ask.count if ask is not None else 0


def restart_demand(record: ClusterRecord) -> Demand | None:
    """What a stopped cluster asks again at start: the GPUs it held, on its own hosts (its
    CPUs and memory it kept). None: nothing to wait for."""
    held = sorted(record.held, key=lambda s: s.rank)
    if not held or any(s.exclusive for s in held) or not any(s.gpus for s in held):
        return None
    model, count = per_node(record)
    _, pool = infra_kind(record.infra)
    return Demand(pool=pool or "local", num_nodes=len(held),
                  options=(GpuAsk(model, count),), pinned=tuple(s.host for s in held))


def check_caps(p: Placements, demand: Demand | None, uid: int, internal: bool) -> None:
    """max_gpus_per_user and max_clusters_per_user at submission. What can never fit under
    a cap is refused; what fits later is refused for people (clear at once) and waits for
    the daemon's own launches (managed jobs queue)."""
    caps = p.caps
    if uid in caps.uncapped:
        return
    want = demand.gpus * demand.num_nodes if demand is not None else 0
    if caps.gpus and want > caps.gpus:
        raise SkydError(ErrorCode.INVALID_TASK, f"the task asks for {want} GPUs; "
                        f"max_gpus_per_user is {caps.gpus}")
    if internal:
        return
    mine = [c for c in p.claims.by_key.values() if c.uid == uid]
    if caps.gpus and want:
        held = p.ledger.user_gpus.get(uid, 0) + sum(c.demand.gpus * c.demand.num_nodes
                                                      for c in mine)
        if held + want > caps.gpus:
            raise SkydError(ErrorCode.BUSY, f"max_gpus_per_user is {caps.gpus}: you hold or "
                            f"wait for {held} GPUs and the task asks for {want}",
                            "down a cluster you no longer need (skyctl gpus shows yours), or "
                            "queue it as a managed job: skyctl jobs launch")
    if caps.clusters:
        have = p.clusters_of(uid) + sum(c.key not in p.registry.clusters for c in mine)
        if have >= caps.clusters:
            raise SkydError(ErrorCode.BUSY, f"max_clusters_per_user is {caps.clusters}: you "
                            f"have {have} clusters", "down one first: skyctl down NAME")
