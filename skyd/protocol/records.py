"""What requests return, and the statuses in it.

Every status and queue name on the wire is a str-Enum: msgspec sends each by its value
(exactly the strings below), and a value that is not one of them is a clear decoding error.
A StrEnum compares equal to its value, so `status == "UP"` still holds. Then the records:
requests, clusters and their nodes, jobs, managed jobs, ssh hosts, and what the server says
about itself.
"""

import enum

import msgspec


# ---- statuses -----------------------------------------------------------------------------

class Queue(enum.StrEnum):
    """Where a request runs."""
    LONG = "long"      # minutes of blocking work, in a worker process
    SHORT = "short"    # milliseconds, a coroutine in the daemon's loop
    INLINE = "inline"  # control (cancel, info): answered at once, never queued
    JOBS = "jobs"      # a managed job: durable at once, then driven by the jobs controller


class Status(enum.StrEnum):
    """A request's status."""
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class ClusterState(enum.StrEnum):
    """A cluster's status."""
    INIT = "INIT"              # being provisioned (or a launch on it failed part-way)
    UP = "UP"                  # its nodes answer: jobs run
    UNHEALTHY = "UNHEALTHY"    # UP, but a node does not answer (status_reason says which);
    #                            it is UP again once the node answers
    STOPPED = "STOPPED"        # stopped by its owner or by autostop: `start` brings it up


# Clusters whose jobs may start or go on (an unhealthy node may come back).
CLUSTER_RUNNABLE = frozenset({ClusterState.UP, ClusterState.UNHEALTHY})


class JobStatus(enum.StrEnum):
    """A job's status on its cluster."""
    PENDING = "PENDING"            # submitted: waiting for setup, or for room on the cluster
    SETTING_UP = "SETTING_UP"      # its launch runs the task's setup
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"  # setup failed: it never ran
    CANCELLED = "CANCELLED"


JOB_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.FAILED_SETUP,
                          JobStatus.CANCELLED})


class ManagedJobStatus(enum.StrEnum):
    """A managed job's status: the steps of its state machine (skyd/managed), then how it
    ended."""
    PENDING = "PENDING"            # queued for a launch slot (and hosts)
    STARTING = "STARTING"          # its cluster is being launched
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"      # its cluster or a node was lost, or the task failed with
    #                                restarts left: torn down and launched again
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"                          # the task failed (no restarts left)
    FAILED_SETUP = "FAILED_SETUP"
    FAILED_PRECHECKS = "FAILED_PRECHECKS"      # the task can never run (invalid for its infra)
    FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"  # its launches kept failing
    FAILED_CONTROLLER = "FAILED_CONTROLLER"    # the controller itself failed on it
    CANCELLED = "CANCELLED"


MANAGED_STEPS = (ManagedJobStatus.PENDING, ManagedJobStatus.STARTING, ManagedJobStatus.RUNNING,
                 ManagedJobStatus.RECOVERING, ManagedJobStatus.CANCELLING)
MANAGED_ACTIVE = frozenset(MANAGED_STEPS)
MANAGED_FINISHED = frozenset(ManagedJobStatus) - MANAGED_ACTIVE


# ---- records ------------------------------------------------------------------------------





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
    waiting: str = ""        # pending: why it has not started (e.g. the GPUs it waits for)


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
    allocation: str = ""  # slurm: the batch job (allocation) holding the node


class HeldSlice(msgspec.Struct, omit_defaults=True):
    """What one node of a cluster holds of its host (the host ledger, skyd.clusters.ledger):
    given back at `down`; its GPUs also at `stop`."""
    rank: int
    host: str                # the host: "local", or ip:port of a pool's host
    cpus: float = 0.0
    memory_bytes: int = 0
    gpus: list[int] = []     # GPU indices on the host (nvidia-smi's)
    gpu_model: str = ""
    exclusive: bool = False  # the whole host (an ssh cluster that asked for nothing)


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
    held: list[HeldSlice] = []   # what its nodes hold of their hosts (CPUs, memory, GPUs)


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
    priority: int = 500             # among its owner's own jobs: higher goes first (0-1000)


class GpuSlot(msgspec.Struct, omit_defaults=True):
    """One GPU of a host and who holds it."""
    index: int
    model: str               # as tasks name it: H100, A100-80GB
    name: str = ""           # as nvidia-smi names it
    memory_mib: int = 0
    user: str = ""           # who holds it ("": free)
    cluster: str = ""        # the cluster holding it (someone else's: "(in use)")
    job_id: int = 0          # the job of that cluster using it now (0: none)
    reserved: bool = False   # placed for a request that has not created its cluster yet


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
    gpus: list[GpuSlot] = []         # its GPUs as the ledger knows them
    gpu_error: str = ""              # why its GPUs could not be detected
    clusters: list[str] = []         # every cluster with a slice of it (others' as "(in use)")


class GpuHost(msgspec.Struct, omit_defaults=True):
    """A host's GPUs (`skyctl gpus`): local (the daemon's host) or a pool's host."""
    pool: str                # "local", or the ssh node pool
    host: str                # "local", or ip:port
    gpus: list[GpuSlot] = []
    error: str = ""          # the last detection failed: why (its last known GPUs are shown)
    probed_at: float = 0.0   # when its GPUs were last detected (0: never)
    # How jobs are kept to their GPUs: "environment" (CUDA_VISIBLE_DEVICES only) or
    # "devices-cgroup" (the others' device nodes cannot be opened).
    isolation: str = "environment"
    unhealthy: list[str] = []        # clusters holding GPUs the host no longer reports


class LaunchResult(msgspec.Struct, omit_defaults=True):
    cluster: str
    job_id: int | None
    job: JobRecord | None = None     # streamed into the job (Submit.follow_job): how it ended


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
    max_gpus_per_user: int = 0      # GPUs one user may hold at once
    max_clusters_per_user: int = 0  # clusters one user may have at once
    tcp_handshake_timeout: float = 0.0   # TCP: seconds for TLS and a hello with a valid token
    tcp_auth_failures: int = 0      # TCP: failed logins per address and minute before it waits


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
    node_pools: str = ""     # the ssh node pools file it reads ("": a server older than this)
    tcp: str = ""            # the TCP address it also listens on ("": none)
    tls: bool = False        # TCP connections are TLS


class TokenRecord(msgspec.Struct, omit_defaults=True):
    """A bearer token for TCP (`skyd token`): who it acts as. Its secret exists only in
    the answer to its creation (`token`); the daemon keeps a hash."""
    id: str                         # a short public id (list, revoke)
    name: str
    user: str                       # work submitted with it runs as this user
    uid: int
    admin: bool                     # the bearer is an admin (else: as the user is)
    created_at: float
    created_by: str
    expires_at: float | None = None   # None: never
    token: str = ""                 # the secret, in the answer to `create` only
