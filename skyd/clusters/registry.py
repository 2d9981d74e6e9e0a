"""The clusters as the daemon knows them: in memory, written through to the store, the
daemon the single writer. Who may see or act on a cluster is answered here too."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import msgspec

from skyd import privilege
from skyd.infra import Runners
from skyd.infra.base import JobRunner
from skyd.infra.local import cluster_dir as local_cluster_dir, control_root
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError
from skyd.store import Store


@dataclass
class ClusterEntry:
    record: ClusterRecord
    next_job_id: int = 1
    last_busy: float = 0.0        # last seen with a job or a request (memory only)
    autostopping: bool = False    # its autostop request is queued


class Registry:
    def __init__(self, store: Store, state_dir: str, runners: Runners):
        self.store = store
        self.state_dir = state_dir
        self.runners = runners        # each infra kind's, built by the daemon at start-up
        self.clusters: dict[str, ClusterEntry] = {}
        # Told the name of a cluster whenever it or one of its jobs changes (the jobs
        # controller listens); must not block.
        self.listeners: list[Callable[[str], None]] = []

    async def load(self) -> None:
        for cluster, next_id in await self.store.load_clusters():
            self.clusters[cluster.name] = ClusterEntry(cluster, next_id)

    def changed(self, cluster: str) -> None:
        for listener in self.listeners:
            listener(cluster)

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

    def runner_of(self, cluster: str) -> tuple[JobRunner, list[NodeInfo]]:
        """The job runner of the cluster's infra, and its nodes (none: it is gone)."""
        entry = self.clusters.get(cluster)
        if entry is None:
            return self.runners.local, []
        return self.runners.get(entry.record.infra), entry.record.nodes

    async def save(self, record: ClusterRecord) -> ClusterEntry:
        entry = self.clusters.get(record.name)
        if entry is None:
            entry = self.clusters[record.name] = ClusterEntry(record)
        if record.status != entry.record.status:
            entry.autostopping = False
        entry.record = record
        await self.store.save_cluster(record, entry.next_job_id)
        self.changed(record.name)
        return entry

    def update(self, entry: ClusterEntry, **changes) -> None:
        """Change a cluster's record in memory now, durable soon (callers that cannot
        wait: the ssh runner's health reports)."""
        entry.record = msgspec.structs.replace(entry.record, **changes)
        self.store.save_cluster(entry.record, entry.next_job_id)
        self.changed(entry.record.name)

    async def drop(self, name: str) -> None:
        """Forget the cluster (its jobs go with it: the caller's JobQueue.forget)."""
        self.clusters.pop(name, None)
        await self.store.delete_cluster(name)
        await asyncio.to_thread(_remove_cluster_dirs, self.state_dir, name)
        self.changed(name)


def _remove_cluster_dirs(state_dir: str, name: str) -> None:
    """After down: the cluster's control files (the daemon's) and its emptied directory
    (the owner removed what was in it; its parent is the daemon's)."""
    privilege.remove_private_tree(control_root(state_dir) / name)
    with contextlib.suppress(OSError):
        os.rmdir(local_cluster_dir(state_dir, name))
