"""The clusters package as the daemon holds it (Clusters): one object per responsibility, built
together and started and stopped together.

    registry   the clusters (registry.py)
    queue      each cluster's job queue: starting, watching, cancelling jobs (jobqueue.py)
    placements the host ledger, GPU detection, and requests waiting for room (placements.py)
    hosts      the ssh node pools' hosts and their health (hosts.py)
    autostop   which idle clusters are due to stop (autostop.py)
    workload   what the scheduler calls: admit, prepare, apply, on_end (workload.py)
"""

from __future__ import annotations

from typing import Callable

from skyd.clusters.autostop import Autostop
from skyd.clusters.claims import Caps
from skyd.clusters.hosts import HostPools
from skyd.clusters.jobqueue import JobQueue
from skyd.clusters.placements import Placements
from skyd.clusters.registry import Registry
from skyd.clusters.workload import ClusterWorkload
from skyd.infra import Runners
from skyd.infra.nodepools import NodePools
from skyd.protocol import GpuHost
from skyd.sizing.hardware import Hardware
from skyd.store import Store


class Clusters:
    def __init__(self, store: Store, state_dir: str, host: Hardware,
                 is_admin: Callable[[int], bool], runners: Runners,
                 pools: NodePools | None = None, ssh_known_hosts: str = "",
                 caps: Caps | None = None):
        self.store = store
        self.host = host              # what a local node has
        self.registry = Registry(store, state_dir, runners)
        self.placements = Placements(self.registry, pools, host, caps)
        ledger = self.placements.ledger
        self.queue = JobQueue(self.registry,
                              lambda key: bool(key in ledger.hosts and ledger.hosts[key].gpus))
        self.hosts = HostPools(self.registry, pools, self.placements.trouble,
                               self.placements.lost)
        self.autostop = Autostop(self.registry, self.queue)
        self.workload = ClusterWorkload(self.registry, self.queue, self.hosts, self.placements,
                                        host, is_admin, self.drop_cluster, ssh_known_hosts)
        # What listings read: the clusters by name, the unfinished jobs by (cluster, id).
        self.clusters = self.registry.clusters
        self.jobs = self.queue.jobs

    async def load(self) -> None:
        """The clusters and their unfinished jobs; then the jobs that fit are started."""
        await self.registry.load()
        await self.queue.load()
        await self.placements.load()
        for name in self.clusters:
            self.queue.start_ready(name)

    async def drop_cluster(self, name: str) -> None:
        """Forget a cluster and its jobs (torn down, or given up on)."""
        self.queue.forget(name)
        await self.registry.drop(name)
        self.placements.release(name)

    def gpu_hosts(self, viewer: Callable[[str], str], pools: list[str] | None = None
                  ) -> list[GpuHost]:
        """Every host's GPUs and who holds them (`viewer`: a cluster's name as the caller
        may see it)."""
        return self.placements.gpu_hosts(viewer, self.queue.job_gpus(), pools)

    async def close(self) -> None:
        await self.placements.close()
        await self.queue.close()
