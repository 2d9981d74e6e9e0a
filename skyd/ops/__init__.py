"""Request handlers by domain. Long handlers run in worker processes; short and inline
handlers are coroutines in the daemon's loop (see skyd.ops.api and skyd.ops.queries)."""

from __future__ import annotations

from typing import Callable

from skyd import protocol
from skyd.workerproto import Assignment


def long_handler(op_type: type[protocol.Op]) -> Callable:
    from skyd.ops import clusters
    return {
        protocol.Launch: clusters.launch,
        protocol.Exec: clusters.exec_,
        protocol.Stop: clusters.stop,
        protocol.Start: clusters.start,
        protocol.Down: clusters.down,
    }[op_type]


def prepare_as_root(a: Assignment, op: protocol.Op) -> None:
    """Work that needs the daemon's privileges, done before the worker drops them."""
    if a.cluster is None:
        return
    if a.cluster.infra == "local":
        if isinstance(op, (protocol.Launch, protocol.Start)):
            from skyd.infra import local
            local.prepare_cluster_dir(a.state_dir, a.cluster, a.uid, a.gid)
        return
    import os
    from skyd.infra.base import get_infra
    base = os.path.join(a.state_dir, "ssh")
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o711)
    control = os.path.join(base, str(a.uid))       # this user's ssh multiplexing sockets
    os.makedirs(control, mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(control, a.uid, a.gid)
    get_infra(a.cluster.infra).configure(control, a.ssh_known_hosts)
