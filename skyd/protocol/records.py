"""The records requests return: requests, clusters and their nodes, jobs, managed jobs,
ssh hosts, and what the server says about itself."""

from __future__ import annotations

import msgspec

from skyd.protocol.statuses import ClusterState, JobStatus, ManagedJobStatus, Queue, Status


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
    status: ClusterState     # INIT, UP, UNHEALTHY (UP but a node does not answer), STOPPED
    infra: str
    num_nodes: int
    user: str
    uid: int
    launched_at: float
    resources: str = ""
    nodes: list[NodeInfo] = []
    last_use: float = 0.0
    status_reason: str = ""  # why it is in its status (e.g. which node does not answer)
    autostop: float = -1.0   # idle minutes before it stops itself (-1: never)
    autostop_down: bool = False  # ... and is torn down instead of stopped


class JobRecord(msgspec.Struct, omit_defaults=True):
    cluster: str
    job_id: int
    name: str
    status: JobStatus
    user: str
    uid: int
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    request_id: str | None = None


class ManagedJobRecord(msgspec.Struct, omit_defaults=True):
    """A managed job: its own cluster, relaunched when the cluster is lost, torn down at
    the end. Status: one of MANAGED_STEPS, then one of MANAGED_FINISHED."""
    job_id: int
    name: str
    status: ManagedJobStatus
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
