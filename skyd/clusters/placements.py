"""Where clusters go, as the daemon runs it: the host ledger (ledger.py) kept in step with
the pool file, the clusters and the hosts' detected GPUs; the requests waiting for room
(claims.py), given it fairly when it frees; and the listings of who holds what.

GPUs are detected (skyd.infra.gpus) on the daemon's host and on every pool host at start,
when the pool file changes, and on `skyctl infra --refresh`. A pool host is reached as
its pool says: the shared login, or — on a per-user pool — as someone with a cluster
there, else as the first person whose request needs it. What was detected is stored, so
a restart starts from it.

A host that now reports fewer GPUs than its clusters hold makes those clusters UNHEALTHY
(the reason names the GPUs gone); nothing is counted twice: a GPU that is gone is simply
not there to give.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

import msgspec

from skyd.clusters.claims import Caps, Claim, Claims
from skyd.clusters.ledger import LOCAL, Host, Ledger
from skyd.clusters.placement import Demand, never_fits, place
from skyd.clusters.registry import Registry
from skyd.infra.gpus import Detected, Gpu, detect_local, detect_remote
from skyd.infra.nodepools import NodePools, Pool, PoolError, PoolHost
from skyd.protocol import ClusterState, GpuHost, GpuSlot, HeldSlice, NodeInfo
from skyd.sizing.hardware import Hardware
from skyd.store import HostRow

log = logging.getLogger("skyd.clusters.placements")

POOL_CHECK = 2.0          # seconds between looks at the pool file (a stat)
EXPLAIN_AFTER = 0.25      # seconds after a pass before waiting requests are told why again
PROBES_AT_ONCE = 16
GPUS_GONE = "GPUs gone: "  # how a cluster's UNHEALTHY reason starts when its GPUs vanished

_gpus_enc = msgspec.msgpack.Encoder()
_gpus_dec = msgspec.msgpack.Decoder(list[Gpu])


class Placements:
    def __init__(self, registry: Registry, pools: NodePools | None, host: Hardware,
                 caps: Caps | None = None, trouble: dict[str, str] | None = None):
        self.registry = registry
        self.store = registry.store
        self.pools = pools
        self.host = host
        self.ledger = Ledger()
        self.trouble = trouble if trouble is not None else {}   # addresses not answering
        self.claims = Claims(self.ledger, caps, self.clusters_of, self._avoid)
        self.caps = self.claims.caps
        self.lost: dict[str, str] = {}      # cluster -> why its GPUs are gone
        self._pools_seen = -1
        self._probing: dict[str, asyncio.Task] = {}
        self._limit = asyncio.Semaphore(PROBES_AT_ONCE)
        self._soon = False
        self._explaining: asyncio.TimerHandle | None = None
        self._watch: asyncio.Task | None = None

    # ---- start-up ----------------------------------------------------------------------

    async def load(self) -> None:
        """After the registry: the ledger from the stored hosts and the clusters' records;
        then every host's GPUs detected again, in the background."""
        local = self.ledger.add_host(LOCAL, LOCAL)
        local.cpus, local.memory_bytes = self.host.cpus, self.host.memory_bytes
        self.sync_pools()
        for row in await self.store.load_hosts():
            if row.key in self.ledger.hosts:
                found = Detected(gpus=_gpus_dec.decode(row.gpus) if row.gpus else [],
                                 cpus=row.cpus, memory_bytes=row.memory_bytes)
                self.ledger.set_gpus(row.key, found, row.probed_at)
                if row.error:
                    self.ledger.set_gpus(row.key, Detected(error=row.error), row.probed_at)
        for entry in list(self.registry.clusters.values()):
            rec = entry.record
            if not rec.held and rec.infra.startswith("ssh/") and rec.nodes:
                # Placed before the ledger: an ssh cluster then had its hosts to itself.
                rec = msgspec.structs.replace(rec, held=[
                    HeldSlice(rank=n.rank, host=f"{n.ip}:{n.port}", exclusive=True)
                    for n in rec.nodes])
                await self.registry.save(rec)
            self.confirm(rec.name)
        for host in list(self.ledger.hosts.values()):
            self._mark_lost(host)
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop(),
                                                             name="placements")

    async def close(self) -> None:
        if self._explaining is not None:
            self._explaining.cancel()
        tasks = [t for t in (self._watch, *self._probing.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def pool_map(self) -> dict[str, Pool]:
        try:
            return self.pools.get() if self.pools is not None else {}
        except PoolError:
            return {}

    def sync_pools(self) -> bool:
        """The ledger's hosts as the pool file lists them now; True if it changed."""
        pools = self.pool_map()
        version = self.pools.version if self.pools is not None else 0
        if version == self._pools_seen:
            return False
        self._pools_seen = version
        self.ledger.set_pools({name: [h.key for h in p.hosts] for name, p in pools.items()})
        return True

    async def _watch_loop(self) -> None:
        await self.detect_all()
        while True:
            await asyncio.sleep(POOL_CHECK)
            if self.sync_pools():
                await self.detect_all()
                self.run_soon()

    # ---- detection ---------------------------------------------------------------------

    async def detect_all(self) -> None:
        """Every host reachable by the daemon: this one, and pool hosts through their
        shared login or someone with a cluster there."""
        jobs = [self.detect(LOCAL)]
        for pool in self.pool_map().values():
            for h in pool.hosts:
                node = self._reach(pool, h)
                if node is not None:
                    jobs.append(self.detect(h.key, node))
        await asyncio.gather(*jobs, return_exceptions=True)

    def _reach(self, pool: Pool, h: PoolHost, uid: int = -1, login: str = "") -> NodeInfo | None:
        """How the daemon reaches a pool host to probe it: the shared login; on a per-user
        pool as `uid` (or as the owner of a cluster there), never as itself."""
        if pool.shared_login:
            return pool.node(h, 0, "", -1, "")
        if uid < 0:
            held = self.ledger.hosts.get(h.key)
            owner = next(iter(held.holdings.values()), None) if held else None
            if owner is None:
                return None
            uid, login = owner.uid, owner.user
        return pool.node(h, 0, "", uid, login)

    async def detect(self, key: str, node: NodeInfo | None = None) -> Detected:
        """Detect a host's GPUs now and record them (one probe per host at a time)."""
        running = self._probing.get(key)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.get_running_loop().create_task(self._probe(key, node))
        self._probing[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if self._probing.get(key) is task and task.done():
                del self._probing[key]

    async def _probe(self, key: str, node: NodeInfo | None) -> Detected:
        async with self._limit:
            if key == LOCAL:
                found = await detect_local()
            else:
                assert node is not None
                found = await detect_remote(self.registry.runners.ssh.client, node)
        self.record(key, found)
        return found

    def record(self, key: str, found: Detected) -> None:
        """A detection's result: into the ledger and the store; clusters whose GPUs are
        gone become UNHEALTHY; waiting requests that can no longer ever fit are refused."""
        if key not in self.ledger.hosts:
            return
        now = time.time()
        if found.error:
            log.warning("GPU detection on %s failed: %s", key, found.error)
        self.ledger.set_gpus(key, found, now)
        self.store.save_host(HostRow(key, found.cpus, found.memory_bytes,
                                     _gpus_enc.encode(found.gpus), found.error, now))
        self._mark_lost(self.ledger.hosts[key])
        for claim in self.claims.refuse_impossible():
            claim.notify(claim)
        self.run_soon()

    def probe_for(self, claim: Claim) -> None:
        """Detect, as the claim's owner, the GPUs of its pool's hosts nobody could reach yet."""
        pools = self.pool_map()
        pool = pools.get(claim.demand.pool)
        if pool is None:
            return
        for h in pool.hosts:
            host = self.ledger.hosts.get(h.key)
            if host is not None and not host.probed and h.key not in self._probing:
                node = self._reach(pool, h, claim.uid, claim.user)
                if node is not None:
                    asyncio.get_running_loop().create_task(self.detect(h.key, node))

    def _mark_lost(self, host: Host) -> None:
        gone = set(self.ledger.lost(host))
        for name in gone:
            entry = self.registry.clusters.get(name)
            if entry is None or entry.record.status == ClusterState.STOPPED:
                continue
            held = [i for s in entry.record.held if s.host == host.key for i in s.gpus]
            why = (f"{GPUS_GONE}{host.key} now reports {len(host.gpus)} GPU(s); this cluster "
                   f"holds GPU {', '.join(map(str, held))} there")
            self.lost[name] = why
            if entry.record.status != ClusterState.UNHEALTHY or entry.record.status_reason != why:
                self.registry.update(entry, status=ClusterState.UNHEALTHY, status_reason=why)
        for name, why in list(self.lost.items()):
            if name in gone or not why.startswith(f"{GPUS_GONE}{host.key} "):
                continue
            del self.lost[name]
            entry = self.registry.clusters.get(name)
            if entry is not None and entry.record.status == ClusterState.UNHEALTHY:
                self.registry.update(entry, status=ClusterState.UP, status_reason="")

    # ---- holdings ----------------------------------------------------------------------

    def confirm(self, name: str) -> None:
        """The ledger takes what the cluster's record says it holds (a STOPPED cluster
        gave its GPUs back: it holds its CPUs and memory only)."""
        entry = self.registry.clusters.get(name)
        if entry is None:
            return
        rec = entry.record
        held = rec.held
        if rec.status == ClusterState.STOPPED:
            held = [s if s.exclusive else msgspec.structs.replace(s, gpus=[]) for s in held]
        if held:
            self.ledger.hold(name, rec.uid, rec.user, held)
        else:
            self.ledger.release(name)

    def release(self, name: str, gpus_only: bool = False) -> None:
        """What the cluster held goes back (`gpus_only`: at stop); waiting requests may
        take it."""
        self.lost.pop(name, None)
        if gpus_only and any(s.exclusive for s in self.ledger.holding(name)):
            return             # a whole host stays its cluster's, GPUs too
        self.ledger.release(name, gpus_only=gpus_only)
        self.ledger.freed += 1     # a cluster fewer also makes room under max_clusters_per_user
        self.run_soon()

    def clusters_of(self, uid: int) -> int:
        """A person's clusters, and the ones placed for them that do not exist yet."""
        names = {n for n, e in self.registry.clusters.items() if e.record.uid == uid}
        names.update(n for n in self.ledger.by_cluster if self.owner_of(n) == uid)
        return len(names)

    def owner_of(self, name: str) -> int | None:
        """Whom what is held under `name` was placed for."""
        held = self.ledger.by_cluster.get(name)
        return held[0].uid if held else None

    def _avoid(self) -> frozenset[str]:
        return frozenset(k for k in (a.rpartition("@")[2] for a in self.trouble))

    # ---- waiting -----------------------------------------------------------------------

    def claim(self, claim: Claim) -> Claim:
        """Queue a request for room and place what fits now (this claim included, if its
        turn has come): its notify is called for other claims placed meanwhile."""
        self.claims.add(claim)
        self.probe_for(claim)
        self.run()
        if claim.slices is None and not claim.error:
            self.claims.explain([claim])
        return claim

    def place_now(self, name: str, uid: int, user: str, d: Demand) -> list[HeldSlice] | None:
        """Room for a cluster right now, outside the queue (a request that lost its
        reservation): reserved, or None."""
        slices = place(self.ledger, d, frozenset(self.claims.fenced))
        if slices is not None:
            self.ledger.hold(name, uid, user, slices, reserved=True)
        return slices

    def never_fits(self, d: Demand) -> str:
        self.sync_pools()
        return never_fits(self.ledger, d)

    def run_soon(self) -> None:
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        self._soon = False
        if not self.claims:
            return
        for claim in self.claims.run():
            claim.notify(claim)
        if self.claims and self._explaining is None:
            self._explaining = asyncio.get_running_loop().call_later(EXPLAIN_AFTER, self._explain)

    def _explain(self) -> None:
        """Tell each person's first waiting request why it still waits (off the hot path:
        at most every EXPLAIN_AFTER seconds)."""
        self._explaining = None
        for claim in self.claims.explain():
            claim.notify(claim)

    # ---- listings ------------------------------------------------------------------------

    def gpu_hosts(self, viewer: Callable[[str], str], jobs: dict[tuple[str, int, int], int],
                  pools: list[str] | None = None) -> list[GpuHost]:
        """Every host's GPUs and who holds them; `viewer(cluster)` is the name the caller
        may see for a cluster ("(in use)" for someone else's); `jobs`: (cluster, rank,
        GPU index) -> the job using it now."""
        out = []
        for host in sorted(self.ledger.hosts.values(), key=lambda h: (h.key != LOCAL, h.pools, h.order)):
            pool = host.pools[0]
            if pools and not set(pools) & set(host.pools):
                continue
            slots = []
            for i, g in sorted(host.gpus.items()):
                slot = GpuSlot(index=i, model=g.model, name=g.name, memory_mib=g.memory_mib)
                holder = host.used_gpus.get(i)
                if holder is not None:
                    h = host.holdings[holder]
                    slot.user, slot.cluster, slot.reserved = h.user, viewer(h.cluster), h.reserved
                    slot.job_id = jobs.get((h.cluster, h.slice.rank, i), 0)
                slots.append(slot)
            lost = sorted(viewer(c) for c in self.ledger.lost(host))
            # Only the daemon's own host can fence jobs off other GPUs (it is root there).
            isolation = self.registry.runners.local.isolation if host.key == LOCAL else "environment"
            out.append(GpuHost(pool=pool, host=host.key, gpus=slots, error=host.error,
                               probed_at=host.probed_at, isolation=isolation, unhealthy=lost))
        return out

