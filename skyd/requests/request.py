"""A request as the scheduler holds it: its record (what is persisted and listed) beside
its runtime (op, log, waiters, worker), and the small facts every queue shares."""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import Any

import msgspec

from skyd.protocol import Error, ErrorCode, Op, RequestRecord, Status
from skyd.requests.pool import Worker
from skyd.streams import RequestLog, Topic

# The short request a handler is serving (so `api status` need not list itself).
current_request: contextvars.ContextVar[str] = contextvars.ContextVar("current_request", default="")

_blob_dec = msgspec.msgpack.Decoder()


class Request:
    """A request's runtime beside its persisted row: never stored itself."""

    __slots__ = ("record", "op", "op_bytes", "log", "topic", "result", "worker",
                 "cancel_requested", "done", "counted", "timed_out", "timer")

    def __init__(self, record: RequestRecord, op: Op, op_bytes: bytes | None = None):
        self.record = record
        self.op = op
        self.op_bytes = op_bytes
        self.log: RequestLog | None = None
        self.topic = Topic()
        self.result: Any = None            # msgpack bytes of the value, or an Error
        self.worker: Worker | None = None
        self.cancel_requested = False
        self.done = asyncio.get_running_loop().create_future()
        self.counted = False               # counts against its user's pending cap
        self.timed_out: float | None = None   # the time limit it ran past, seconds
        self.timer: asyncio.TimerHandle | None = None


def stored_error(status: Status, stored: Any) -> Error | None:
    """A finished request's error: an Error while it is in memory, msgpack once stored."""
    if isinstance(stored, Error):
        return stored
    if status is Status.FAILED and stored is not None:
        return msgspec.convert(_blob_dec.decode(stored), Error)
    return None


def uncapped_uids() -> frozenset[int]:
    """The host's operators, who have no per-user caps: root and the daemon's own user."""
    return frozenset({0, os.geteuid()})


def op_name(op: Op) -> str:
    """The op's wire tag (its name in listings)."""
    return str(op.__struct_config__.tag)


def time_limit_error(limit: float) -> Error:
    return Error(ErrorCode.FAILED, f"time limit of {limit:g} s exceeded",
                 "give the request more time with --timeout SECONDS (launch, exec)")
