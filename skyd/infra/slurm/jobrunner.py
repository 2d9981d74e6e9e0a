"""The slurm infra's daemon side. A job is one srun step on every node of the cluster's
allocation; its srun client is a local runner on this host (skyd.infra.local): started
detached as the job's owner, output and exit status in the daemon's control files (so
the outcome survives a daemon restart), cancelled by SIGTERM to its session — srun then
ends the step on every node. A job that failed because its allocation ended (time
limit, preemption, node failure, scancel) has no exit status of its own: it was lost
with its cluster, which is what managed jobs recover from.

The runner also holds the watcher of all allocations (watcher.py)."""

from __future__ import annotations

import shutil
import time
from typing import Callable

from skyd.infra.base import JobHandle, Outcome
from skyd.infra.local import LocalRunner
from skyd.infra.slurm.commands import Slurm
from skyd.infra.slurm.places import Here, LoginNode, login_node
from skyd.infra.slurm.settings import SlurmSettings
from skyd.infra.slurm.watcher import AllocationWatcher, Report
from skyd.infra.ssh.connection import SshClient
from skyd.privilege import STANDARD_PATH
from skyd.protocol import ClusterRecord, NodeInfo

CHECK_TTL = 60.0       # seconds a "Slurm's commands are (not) here" answer is reused


class SlurmRunner(LocalRunner):
    """`settings`: the daemon's `slurm:` section; None when it has none (clusters made
    before it was removed are still watched and torn down; no new one is launched)."""

    def __init__(self, settings: SlurmSettings | None, state_dir: str, log_limit: int = 0,
                 ssh: SshClient | None = None):
        super().__init__(cpus=0.0, log_limit=log_limit)
        self.configured = settings is not None
        self.given = settings             # what workers are handed
        self.settings = s = settings or SlurmSettings()
        self.ssh = ssh
        self._owners: dict[tuple[int, str], Slurm] = {}
        if s.login and ssh is None:
            raise ValueError("a login node needs the daemon's ssh client")
        if not s.login:
            # The daemon's own Slurm commands (squeue) get a clean environment.
            self.slurm: Slurm | None = Slurm(s, Here(s, {"PATH": STANDARD_PATH,
                                                         "LANG": "C.UTF-8"}))
        elif s.watch_user:
            # The daemon's own login on the login node (its own ssh setup).
            assert ssh is not None
            self.slurm = Slurm(s, LoginNode(s, ssh, login_node(s, ssh, -1, s.watch_user)))
        else:
            self.slurm = None             # each owner's squeue, as them
        self.watcher = AllocationWatcher(self.slurm, s.watch_interval, s.watch_max_interval,
                                         state_dir, owners=self.owner_slurm)
        self._checked: tuple[float, str] = (0.0, "")

    def owner_slurm(self, uid: int, user: str) -> Slurm:
        """Slurm's commands on the login node as a cluster's owner (`uid`, login `user`:
        the daemon's records say them): their login, their ssh setup."""
        slurm = self._owners.get((uid, user))
        if slurm is None:
            assert self.ssh is not None
            s = self.settings
            slurm = Slurm(s, LoginNode(s, self.ssh, login_node(s, self.ssh, uid, user)))
            self._owners[(uid, user)] = slurm
        return slurm

    def capacity(self, node: NodeInfo) -> float:
        return node.cpus or 1.0          # what the allocation holds on each node

    def unavailable(self) -> str:
        """Why a new cluster cannot go on Slurm ("" when it can). A PATH lookup, cached."""
        if not self.configured:
            return ("this server has no Slurm configured (its config needs a `slurm:` "
                    "section)")
        at, why = self._checked
        place = self.slurm.place if self.slurm is not None else None
        if isinstance(place, Here) and time.monotonic() - at > CHECK_TTL:
            # (On a login node the commands are found, or not, when first used.)
            path = place.env.get("PATH", STANDARD_PATH)
            missing = [c for c in ("sbatch", "srun", "squeue", "scancel")
                       if shutil.which(self.settings.command(c), path=path) is None]
            why = (f"Slurm's commands are not installed on the server ({', '.join(missing)} "
                   "not found)") if missing else ""
            self._checked = (time.monotonic(), why)
        return why

    async def wait_outcome(self, handle: JobHandle, nodes: list[NodeInfo]) -> Outcome:
        outcome = await super().wait_outcome(handle, nodes)
        job = next((n.allocation for n in nodes if n.allocation), "")
        if outcome.status == "FAILED" and job:
            why = await self.watcher.ended(job)
            if why:
                return Outcome("FAILED", None, why)
        return outcome

    async def watch(self, clusters: Callable[[], list[ClusterRecord]], report: Report) -> None:
        """Watch every slurm cluster's allocation until cancelled (watcher.py)."""
        await self.watcher.run(clusters, report)

