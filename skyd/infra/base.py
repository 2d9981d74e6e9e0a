"""What every infra provides, and the job handle they share.

Blocking methods run in long-request worker processes; `job_outcome`, `cancel_job`,
`wait_exit` and `log_sources` are cheap enough for the daemon's loop (a few syscalls
or small file reads on the local infra).
"""

from __future__ import annotations

import msgspec

from skyd.protocol import NodeInfo


class NodeProc(msgspec.Struct):
    """One node's part of a job: the detached runner and where it writes."""
    rank: int
    pid: int
    start: int          # process start time (clock ticks): guards against pid reuse
    jobdir: str
    log: str


class JobHandle(msgspec.Struct):
    nodes: list[NodeProc]


class Outcome(msgspec.Struct):
    status: str               # SUCCEEDED, FAILED, CANCELLED
    exit_code: int | None
    reason: str = ""


handle_enc = msgspec.msgpack.Encoder()
handle_dec = msgspec.msgpack.Decoder(JobHandle)


def node_ips(nodes: list[NodeInfo]) -> str:
    return "\n".join(n.ip for n in sorted(nodes, key=lambda n: n.rank))
