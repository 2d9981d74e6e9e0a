"""The host ledger: what each host has (CPUs, memory, GPUs by index) and what each cluster
holds of it, so that several clusters share a host without sharing a GPU.

A cluster's holding is one slice per node (protocol.HeldSlice), recorded on its cluster
record (persisted with it: the store's `held` column); a placed request that has not yet
created its cluster holds a reservation under the cluster's name (memory only: after a
restart its request is placed again). The ledger is rebuilt from the records at start.

Kept for placement's speed: per (pool, model) the hosts by their number of free GPUs of
that model, so that best fit looks at the fullest hosts that fit first without scanning
every host.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable

from skyd.infra.gpus import Detected, Gpu
from skyd.protocol import HeldSlice

LOCAL = "local"      # the daemon's own host: its key and its pool


@dataclass
class Holding:
    """One cluster's slice of one host (one node)."""
    cluster: str
    uid: int
    user: str
    slice: HeldSlice
    reserved: bool = False       # placed for a request that has not created the cluster yet


@dataclass
class Host:
    key: str                     # "local", or ip:port
    pools: list[str]             # the pools listing it (local: ["local"])
    order: int = 0               # its place in its pool: ties go to the earlier host
    cpus: float = 0.0            # 0: not known yet (then CPU asks are not counted against it)
    memory_bytes: int = 0
    gpus: dict[int, Gpu] = field(default_factory=dict)
    probed: bool = False         # its GPUs were detected at least once
    error: str = ""              # the last detection failed: why
    probed_at: float = 0.0
    gone: bool = False           # no longer in the pool file (kept while clusters hold it)
    holdings: dict[tuple[str, int], Holding] = field(default_factory=dict)
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> (cluster, rank)

    @property
    def exclusive(self) -> bool:
        return any(h.slice.exclusive for h in self.holdings.values())

    def models(self) -> set[str]:
        return {g.model for g in self.gpus.values()}

    def free_gpus(self, model: str) -> list[int]:
        """Free indices of `model` (case as detected), lowest first."""
        return sorted(i for i, g in self.gpus.items()
                      if g.model == model and i not in self.used_gpus)

    def count(self, model: str) -> int:
        return sum(g.model == model for g in self.gpus.values())

    def fits_size(self, cpus: float, memory: int) -> bool:
        """Room for `cpus` and `memory` beside what is held (an unknown size: room)."""
        if self.exclusive:
            return False
        if self.cpus and cpus and self.used_cpus + cpus > self.cpus + 1e-9:
            return False
        return not (self.memory_bytes and memory and
                    self.used_memory + memory > self.memory_bytes)

    def label(self) -> str:
        return self.key if self.key == LOCAL else f"{self.key} ({', '.join(self.pools)})"


class Ledger:
    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.by_cluster: dict[str, list[Holding]] = {}
        self.user_gpus: collections.Counter[int] = collections.Counter()   # held or reserved
        # (pool, model) -> free GPU count -> hosts: best fit starts at the fewest free.
        self.free_index: dict[tuple[str, str], dict[int, set[str]]] = {}
        self._indexed: dict[str, dict[tuple[str, str], int]] = {}   # host -> its entries
        self.models: dict[str, str] = {}   # a model's name in lower case -> as detected
        self._total = 0                    # GPUs of every host
        self.version = 0         # moves on every change
        self.freed = 0           # moves when room may have appeared (a release, new GPUs)

    # ---- hosts -------------------------------------------------------------------------

    def add_host(self, key: str, pool: str, order: int = 0) -> Host:
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = Host(key, [pool], order)
        elif pool not in host.pools:
            host.pools.append(pool)
            self._reindex(host)
        host.gone = False
        return host

    def set_pools(self, listed: dict[str, list[str]]) -> list[str]:
        """The pool file as it is now ({pool: [host key, ...]}): hosts it no longer lists
        are marked gone (dropped once nothing holds them). Returns the new hosts' keys."""
        new = []
        wanted: dict[str, list[str]] = collections.defaultdict(list)
        for pool, keys in listed.items():
            for order, key in enumerate(keys):
                wanted[key].append(pool)
                if key not in self.hosts:
                    new.append(key)
                self.add_host(key, pool, order)
        for key, host in list(self.hosts.items()):
            if key == LOCAL:
                continue
            if key not in wanted:
                host.gone = True
                if not host.holdings:
                    self._unindex(host)
                    del self.hosts[key]
                    self._total -= len(host.gpus)
                continue
            if sorted(host.pools) != sorted(wanted[key]):
                host.pools = wanted[key]
                self._reindex(host)
        self.freed += 1
        self.version += 1
        return new

    def set_size(self, key: str, cpus: float, memory_bytes: int) -> None:
        host = self.hosts.get(key)
        if host is not None and cpus > 0:
            grew = cpus > host.cpus or memory_bytes > host.memory_bytes
            host.cpus, host.memory_bytes = cpus, memory_bytes
            self.version += 1
            if grew:
                self.freed += 1

    def set_gpus(self, key: str, found: Detected, now: float) -> list[str]:
        """A detection's result. A failed one keeps the GPUs last known (they still hold
        what they held) and says why; a successful one replaces them. Returns the clusters
        holding a GPU the host no longer reports (it shrank, or an index moved)."""
        host = self.hosts.get(key)
        if host is None:
            return []
        host.probed_at = now
        if found.error:
            host.error = found.error
            self._reindex(host)          # nothing more is given out there
            self.version += 1
            return []
        recovered = bool(host.error) or not host.probed
        host.error = ""
        host.probed = True
        before = set(host.gpus)
        host.gpus = {g.index: g for g in found.gpus}
        self.models = {g.model.lower(): g.model for h in self.hosts.values()
                       for g in h.gpus.values()}
        self._total = sum(len(h.gpus) for h in self.hosts.values())
        if found.cpus:
            self.set_size(key, found.cpus, found.memory_bytes)
        self._reindex(host)
        self.version += 1
        if recovered or set(host.gpus) - before:
            self.freed += 1
        return self.lost(host)

    def lost(self, host: Host) -> list[str]:
        """Clusters holding a GPU index the host does not report (or not of its model)."""
        out = []
        for (cluster, _), h in host.holdings.items():
            if any(i not in host.gpus or (h.slice.gpu_model and
                                          host.gpus[i].model != h.slice.gpu_model)
                   for i in h.slice.gpus):
                out.append(cluster)
        return sorted(set(out))

    # ---- holdings ----------------------------------------------------------------------

    def hold(self, cluster: str, uid: int, user: str, slices: Iterable[HeldSlice],
             reserved: bool = False) -> None:
        """Record what `cluster` holds (replacing what it held before)."""
        self.release(cluster, count_freed=False)
        held = []
        for s in slices:
            host = self.hosts.get(s.host)
            if host is None:      # a host no longer known (pool file changed): still held
                host = self.add_host(s.host, "(gone)")
                host.gone = True
            h = Holding(cluster, uid, user, s, reserved)
            host.holdings[(cluster, s.rank)] = h
            host.used_cpus += s.cpus
            host.used_memory += s.memory_bytes
            for i in s.gpus:
                host.used_gpus[i] = (cluster, s.rank)
            self.user_gpus[uid] += len(s.gpus)
            held.append(h)
            self._reindex(host)
        if held:
            self.by_cluster[cluster] = held
        self.version += 1

    def release(self, cluster: str, gpus_only: bool = False, count_freed: bool = True) -> None:
        """Give back what `cluster` holds (`gpus_only`: its GPUs, as at `stop`)."""
        held = self.by_cluster.get(cluster)
        if not held:
            return
        for h in held:
            host = self.hosts.get(h.slice.host)
            if host is None:
                continue
            for i in h.slice.gpus:
                if host.used_gpus.get(i) == (cluster, h.slice.rank):
                    del host.used_gpus[i]
            self.user_gpus[h.uid] -= len(h.slice.gpus)
            if self.user_gpus[h.uid] <= 0:
                del self.user_gpus[h.uid]
            if gpus_only:
                h.slice = HeldSlice(rank=h.slice.rank, host=h.slice.host, cpus=h.slice.cpus,
                                    memory_bytes=h.slice.memory_bytes,
                                    exclusive=h.slice.exclusive)
            else:
                host.used_cpus -= h.slice.cpus
                host.used_memory -= h.slice.memory_bytes
                host.holdings.pop((cluster, h.slice.rank), None)
            self._reindex(host)
            if host.gone and not host.holdings:
                self._unindex(host)
                del self.hosts[host.key]
                self._total -= len(host.gpus)
        if not gpus_only:
            del self.by_cluster[cluster]
        self.version += 1
        if count_freed:
            self.freed += 1

    def holding(self, cluster: str) -> list[HeldSlice]:
        return [h.slice for h in self.by_cluster.get(cluster, [])]

    def reserved(self, cluster: str) -> bool:
        held = self.by_cluster.get(cluster) or []
        return bool(held) and all(h.reserved for h in held)

    def confirm(self, cluster: str) -> None:
        """A reservation became its cluster's holding."""
        for h in self.by_cluster.get(cluster, []):
            h.reserved = False

    def total_gpus(self) -> int:
        return self._total

    # ---- the free-GPU index ----------------------------------------------------------------

    def _unindex(self, host: Host) -> None:
        for entry, n in self._indexed.pop(host.key, {}).items():
            bucket = self.free_index[entry][n]
            bucket.discard(host.key)
            if not bucket:
                del self.free_index[entry][n]

    def _reindex(self, host: Host) -> None:
        self._unindex(host)
        if host.exclusive or host.error:
            return
        entries = {}
        for model in host.models():
            n = len(host.free_gpus(model))
            if n <= 0:
                continue
            for pool in host.pools:
                entries[(pool, model)] = n
                self.free_index.setdefault((pool, model), {}).setdefault(n, set()).add(host.key)
        self._indexed[host.key] = entries

    def most_free(self, pool: str, model: str) -> int:
        """The most free GPUs of `model` on one host of `pool` (fenced or not)."""
        buckets = self.free_index.get((pool, model))
        return max(buckets) if buckets else 0

    def with_free(self, pool: str, model: str, at_least: int) -> Iterable[tuple[int, list[Host]]]:
        """(free count, hosts) of `pool` with at least `at_least` free GPUs of `model`,
        fewest free first (best fit)."""
        buckets = self.free_index.get((pool, model))
        if not buckets:
            return
        for n in sorted(k for k in buckets if k >= at_least):
            yield n, [self.hosts[k] for k in buckets[n]]
