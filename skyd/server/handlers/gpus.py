"""`gpus`: every host's GPUs (the daemon's own and the pools'), by model, free or held by
whom. People see who holds a GPU; the name of a cluster only when it is theirs."""

from __future__ import annotations

from skyd import protocol
from skyd.identity import Caller
from skyd.protocol import ErrorCode, GpuHost, GpuStatus, SkydError
from skyd.server.dispatch import handles
from skyd.server.services import Services


@handles(protocol.GpuStatus)
async def gpus(s: Services, caller: Caller, op: GpuStatus) -> list[GpuHost]:
    known = {"local", *s.state.hosts.pool_map()}
    unknown = [p for p in op.pools if p not in known]
    if unknown:
        raise SkydError(ErrorCode.NOT_FOUND, f"no pool {unknown[0]!r}",
                        f"pools: {', '.join(sorted(known))}")

    def visible(name: str) -> str:
        entry = s.state.clusters.get(name)
        # A reservation (its cluster not created yet) belongs to whom it was placed for.
        owner = entry.record.uid if entry is not None else s.state.placements.owner_of(name)
        return name if caller.admin or owner == caller.uid else "(in use)"

    return s.state.gpu_hosts(visible, op.pools or None)
