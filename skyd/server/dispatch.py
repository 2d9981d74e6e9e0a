"""The one dispatch table: each short or inline op is registered once, beside its handler.

    @handles(protocol.ClusterStatus)
    async def status(s: Services, caller: Caller, op: ClusterStatus) -> list[ClusterRecord]: ...

Long ops are not here: they are durable requests served by the scheduler, and what a
worker runs for each is registered with skyd.requests.context by the clusters package.
Managed-job submissions go to the jobs controller. The op's `schedule` (the wire
contract's class attribute) says which of the three serves it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from skyd import protocol

Handler = Callable[[Any, Any, Any], Awaitable[Any]]
HANDLERS: dict[type[protocol.Op], Handler] = {}


def handles(*op_types: type[protocol.Op]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in op_types:
            if t in HANDLERS:
                raise RuntimeError(f"{t.__name__} is handled twice: {HANDLERS[t].__name__}, "
                                   f"{fn.__name__}")
            if t.schedule not in (protocol.Queue.SHORT, protocol.Queue.INLINE):
                raise RuntimeError(f"{t.__name__} is a {t.schedule.value} op, not a short one")
            HANDLERS[t] = fn
        return fn
    return register


def handler_for(op_type: type[protocol.Op]) -> Handler:
    return HANDLERS[op_type]
