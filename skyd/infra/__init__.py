"""Where clusters live: `local` (the daemon's own host) and `ssh` (node pools).

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
from skyd.infra.ssh import SshClient, SshProvisioner, SshRunner, control_dir

T = TypeVar("T")


def _by_kind(infra: str, local: T, ssh: T) -> T:
    """Of a cluster's `infra` field ("local" or "ssh/POOL"), the kind's own."""
    kind = infra.partition("/")[0]
    if kind == "local":
        return local
    if kind == "ssh":
        return ssh
    raise KeyError(f"unknown infra {infra!r}")


@dataclass(frozen=True)
class Runners:
    """The daemon's job runners, one per kind."""
    local: LocalRunner
    ssh: SshRunner

    def get(self, infra: str) -> JobRunner:
        return _by_kind(infra, self.local, self.ssh)


@dataclass(frozen=True)
class Provisioners:
    """A worker's provisioners, one per kind."""
    local: LocalProvisioner
    ssh: SshProvisioner

    def get(self, infra: str) -> Provisioner:
        return _by_kind(infra, self.local, self.ssh)


def worker_provisioners(state_dir: str, uid: int, known_hosts: str) -> Provisioners:
    """Those of a worker acting for `uid`: its ssh multiplexed in `<state>/ssh/<uid>`
    (made before the worker dropped its privileges)."""
    client = SshClient(control_dir(state_dir, str(uid)), known_hosts)
    return Provisioners(local=LocalProvisioner(), ssh=SshProvisioner(client))
