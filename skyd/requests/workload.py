"""What the request machinery needs from whatever long requests act on (the clusters
package implements it): the scheduler knows nothing of clusters beyond this."""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from skyd import protocol
from skyd.infra.slurm import SlurmSettings
from skyd.requests.messages import DropCluster, JobEntry, SaveCluster, SaveJob

# The long requests pending or running on a target (a request's `cluster`), in the order
# they will run: what admission may need to know of the queue.
QueuedOn = Callable[[str], Iterable[tuple[protocol.RequestRecord, protocol.Op]]]


class Workload(Protocol):
    state_dir: str                   # handed to workers
    ssh_known_hosts: str
    slurm: SlurmSettings | None      # handed to workers: the `slurm` infra's settings

    def admit(self, op: protocol.Op, uid: int, admin: bool, queued: QueuedOn,
              internal: bool = False) -> protocol.Op:
        """At submission: refuse what can never run; the op to queue (possibly completed)."""

    def hold(self, op: protocol.Op, req: protocol.RequestRecord,
             changed: Callable[[str, str], None]) -> str:
        """At queueing (durable already): why the request must wait before it may take a
        slot ("": it need not), e.g. for room on hosts. A held request keeps its place but
        no slot; the workload calls `changed(request id, reason)` when the reason changes,
        and with "" once it may go."""

    async def prepare(self, op: protocol.Op, req: protocol.RequestRecord
                      ) -> tuple[protocol.ClusterRecord | None, list[JobEntry]]:
        """At dispatch: what the worker acts on."""

    async def apply(self, msg: SaveCluster | SaveJob | DropCluster,
                    req: protocol.RequestRecord) -> None:
        """A change the worker of `req` reports."""

    async def on_end(self, req: protocol.RequestRecord) -> None:
        """The request has ended (its status and error recorded): nothing it would have
        started may wait for it."""
