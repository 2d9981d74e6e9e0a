"""The ssh node pools' hosts: which serve a cluster, which are free, which did not answer
last time; allocating free ones to a new cluster; and a cluster's health as its nodes
start or stop answering."""

from __future__ import annotations

from skyd.clusters.registry import Registry
from skyd.infra.nodepools import NodePools, Pool, PoolError
from skyd.infra.ssh import node_dir as ssh_node_dir
from skyd.protocol import ClusterState, ErrorCode, NodeInfo, SkydError


class HostPools:
    def __init__(self, registry: Registry, pools: NodePools | None):
        self.registry = registry
        self.pools = pools
        # ssh hosts that did not answer last time (address -> why): new clusters take
        # the pool's other free hosts first.
        self.trouble: dict[str, str] = {}

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

    def owners(self) -> dict[tuple[str, int], str]:
        """(ip, port) of every ssh host serving a cluster -> that cluster's name."""
        return {(n.ip, n.port): e.record.name for e in self.registry.clusters.values()
                if e.record.infra.startswith("ssh/") for n in e.record.nodes}

    def free_hosts(self, pool_name: str) -> int:
        """Hosts of the pool serving no cluster (0 for an unknown pool)."""
        try:
            pool = self.pool_map().get(pool_name)
        except SkydError:
            return 0
        if pool is None:
            return 0
        taken = self.owners()
        return sum((h.ip, h.port) not in taken for h in pool.hosts)

    def allocate(self, cluster: str, pool_name: str | None, num_nodes: int, uid: int,
                 login: str) -> list[NodeInfo]:
        """Free hosts of the pool, in the pool's order: a host serves one cluster at a time.
        The nodes are reached as the owner (uid, login) unless the pool has a shared login."""
        pool = self.pool(pool_name, num_nodes)
        taken = self.owners()
        free = [h for h in pool.hosts if (h.ip, h.port) not in taken]
        free.sort(key=lambda h: h.address in self.trouble)    # stable: pool order
        if len(free) < num_nodes:
            raise SkydError(ErrorCode.UNAVAILABLE,
                            f"pool {pool.name!r} has {len(free)} free host(s) of "
                            f"{len(pool.hosts)}; the task needs {num_nodes}",
                            "down a cluster on this pool, or add hosts to it")
        return [pool.node(h, i, ssh_node_dir(cluster, i), uid, login)
                for i, h in enumerate(free[:num_nodes])]

    def node_health(self, host: str, ok: bool, reason: str) -> None:
        """A node started or stopped answering: its cluster is UNHEALTHY while one of its
        nodes does not answer, UP again once they all do."""
        if ok:
            self.trouble.pop(host, None)
        else:
            self.trouble[host] = reason
        for entry in self.registry.clusters.values():
            rec = entry.record
            if not any(n.host == host for n in rec.nodes):
                continue
            if not ok and rec.status == ClusterState.UP:
                self.registry.update(entry, status=ClusterState.UNHEALTHY, status_reason=reason)
            elif ok and rec.status == ClusterState.UNHEALTHY:
                self.registry.update(entry, status=ClusterState.UP, status_reason="")
