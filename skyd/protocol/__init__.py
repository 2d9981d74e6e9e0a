"""The wire contract between skyctl and skyd.

A frame is a 4-byte big-endian length followed by a msgpack body. Every body is one of
the message Structs below, tagged by the field "t"; errors cross as an Error frame. A
request's arguments are an `Op` (ops.py), tagged by the field "op"; each Op declares once
which queue runs it and what it returns: one of the records (records.py), whose statuses
are str-Enums. Everything is importable from here: `from skyd.protocol import Launch`.

This package imports only msgspec and the standard library (and the task format,
skyd.taskspec), because skyctl imports it and its cold start is part of the product: it is
three modules, not one per topic, for the same reason (each module costs skyctl's start).
Nor do its modules postpone annotations (`from __future__ import annotations`): msgspec
would then compile and evaluate each field's annotation text when it first builds a decoder,
and skyctl builds one for every command. So a Struct is defined after the ones it holds.
"""

import enum
import socket
import struct
from typing import Annotated, Any, Literal

import msgspec

from skyd.protocol.ops import (MAX_WIRE_INT, OPS, AnyOp, ApiCancel, ApiInfo, ApiLogs, ApiStatus,
                               Autostop, ByteOffset, CancelJobs, ClusterStatus, Count, Down, Exec,
                               GpuStatus, InfraStatus, JobId, JobLogs, JobQueue, JobsCancel, JobsLaunch,
                               JobsLogs, JobsQueue, Launch, Op, Start, Stop, TimeLimit,
                               TokenCreate, TokenList, TokenName, TokenRevoke, Watch)
from skyd.protocol.records import (CLUSTER_RUNNABLE, FINISHED, JOB_FINISHED, MANAGED_ACTIVE,
                                   MANAGED_FINISHED, MANAGED_STEPS, ClusterRecord, ClusterState,
                                   GpuHost, GpuSlot, HeldSlice, HostRecord, JobRecord, JobStatus, LaunchResult, Limits,
                                   ManagedJobRecord, ManagedJobStatus, NodeInfo, Queue,
                                   RequestRecord, ServerInfo, Status, TokenRecord)

__all__ = [
    # statuses (records.py)
    "Queue", "Status", "FINISHED", "ClusterState", "CLUSTER_RUNNABLE", "JobStatus",
    "JOB_FINISHED", "ManagedJobStatus", "MANAGED_STEPS", "MANAGED_ACTIVE", "MANAGED_FINISHED",
    # records (records.py)
    "RequestRecord", "NodeInfo", "ClusterRecord", "JobRecord", "ManagedJobRecord", "HostRecord",
    "LaunchResult", "ServerInfo", "Limits", "TokenRecord", "HeldSlice", "GpuSlot", "GpuHost",
    # ops (ops.py)
    "Op", "TimeLimit", "MAX_WIRE_INT", "JobId", "ByteOffset", "Count", "Launch", "Exec", "Stop",
    "Start", "Down", "Autostop", "ClusterStatus", "JobQueue", "JobLogs", "CancelJobs",
    "InfraStatus", "GpuStatus", "JobsLaunch", "JobsQueue", "JobsLogs", "JobsCancel", "ApiStatus", "ApiLogs",
    "ApiCancel", "ApiInfo", "TokenName", "TokenCreate", "TokenList", "TokenRevoke", "Watch", "AnyOp", "OPS",
    # errors and frames (here)
    "ErrorCode", "Error", "SkydError",
    "PROTOCOL_VERSION", "MIN_PROTOCOL_VERSION", "DEFAULT_MAX_FRAME", "HEADER", "Token",
    "IdempotencyKey", "Hello", "Submit",
    "Welcome", "Accepted", "Chunk", "Notice", "End", "Following", "Result", "Event", "ClientMsg",
    "ServerMsg",
    "FrameTooLarge", "encode_frame", "recv_exact", "recv_frame", "send_msg",
]

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1          # oldest client this server still speaks to
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")


# ---- errors -------------------------------------------------------------------------------

class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"                  # malformed frame or wrong types
    TOO_LARGE = "too_large"                      # frame over the size limit
    UNSUPPORTED_VERSION = "unsupported_version"  # client too old or too new
    UNKNOWN_OP = "unknown_op"
    INVALID_TASK = "invalid_task"
    NOT_FOUND = "not_found"
    AMBIGUOUS = "ambiguous"                      # an id prefix matching several
    PERMISSION_DENIED = "permission_denied"
    CONFLICT = "conflict"                        # e.g. cluster busy or in the wrong state
    UNAVAILABLE = "unavailable"                  # shutting down, or no capacity
    BUSY = "busy"                                # a share or limit reached: retry later
    FAILED = "failed"                            # the request ran and failed
    INTERNAL = "internal"


class Error(msgspec.Struct, tag="error", tag_field="t", omit_defaults=True):
    code: ErrorCode
    message: str
    hint: str = ""


class SkydError(Exception):
    """Raised by handlers; the server sends it to the client as an Error frame."""

    def __init__(self, code: ErrorCode, message: str, hint: str = ""):
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint

    def to_wire(self) -> Error:
        return Error(self.code, self.message, self.hint)


# ---- frames -------------------------------------------------------------------------------

# A bearer token (TCP only; on the Unix socket the kernel says who calls) and an
# idempotency key are bounded at decoding: both are read before anything else is checked.
Token = Annotated[str, msgspec.Meta(max_length=256)]
IdempotencyKey = Annotated[str, msgspec.Meta(max_length=128)]


class Hello(msgspec.Struct, tag="hello", tag_field="t", omit_defaults=True):
    protocol: int
    client: str = ""
    token: Token = ""    # TCP: the bearer token (skyd token create); "" on the Unix socket

    def __repr__(self) -> str:          # a token never reaches a log or a traceback
        return f"Hello(protocol={self.protocol!r}, client={self.client!r}, " \
               f"token={'<hidden>' if self.token else ''!r})"


class Submit(msgspec.Struct, tag="submit", tag_field="t", omit_defaults=True):
    op: AnyOp
    wait: bool = True    # False: answer "accepted" and return (--async)
    # Client-made, unique per submission: a retry with the same key (after a lost
    # connection or a restart) answers the first attempt's request instead of a new one.
    idempotency_key: IdempotencyKey = ""
    # launch/exec with `wait`: once the request has queued its job, stream on into the
    # job's log (a `Following` frame between the two), and end with the job's record.
    follow_job: bool = False


class Welcome(msgspec.Struct, tag="welcome", tag_field="t"):
    protocol: int
    server_version: str
    user: str
    uid: int
    admin: bool


class Accepted(msgspec.Struct, tag="accepted", tag_field="t"):
    request_id: str
    queue: Queue
    ahead: int = 0       # requests ahead of it in its queue
    job_id: int | None = None   # jobs_launch: the managed job it created


class Chunk(msgspec.Struct, tag="chunk", tag_field="t"):
    data: bytes


class Notice(msgspec.Struct, tag="notice", tag_field="t"):
    message: str         # progress for people: queued, started, reconnecting...


class End(msgspec.Struct, tag="end", tag_field="t"):
    offset: int          # bytes of log delivered so far: resume from here


class Following(msgspec.Struct, tag="following", tag_field="t"):
    """The request's log has ended (its End came before); the job's log follows."""
    cluster: str
    job_id: int


class Result(msgspec.Struct, tag="result", tag_field="t", omit_defaults=True):
    request_id: str
    status: Status
    value: Any = None
    error: Error | None = None


class Event(msgspec.Struct, tag="event", tag_field="t", omit_defaults=True):
    """One change the watch op streams: a long request's or a managed job's new status, a
    cluster's (a torn-down cluster's is "terminated")."""
    kind: Literal["request", "managed_job", "cluster"]
    id: str              # the request id, the managed job id (as text), the cluster name
    status: str          # as `api status`, `jobs queue` and `status` show it
    name: str = ""       # the request's op, the managed job's name
    cluster: str = ""    # the cluster it acts on, where it has one
    user: str = ""
    uid: int = 0
    at: float = 0.0      # when the daemon saw the change (epoch seconds)
    detail: str = ""     # why: a request's error, a managed job's reason, a cluster's


ClientMsg = Hello | Submit
ServerMsg = Welcome | Accepted | Chunk | Notice | End | Following | Result | Event | Error


class FrameTooLarge(Exception):
    pass


_encoder = msgspec.msgpack.Encoder()


def encode_frame(msg: Any) -> bytes:
    buf = bytearray(4)
    _encoder.encode_into(msg, buf, 4)
    HEADER.pack_into(buf, 0, len(buf) - 4)
    return bytes(buf)


# ---- blocking helpers (skyctl and workers use plain sockets) --------------------------

def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by peer")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    (size,) = HEADER.unpack(recv_exact(sock, 4))
    if size > max_frame:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_frame}")
    return recv_exact(sock, size)


def send_msg(sock: socket.socket, msg: Any) -> None:
    sock.sendall(encode_frame(msg))
