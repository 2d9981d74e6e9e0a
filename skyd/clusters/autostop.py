"""Autostop: a cluster stops (or is torn down) once it has been idle for longer than its
owner asked. This module says which are due; the daemon submits their stop or down."""

from __future__ import annotations

import time
from typing import Callable

import msgspec

from skyd.clusters.jobqueue import JobQueue
from skyd.clusters.registry import ClusterEntry, Registry
from skyd.protocol import ClusterRecord, ClusterState


class Autostop:
    def __init__(self, registry: Registry, queue: JobQueue):
        self.registry = registry
        self.queue = queue

    async def set(self, name: str, uid: int, admin: bool, minutes: float,
                  down: bool) -> ClusterRecord:
        entry = self.registry.require(name, uid, admin)
        entry.record = msgspec.structs.replace(entry.record, autostop=minutes, autostop_down=down,
                                               last_use=time.time())
        entry.autostopping = False
        await self.registry.store.save_cluster(entry.record, entry.next_job_id)
        return entry.record

    def idle(self, now: float, busy: Callable[[str], bool]) -> list[ClusterEntry]:
        """UP clusters idle for longer than their autostop, not yet being stopped.
        `busy(name)`: a request on it is pending or running."""
        due = []
        for entry in self.registry.clusters.values():
            rec = entry.record
            if rec.autostop < 0 or rec.status != ClusterState.UP or entry.autostopping:
                continue
            if busy(rec.name) or self.queue.busy(rec.name):
                entry.last_busy = now
                continue
            if now - max(entry.last_busy, rec.last_use) >= rec.autostop * 60:
                due.append(entry)
        return due
