"""The daemon's periodic work, beside the requests it serves.

Three loops, started once the daemon listens and cancelled when it shuts down: retention
(finished requests and their logs past `retention_hours`, hourly), autostop (idle
clusters stopped or torn down as their owner would, every second; ssh nodes probed every
few minutes on the way, those that did not answer every few seconds) and the Slurm watch
(what Slurm did with each allocation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

from skyd import protocol
from skyd.clusters.service import Clusters
from skyd.identity import caller_for
from skyd.infra import Runners
from skyd.requests.scheduler import Scheduler
from skyd.server.config import Config
from skyd.store import Store

log = logging.getLogger("skyd")

GC_INTERVAL = 3600.0
AUTOSTOP_TICK = 1.0      # seconds between idle checks: a few dict lookups per cluster
HEALTH_INTERVAL = 300.0  # seconds between probes of ssh nodes (one multiplexed `true` each)
RECHECK_INTERVAL = 10.0  # ... of the nodes that did not answer last time (back UP soon after)


class Housekeeping:
    def __init__(self, config: Config, store: Store, scheduler: Scheduler, state: Clusters,
                 runners: Runners, is_admin: Callable[[int], bool]):
        self.config = config          # read at each pass: a reload changes retention_hours
        self.store = store
        self.scheduler = scheduler
        self.state = state
        self.runners = runners
        self.is_admin = is_admin

    def start(self) -> list[asyncio.Task]:
        """The loops, running; the caller cancels them."""
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._gc_loop(), name="retention-gc"),
                loop.create_task(self._autostop_loop(), name="autostop"),
                loop.create_task(self.runners.slurm.watch(self._slurm_clusters,
                                                          self._slurm_report),
                                 name="slurm-watch")]

    # ---- slurm -----------------------------------------------------------------------------

    def _slurm_clusters(self) -> list[protocol.ClusterRecord]:
        return [e.record for e in self.state.clusters.values() if e.record.infra.startswith("slurm")]

    def _slurm_report(self, name: str, status: protocol.ClusterState, reason: str) -> None:
        """What Slurm did with a cluster's allocation, for the registry (its status)."""
        entry = self.state.clusters.get(name)
        if entry is not None:
            self.state.registry.update(entry, status=status, status_reason=reason)

    # ---- autostop --------------------------------------------------------------------------

    async def _autostop_loop(self) -> None:
        last_check = last_recheck = 0.0
        probe: asyncio.Task | None = None      # one pass of probes at a time
        while True:
            now = time.monotonic()
            if probe is None or probe.done():
                if now - last_check >= HEALTH_INTERVAL:
                    last_check = last_recheck = now
                    probe = asyncio.get_running_loop().create_task(self.check_nodes())
                elif self.state.hosts.trouble and now - last_recheck >= RECHECK_INTERVAL:
                    last_recheck = now
                    probe = asyncio.get_running_loop().create_task(self.check_nodes(True))
            await asyncio.sleep(AUTOSTOP_TICK)
            with contextlib.suppress(Exception):
                await self.autostop_due()

    async def check_nodes(self, troubled: bool = False) -> None:
        """Ask every node of every ssh cluster whether it answers (at start: reconcile what
        changed while the daemon was down; then every few minutes), or only those that
        did not answer last time (`troubled`: their clusters are UP again soon after)."""
        trouble = self.state.hosts.trouble
        nodes = [n for e in self.state.clusters.values()
                 if e.record.infra.startswith("ssh/") and e.record.status in protocol.CLUSTER_RUNNABLE
                 for n in e.record.nodes if not troubled or n.host in trouble]
        await asyncio.gather(*(self.runners.ssh.check(n) for n in nodes), return_exceptions=True)

    async def autostop_due(self) -> None:
        """Stop (or tear down) clusters idle past their autostop, as their owner would."""
        load = self.scheduler.target_busy
        for entry in self.state.autostop.idle(time.time(), load):
            rec = entry.record
            owner = caller_for(rec.uid, self.is_admin(rec.uid))
            # A Slurm allocation cannot be stopped: it ends.
            down = rec.autostop_down or rec.infra.startswith("slurm")
            op = protocol.Down(cluster=rec.name) if down else \
                protocol.Stop(cluster=rec.name)
            entry.autostopping = True
            req, _ = await self.scheduler.submit_long(op, owner)
            log.info("autostop: %s idle for %g min: %s requested (%s)", rec.name, rec.autostop,
                     req.record.name, req.record.id)

    # ---- retention -----------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.collect_garbage()
            await asyncio.sleep(GC_INTERVAL)

    async def collect_garbage(self, now: float | None = None) -> int:
        """Remove finished requests (and their logs) older than the retention period."""
        hours = self.config.retention_hours
        if hours < 0:
            return 0
        cutoff = (now or time.time()) - hours * 3600
        removed = 0
        while ids := await self.store.finished_before(cutoff):
            # Rows first: a request that can still be listed always has its log.
            await self.store.delete_requests(ids)
            await asyncio.to_thread(_unlink_logs, self.config.logs_dir, ids)
            removed += len(ids)
        if removed:
            log.info("retention: removed %d finished requests older than %gh", removed, hours)
        return removed


def _unlink_logs(logs_dir: Path, ids: list[str]) -> None:
    for rid in ids:
        with contextlib.suppress(FileNotFoundError):
            (logs_dir / f"{rid}.log").unlink()
