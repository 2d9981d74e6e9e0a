"""What the request machinery needs from whatever long requests act on (the clusters
package implements it): the scheduler knows nothing of clusters beyond this."""

from __future__ import annotations

from typing import Callable, Protocol

from skyd import protocol
from skyd.requests.messages import DropCluster, JobEntry, SaveCluster, SaveJob


class Workload(Protocol):
    state_dir: str                   # handed to workers
    ssh_known_hosts: str

    def check_submit(self, op: protocol.Op, uid: int, admin: bool,
                     queued_launch_owner: Callable[[str], int | None],
                     internal: bool = False) -> protocol.Op:
        """Admit: refuse at submission what can never run (the op, possibly completed)."""

    async def prepare(self, op: protocol.Op, req: protocol.RequestRecord
                      ) -> tuple[protocol.ClusterRecord | None, list[JobEntry]]:
        """At dispatch: what the worker acts on."""

    async def apply(self, msg: SaveCluster | SaveJob | DropCluster,
                    req: protocol.RequestRecord) -> None:
        """A change the worker of `req` reports."""

    async def fail_unstarted_job(self, request_id: str, reason: str) -> None:
        """On end: the request ended before the work it would start had started."""
