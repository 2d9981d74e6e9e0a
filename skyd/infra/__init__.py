"""Where clusters live: `local` (the daemon's own host) and `ssh` (node pools).

Each kind implements skyd.infra.base.Infra: blocking provisioning used in worker
processes, async job running used in the daemon's loop.
"""

from __future__ import annotations

from skyd.infra.base import Infra
from skyd.infra.local import LocalInfra
from skyd.infra.ssh import SshInfra

LOCAL = LocalInfra()
SSH = SshInfra()
INFRAS: dict[str, Infra] = {"local": LOCAL, "ssh": SSH}


def get_infra(infra: str) -> Infra:
    """The Infra for a cluster's `infra` field: "local" or "ssh/POOL"."""
    return INFRAS[infra.partition("/")[0]]
