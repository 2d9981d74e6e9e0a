"""The wire contract between skyctl and skyd.

A frame is a 4-byte big-endian length followed by a msgpack body (frames.py). Every body
is one of the message Structs there, tagged by the field "t". A request's arguments are an
`Op` (ops.py), tagged by the field "op"; each Op declares once which queue runs it and
what it returns: one of the records (records.py), whose statuses are str-Enums
(statuses.py). Errors cross as an Error frame (errors.py).

This package imports only msgspec and the standard library (and the task format,
skyd.taskspec), because skyctl imports it and its cold start is part of the product.
Everything is importable from here: `from skyd.protocol import Launch`.
"""

from skyd.protocol.errors import Error, ErrorCode, SkydError
from skyd.protocol.frames import (DEFAULT_MAX_FRAME, HEADER, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
                                  Accepted, Chunk, ClientMsg, End, FrameTooLarge, Hello, Notice,
                                  Result, ServerMsg, Submit, Welcome, encode_frame, recv_exact,
                                  recv_frame, send_msg)
from skyd.protocol.ops import (MAX_WIRE_INT, OPS, AnyOp, ApiCancel, ApiInfo, ApiLogs, ApiStatus,
                               Autostop, ByteOffset, CancelJobs, ClusterStatus, Count, Down, Exec,
                               InfraStatus, JobId, JobLogs, JobQueue, JobsCancel, JobsLaunch,
                               JobsLogs, JobsQueue, Launch, Op, Start, Stop, TimeLimit)
from skyd.protocol.records import (ClusterRecord, HostRecord, JobRecord, LaunchResult, Limits,
                                   ManagedJobRecord, NodeInfo, RequestRecord, ServerInfo)
from skyd.protocol.statuses import (CLUSTER_RUNNABLE, FINISHED, JOB_FINISHED, MANAGED_ACTIVE,
                                    MANAGED_FINISHED, MANAGED_STEPS, ClusterState, JobStatus,
                                    ManagedJobStatus, Queue, Status)

__all__ = [
    # statuses
    "Queue", "Status", "FINISHED", "ClusterState", "CLUSTER_RUNNABLE", "JobStatus",
    "JOB_FINISHED", "ManagedJobStatus", "MANAGED_STEPS", "MANAGED_ACTIVE", "MANAGED_FINISHED",
    # errors
    "ErrorCode", "Error", "SkydError",
    # records
    "RequestRecord", "NodeInfo", "ClusterRecord", "JobRecord", "ManagedJobRecord", "HostRecord",
    "LaunchResult", "ServerInfo", "Limits",
    # ops
    "Op", "TimeLimit", "MAX_WIRE_INT", "JobId", "ByteOffset", "Count", "Launch", "Exec", "Stop",
    "Start", "Down", "Autostop", "ClusterStatus", "JobQueue", "JobLogs", "CancelJobs",
    "InfraStatus", "JobsLaunch", "JobsQueue", "JobsLogs", "JobsCancel", "ApiStatus", "ApiLogs",
    "ApiCancel", "ApiInfo", "AnyOp", "OPS",
    # frames
    "PROTOCOL_VERSION", "MIN_PROTOCOL_VERSION", "DEFAULT_MAX_FRAME", "HEADER", "Hello", "Submit",
    "Welcome", "Accepted", "Chunk", "Notice", "End", "Result", "ClientMsg", "ServerMsg",
    "FrameTooLarge", "encode_frame", "recv_exact", "recv_frame", "send_msg",
]
