"""After a restart: the long requests the previous run left pending or running, read
back in their original order. What was pending is queued again; what was running runs
again if that is safe (its op is idempotent), and is failed as interrupted otherwise;
what had an acknowledged cancel is finished as cancelled, never run again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgspec

from skyd import protocol
from skyd.protocol import Status
from skyd.requests.request import Request
from skyd.store import Store
from skyd.streams import RequestLog

INTERRUPTED = "interrupted by server restart"
_op_dec = msgspec.msgpack.Decoder(protocol.AnyOp)


@dataclass
class Recovered:
    queue: list[Request] = field(default_factory=list)   # to queue again, in order
    stale: list[Request] = field(default_factory=list)   # to fail as interrupted
    cancelled: list[Request] = field(default_factory=list)   # to finish as cancelled
    requeued: int = 0
    rerun: int = 0


async def reload(store: Store, log_path: Callable[[str], Path]) -> Recovered:
    """The unfinished requests, sorted out; a re-run one is pending again (durable) and
    says so in its log."""
    out = Recovered()
    writes = []
    for stored in await store.active_requests():
        op = _op_dec.decode(stored.op)
        req = Request(stored.record, op, stored.op)
        rec = req.record
        if stored.cancel_requested:
            out.cancelled.append(req)
            continue
        if rec.status is Status.RUNNING:
            if not type(op).idempotent:
                out.stale.append(req)
                continue
            rec.status, rec.started_at = Status.PENDING, None
            writes.append(store.mark_pending(rec.id))   # committed together
            note = RequestLog(log_path(rec.id), req.topic)
            note.line("the server restarted while this ran; running it again "
                      "(it is idempotent)")
            note.close()
            out.rerun += 1
        else:
            out.requeued += 1
        out.queue.append(req)
    await asyncio.gather(*writes)
    return out
