"""The ssh node pools' hosts: which serve clusters, which are free, which did not answer
last time; a new cluster's nodes on the hosts placement gave it; and a cluster's health as
its nodes start or stop answering."""

from __future__ import annotations

from skyd.clusters.registry import Registry
from skyd.infra.nodepools import NodePools, Pool, PoolError
from skyd.infra.ssh import node_dir as ssh_node_dir
from skyd.protocol import ClusterState, ErrorCode, HeldSlice, NodeInfo, SkydError


class HostPools:
    def __init__(self, registry: Registry, pools: NodePools | None,
                 trouble: dict[str, str] | None = None, gpus_lost: dict[str, str] | None = None):
        self.registry = registry
        self.pools = pools
        # ssh hosts that did not answer last time (address -> why): new clusters take
        # the pool's other free hosts first.
        self.trouble: dict[str, str] = trouble if trouble is not None else {}
        # Clusters whose GPUs their host no longer reports (placements.py): UNHEALTHY
        # whatever their nodes answer.
        self.gpus_lost: dict[str, str] = gpus_lost if gpus_lost is not None else {}

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
        """(ip, port) of every ssh host serving a cluster -> one cluster's name (the
        first launched; clusters_on() has them all)."""
        out: dict[tuple[str, int], str] = {}
        for (ip, port), names in self.clusters_on().items():
            out[(ip, port)] = names[0]
        return out

    def clusters_on(self) -> dict[tuple[str, int], list[str]]:
        """(ip, port) of every ssh host serving clusters -> their names."""
        out: dict[tuple[str, int], list[str]] = {}
        for e in self.registry.clusters.values():
            if e.record.infra.startswith("ssh/"):
                for n in e.record.nodes:
                    out.setdefault((n.ip, n.port), []).append(e.record.name)
        return out

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

    def nodes_for(self, cluster: str, pool_name: str | None, held: list[HeldSlice], uid: int,
                  login: str) -> list[NodeInfo]:
        """The nodes of a new cluster on the hosts placement gave it (`held`, by rank).
        They are reached as the owner (uid, login) unless the pool has a shared login."""
        pool = self.pool(pool_name, len(held))
        by_key = {h.key: h for h in pool.hosts}
        missing = [s.host for s in held if s.host not in by_key]
        if missing:
            raise SkydError(ErrorCode.UNAVAILABLE, f"host {missing[0]} is no longer in pool "
                            f"{pool.name!r}", "launch again: it is placed on the pool's hosts")
        return [pool.node(by_key[s.host], s.rank, ssh_node_dir(cluster, s.rank), uid, login)
                for s in sorted(held, key=lambda s: s.rank)]

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
            elif ok and rec.status == ClusterState.UNHEALTHY and rec.name not in self.gpus_lost:
                self.registry.update(entry, status=ClusterState.UP, status_reason="")
