"""The wire contract between skyctl and skyd.

A frame is a 4-byte big-endian length followed by a msgpack body. Every body is one of
the message Structs below, tagged by the field "t". A request's arguments are an `Op`,
tagged by the field "op"; each Op declares once which queue runs it and what it returns.

This module imports only msgspec and the standard library, because skyctl imports it
and its cold start is part of the product.
"""

from __future__ import annotations

import enum
import socket
import struct
from typing import Annotated, Any, ClassVar

import msgspec

from skyd.taskspec import Task

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1          # oldest client this server still speaks to
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")


class Queue(str, enum.Enum):
    LONG = "long"      # minutes of blocking work, in a worker process
    SHORT = "short"    # milliseconds, a coroutine in the daemon's loop
    INLINE = "inline"  # control (cancel, info): answered at once, never queued
    JOBS = "jobs"      # a managed job: durable at once, then driven by the jobs controller


class Status(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class ErrorCode(str, enum.Enum):
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


# ---- records returned by requests -------------------------------------------------

class RequestRecord(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    queue: Queue
    status: Status
    user: str
    uid: int
    created_at: float
    cluster: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


class NodeInfo(msgspec.Struct, omit_defaults=True):
    rank: int
    ip: str
    host: str            # where it lives: "local", user@ip:port (shared login) or ip:port
    path: str = ""       # the node's directory (local: absolute; ssh: under the login's home)
    user: str = ""       # ssh: the login on the node
    port: int = 22
    identity_file: str = ""
    proxy_jump: str = ""
    cpus: float = 0.0    # what the node has (ssh: probed at provision; 0: unknown)
    memory_bytes: int = 0
    # ssh: the local account whose ssh (keys, config, control dir) reaches the node: the
    # cluster's owner on a per-user pool; -1 on a shared login (the daemon's own).
    login_uid: int = -1


class ClusterRecord(msgspec.Struct, omit_defaults=True):
    name: str
    status: str          # INIT, UP, UNHEALTHY (a node does not answer), STOPPED
    infra: str
    num_nodes: int
    user: str
    uid: int
    launched_at: float
    resources: str = ""
    nodes: list[NodeInfo] = []
    last_use: float = 0.0
    status_reason: str = ""
    autostop: float = -1.0   # idle minutes before it stops itself (-1: never)
    autostop_down: bool = False  # ... and is torn down instead of stopped


class JobRecord(msgspec.Struct, omit_defaults=True):
    cluster: str
    job_id: int
    name: str
    status: str          # PENDING, SETTING_UP, RUNNING, SUCCEEDED, FAILED, CANCELLED
    user: str
    uid: int
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    request_id: str | None = None


JOB_FINISHED = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED"})


class ManagedJobRecord(msgspec.Struct, omit_defaults=True):
    """A managed job: its own cluster, relaunched when the cluster is lost, torn down at
    the end. Status: PENDING, STARTING, RUNNING, RECOVERING, CANCELLING, then one of
    MANAGED_FINISHED."""
    job_id: int
    name: str
    status: str
    user: str
    uid: int
    submitted_at: float
    infra: str = "local"
    resources: str = ""
    cluster: str = ""              # the cluster it runs on (named after the job)
    cluster_job_id: int = 0        # its job on that cluster, in the current attempt
    started_at: float | None = None     # first time it ran
    ended_at: float | None = None
    run_started_at: float | None = None  # when the current (or last) attempt began running
    attempt: int = 0               # launches so far
    recoveries: int = 0            # relaunches after its cluster or a node was lost
    restarts_on_errors: int = 0    # relaunches after the task itself failed
    max_restarts_on_errors: int = 0
    launch_failures: int = 0       # consecutive launches that failed (reset once it runs)
    log_offset: int = 0            # where the current attempt's output starts in its log
    exit_code: int | None = None
    reason: str = ""               # why it is in its status (the last failure or recovery)
    request_id: str = ""           # the launch or down request it waits on, if any
    submit_request: str = ""       # the jobs_launch request that created it
    cancel_requested: bool = False
    teardown_pending: bool = False  # its cluster still has to be torn down


MANAGED_STEPS = ("PENDING", "STARTING", "RUNNING", "RECOVERING", "CANCELLING")
MANAGED_ACTIVE = frozenset(MANAGED_STEPS)
MANAGED_FINISHED = frozenset({"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS",
                              "FAILED_NO_RESOURCE", "FAILED_CONTROLLER", "CANCELLED"})


class HostRecord(msgspec.Struct, omit_defaults=True):
    pool: str
    ip: str
    port: int
    user: str
    reachable: bool
    cpus: int | None = None
    memory_bytes: int | None = None
    cluster: str | None = None       # the cluster it serves now, if any
    error: str = ""
    shared_login: bool = False       # one login for everyone: users are not isolated


class LaunchResult(msgspec.Struct):
    cluster: str
    job_id: int | None


class ServerInfo(msgspec.Struct):
    version: str
    protocol: int
    pid: int
    started_at: float
    state_dir: str
    socket: str
    user: str
    uid: int
    admin: bool
    long_slots: int
    short_slots: int
    long_running: int
    long_pending: int
    short_running: int
    short_pending: int
    slots_source: str
    short_peak: int = 0      # most short requests ever running at once since start
    long_peak: int = 0
    limits: Limits | None = None   # None: a server older than the limits


class Limits(msgspec.Struct):
    """Fair shares and limits in force (0: no cap). Root and the daemon's own user (the
    host's operators) have no per-user caps."""
    handshake_timeout: float        # seconds to say hello before the connection is closed
    connections_per_user: int
    max_frame: int                  # largest frame, bytes
    handshake_max_frame: int        # largest frame before the handshake
    inflight_bytes: int             # unfinished large frames of all connections together
    user_long_slots: int            # long slots one user may hold at once
    user_pending: int               # long requests one user may have waiting
    long_timeout: float             # default time limit of a long request, seconds
    request_log_bytes: int          # output kept per request log
    job_log_bytes: int = 0          # output kept per job and node (local infra)


# ---- operations (a request's arguments) ---------------------------------------------

class Op(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    schedule: ClassVar[Queue]
    result: ClassVar[Any] = None
    idempotent: ClassVar[bool] = False   # safe to run again after a server restart

    def target_cluster(self) -> str | None:
        return getattr(self, "cluster", None)


# A long request's own time limit (provisioning and setup), seconds; None: the daemon's.
TimeLimit = Annotated[float, msgspec.Meta(gt=0)] | None


class Launch(Op, tag="launch", omit_defaults=True):
    schedule = Queue.LONG
    result = LaunchResult
    idempotent = True
    task: Task
    cluster: str | None = None
    idle_minutes_to_autostop: float | None = None
    down: bool = False       # with autostop: tear down instead of stopping
    timeout: TimeLimit = None


class Exec(Op, tag="exec", omit_defaults=True):
    schedule = Queue.LONG
    result = LaunchResult
    task: Task
    cluster: str
    timeout: TimeLimit = None


class Stop(Op, tag="stop"):
    schedule = Queue.LONG
    result = ClusterRecord
    idempotent = True
    cluster: str


class Start(Op, tag="start", omit_defaults=True):
    schedule = Queue.LONG
    result = ClusterRecord
    idempotent = True
    cluster: str
    timeout: TimeLimit = None


class Down(Op, tag="down"):
    schedule = Queue.LONG
    result = str
    idempotent = True
    cluster: str


class Autostop(Op, tag="autostop"):
    """Stop (or tear down) the cluster after it has been idle this many minutes."""
    schedule = Queue.SHORT
    result = ClusterRecord
    cluster: str
    idle_minutes: float = -1.0    # -1: cancel autostop
    down: bool = False


class ClusterStatus(Op, tag="status"):
    schedule = Queue.SHORT
    result = list[ClusterRecord]
    clusters: list[str] = []
    all_users: bool = False


class JobQueue(Op, tag="queue"):
    schedule = Queue.SHORT
    result = list[JobRecord]
    cluster: str
    skip_finished: bool = False


# Ids, offsets and counts a client sends: bounded at decoding, so a negative or huge one
# (SQLite and lseek take at most 2**63-1) is a clear BAD_REQUEST naming the field.
MAX_WIRE_INT = 2**62
JobId = Annotated[int, msgspec.Meta(ge=1, le=MAX_WIRE_INT)]
ByteOffset = Annotated[int, msgspec.Meta(ge=0, le=MAX_WIRE_INT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_WIRE_INT)]


class JobLogs(Op, tag="logs"):
    schedule = Queue.SHORT
    result = JobRecord
    cluster: str
    job_id: JobId | None = None   # None: the latest job
    follow: bool = True
    offset: ByteOffset = 0        # resume after this many bytes


class CancelJobs(Op, tag="cancel"):
    schedule = Queue.SHORT
    result = list[int]
    cluster: str
    job_ids: list[JobId] = []
    all: bool = False


class InfraStatus(Op, tag="infra"):
    """The ssh node pools and their hosts: reachable, CPUs, memory, which cluster."""
    schedule = Queue.SHORT
    result = list[HostRecord]
    pools: list[str] = []


class JobsLaunch(Op, tag="jobs_launch"):
    """Queue a managed job: accepted once durable; the jobs controller runs it."""
    schedule = Queue.JOBS
    result = ManagedJobRecord
    task: Task
    name: str | None = None


class JobsQueue(Op, tag="jobs_queue"):
    schedule = Queue.SHORT
    result = list[ManagedJobRecord]
    job_ids: list[JobId] = []
    all_users: bool = False
    skip_finished: bool = False
    limit: Count = 0              # 0: all


class JobsLogs(Op, tag="jobs_logs"):
    """A managed job's output over all its attempts (or its controller log), then its record."""
    schedule = Queue.SHORT
    result = ManagedJobRecord
    job_id: JobId | None = None   # None: your latest
    controller: bool = False
    follow: bool = True
    offset: ByteOffset = 0


class JobsCancel(Op, tag="jobs_cancel"):
    schedule = Queue.SHORT
    result = list[int]
    job_ids: list[JobId] = []
    all: bool = False             # all of yours that have not finished
    all_users: bool = False       # everyone's (admins only)


class ApiStatus(Op, tag="api_status"):
    schedule = Queue.SHORT
    result = list[RequestRecord]
    request_ids: list[str] = []
    all_statuses: bool = False
    all_users: bool = False
    limit: int = 50


class ApiLogs(Op, tag="api_logs"):
    schedule = Queue.SHORT
    result = RequestRecord
    request_id: str
    follow: bool = True
    offset: ByteOffset = 0


class ApiCancel(Op, tag="api_cancel"):
    schedule = Queue.INLINE
    result = list[str]
    request_ids: list[str] = []
    all: bool = False
    all_users: bool = False


class ApiInfo(Op, tag="api_info"):
    schedule = Queue.INLINE
    result = ServerInfo


AnyOp = (Launch | Exec | Stop | Start | Down | Autostop | ClusterStatus | JobQueue | JobLogs
         | CancelJobs | InfraStatus | JobsLaunch | JobsQueue | JobsLogs | JobsCancel
         | ApiStatus | ApiLogs | ApiCancel | ApiInfo)
OPS: dict[str, type[Op]] = {c.__struct_config__.tag: c for c in AnyOp.__args__}


# ---- frames -------------------------------------------------------------------------

class Hello(msgspec.Struct, tag="hello", tag_field="t"):
    protocol: int
    client: str = ""


class Submit(msgspec.Struct, tag="submit", tag_field="t"):
    op: AnyOp
    wait: bool = True    # False: answer "accepted" and return (--async)


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


class Result(msgspec.Struct, tag="result", tag_field="t", omit_defaults=True):
    request_id: str
    status: Status
    value: Any = None
    error: Error | None = None


ClientMsg = Hello | Submit
ServerMsg = Welcome | Accepted | Chunk | Notice | End | Result | Error


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
