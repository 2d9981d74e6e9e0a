"""A request's arguments: an Op, tagged by the field "op". Each Op declares once which
queue runs it (server policy: the client never chooses), what it returns, and whether it
is safe to run again after a server restart."""

from typing import Annotated, Any, ClassVar

import msgspec

from skyd.protocol.records import (ClusterRecord, GpuHost, HostRecord, JobRecord, LaunchResult,
                                   ManagedJobRecord, Queue, RequestRecord, ServerInfo, TokenRecord)
from skyd.taskspec import Task


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


class InfraStatus(Op, tag="infra", omit_defaults=True):
    """The ssh node pools and their hosts: reachable, CPUs, memory, GPUs, which clusters."""
    schedule = Queue.SHORT
    result = list[HostRecord]
    pools: list[str] = []
    refresh: bool = False         # detect the hosts' GPUs again (as the caller reaches them)


class GpuStatus(Op, tag="gpus", omit_defaults=True):
    """GPUs per host (the daemon's own and the pools'): model, total, free, who holds them."""
    schedule = Queue.SHORT
    result = list[GpuHost]
    pools: list[str] = []         # "local" names the daemon's host


Priority = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class JobsLaunch(Op, tag="jobs_launch", omit_defaults=True):
    """Queue a managed job: accepted once durable; the jobs controller runs it."""
    schedule = Queue.JOBS
    result = ManagedJobRecord
    task: Task
    name: str | None = None
    priority: Priority = 500      # among the caller's own jobs: higher goes first


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


# Bearer tokens for TCP (`skyd token`): admins only, checked by the daemon; a token for
# anyone but yourself needs root. Inline: no queue, nothing stored as a request.
TokenName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]


class TokenCreate(Op, tag="token_create", omit_defaults=True):
    schedule = Queue.INLINE
    result = TokenRecord
    name: TokenName
    user: str = ""                  # "": the caller
    admin: bool = False
    expires_in: Annotated[float, msgspec.Meta(gt=0)] | None = None   # seconds; None: never


class TokenList(Op, tag="token_list"):
    schedule = Queue.INLINE
    result = list[TokenRecord]


class TokenRevoke(Op, tag="token_revoke"):
    schedule = Queue.INLINE
    result = TokenRecord
    name: str                       # its name or id


class Watch(Op, tag="watch", omit_defaults=True):
    """The caller's events as they happen (Event frames), until the client hangs up: its
    long requests' and managed jobs' status changes, its clusters'. A watcher that falls
    too far behind is dropped with a BUSY error."""
    schedule = Queue.INLINE
    all_users: bool = False       # everyone's (admins only)


AnyOp = (Launch | Exec | Stop | Start | Down | Autostop | ClusterStatus | JobQueue | JobLogs
         | CancelJobs | InfraStatus | GpuStatus | JobsLaunch | JobsQueue | JobsLogs | JobsCancel
         | ApiStatus | ApiLogs | ApiCancel | ApiInfo | TokenCreate | TokenList | TokenRevoke | Watch)
OPS: dict[str, type[Op]] = {c.__struct_config__.tag: c for c in AnyOp.__args__}
