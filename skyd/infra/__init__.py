"""Where clusters live: `local` (the daemon's own host), `ssh` (node pools) and `slurm`
(allocations on a Slurm cluster).

Each kind has a blocking Provisioner, used in worker processes, and an async JobRunner,
used in the daemon's loop (skyd.infra.base). Nothing is built at import: the daemon
builds its runners from its configuration at start-up, a worker its provisioners from
its assignment, and each hands them to whoever needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from skyd.infra.base import JobRunner, Provisioner
from skyd.infra.local import LocalProvisioner, LocalRunner
from skyd.infra.slurm import SlurmProvisioner, SlurmRunner, SlurmSettings
from skyd.infra.ssh import SshClient, SshProvisioner, SshRunner, control_dir
from skyd.protocol import ErrorCode, SkydError
from skyd.taskspec import Task

T = TypeVar("T")


def _by_kind(infra: str, local: T, ssh: T, slurm: T) -> T:
    """Of a cluster's `infra` field ("local", "ssh/POOL", "slurm[/PARTITION]"), the kind's own."""
    kind = infra.partition("/")[0]
    if kind == "local":
        return local
    if kind == "ssh":
        return ssh
    if kind == "slurm":
        return slurm
    raise KeyError(f"unknown infra {infra!r}")


def runs_on_daemon_host(infra: str) -> bool:
    """Are this kind's jobs detached runners on the daemon's host, with the daemon's
    control files (local; slurm, whose runner is a job's srun client)?"""
    return infra == "local" or infra.partition("/")[0] == "slurm"


@dataclass(frozen=True)
class Runners:
    """The daemon's job runners, one per kind."""
    local: LocalRunner
    ssh: SshRunner
    slurm: SlurmRunner

    def get(self, infra: str) -> JobRunner:
        return _by_kind(infra, self.local, self.ssh, self.slurm)


@dataclass(frozen=True)
class Provisioners:
    """A worker's provisioners, one per kind."""
    local: LocalProvisioner
    ssh: SshProvisioner
    slurm: SlurmProvisioner | None = None     # None: the daemon has no Slurm configured

    def get(self, infra: str) -> Provisioner:
        found = _by_kind(infra, self.local, self.ssh, self.slurm)
        if found is None:
            raise SkydError(ErrorCode.FAILED, "this server has no Slurm configured",
                            "its config needs a `slurm:` section")
        return found


def worker_provisioners(state_dir: str, uid: int, known_hosts: str,
                        slurm: SlurmSettings | None = None, task: Task | None = None) -> Provisioners:
    """Those of a worker acting for `uid`: its ssh multiplexed in `<state>/ssh/<uid>`
    (made before the worker dropped its privileges); Slurm with the daemon's settings, an
    allocation shaped by the `task` being launched."""
    client = SshClient(control_dir(state_dir, str(uid)), known_hosts)
    return Provisioners(local=LocalProvisioner(), ssh=SshProvisioner(client),
                        slurm=SlurmProvisioner(slurm, uid, task, client) if slurm is not None else None)
