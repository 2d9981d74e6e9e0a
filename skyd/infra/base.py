"""What every infra kind provides — a blocking `Provisioner` (worker processes) and an
async `JobRunner` (the daemon's loop) — and the job handle they share."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from typing import Callable, Mapping

import msgspec

from skyd.protocol import ClusterRecord, NodeInfo
from skyd.streams import LogSource, Topic


class NodeProc(msgspec.Struct):
    """One node's part of a job: the detached runner and where it writes."""
    rank: int
    pid: int
    start: int          # process start time (clock ticks): guards against pid reuse
    jobdir: str         # the job's files in its owner's space (script, environment)
    log: str
    ctl: str = ""       # local: the daemon's control directory (skyd.privilege.JobFiles)
    # The GPU indices of its host it may use (CUDA_VISIBLE_DEVICES; [] none of them), given
    # by the daemon when it starts the job; None: its host has no GPUs to keep it from.
    gpus: list[int] | None = None


class JobHandle(msgspec.Struct):
    nodes: list[NodeProc]
    cpus: float = 0.5      # what the job takes on each node while it runs (SkyPilot's default)
    gpus: int = 0          # GPUs it takes on each node while it runs

    @property
    def spawned(self) -> bool:
        return all(np.pid > 0 for np in self.nodes)


class Outcome(msgspec.Struct):
    status: str               # SUCCEEDED, FAILED, CANCELLED
    exit_code: int | None
    reason: str = ""


handle_enc = msgspec.msgpack.Encoder()
handle_dec = msgspec.msgpack.Decoder(JobHandle)


def already_ended() -> bool:
    """A log source's default `ended`: follow no further than what is there."""
    return True


def node_ips(nodes: list[NodeInfo]) -> str:
    return "\n".join(n.ip for n in sorted(nodes, key=lambda n: n.rank))


class Provisioner(ABC):
    """Makes and unmakes a kind's nodes and prepares jobs on them. Blocking: runs in a
    worker process, as the cluster's owner."""

    @abstractmethod
    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        """The cluster's nodes, ready for work (their sizes where they can be measured)."""

    @abstractmethod
    def sync_workdir(self, nodes: list[NodeInfo], src: str) -> None: ...

    @abstractmethod
    def sync_file_mounts(self, nodes: list[NodeInfo], mounts: Mapping[str, str]) -> None: ...

    @abstractmethod
    def run_setup(self, nodes: list[NodeInfo], script: str,
                  envs: Callable[[NodeInfo], dict]) -> None: ...

    @abstractmethod
    def prepare_job(self, nodes: list[NodeInfo], job_id: int, run: str,
                    envs: Callable[[NodeInfo], dict]) -> JobHandle:
        """Put the job's script and environment on its nodes; nothing runs yet."""

    @abstractmethod
    def stop_jobs(self, nodes: list[NodeInfo], handles: list[JobHandle]) -> None:
        """Cancel these jobs and return once they are gone (SIGTERM, then SIGKILL)."""

    @abstractmethod
    def teardown(self, state_dir: str, cluster: ClusterRecord) -> None: ...


class JobRunner(ABC):
    """Starts, watches and stops a kind's prepared jobs. Runs in the daemon's loop: no
    method may block it."""

    @abstractmethod
    def capacity(self, node: NodeInfo) -> float:
        """CPUs a node offers to jobs."""

    @abstractmethod
    async def spawn(self, handle: JobHandle, nodes: list[NodeInfo], uid: int,
                    gid: int) -> JobHandle:
        """Start a prepared job's detached runners (as its owner); the handle with pids."""

    @abstractmethod
    async def wait_outcome(self, handle: JobHandle, nodes: list[NodeInfo]) -> Outcome:
        """Return how the job ended, once it has."""

    @abstractmethod
    async def cancel(self, handle: JobHandle, nodes: list[NodeInfo]) -> None: ...

    @abstractmethod
    async def kill(self, handle: JobHandle, nodes: list[NodeInfo]) -> None:
        """What is left of a job one of whose nodes failed."""

    @abstractmethod
    def log_source(self, handle: JobHandle, nodes: list[NodeInfo], offset: int, follow: bool,
                   topic: Topic | None = None, ended: Callable[[], bool] = already_ended) -> LogSource:
        """The job's output (for skyd.streams.follow) from byte `offset` of a single
        node's log; several nodes are merged by line from their start. Followed
        (`follow`) until `ended()`; `topic` moves when the daemon learns of the job."""


def rank_prefix(rank: int, num_nodes: int) -> bytes:
    return f"(node-{rank}) ".encode() if num_nodes > 1 else b""


def pump_lines(stream, prefix: bytes, tail: list[bytes], out, keep: int = 20) -> None:
    """Copy a child's output to `out` line by line with a prefix, keeping the last lines."""
    for line in iter(stream.readline, b""):
        tail.append(line)
        del tail[:-keep]
        out.write(prefix + line)
        out.flush()


def run_streamed(nodes: list[NodeInfo], start: Callable[[NodeInfo], subprocess.Popen]
                 ) -> list[tuple[NodeInfo, int, list[bytes]]]:
    """Run one process per node at once (`start` makes it, stdout piped), stream their
    output to ours with the rank prefix, wait for all; (node, exit status, last lines) of
    those that failed."""
    import sys
    import threading
    running = []
    try:
        for n in nodes:
            p = start(n)
            tail: list[bytes] = []
            t = threading.Thread(target=pump_lines, daemon=True,
                                 args=(p.stdout, rank_prefix(n.rank, len(nodes)), tail,
                                       sys.stdout.buffer))
            t.start()
            running.append((n, p, t, tail))
        failures = []
        for n, p, t, tail in running:
            rc = p.wait()
            t.join()
            if rc != 0:
                failures.append((n, rc, tail))
        return failures
    finally:
        # A process's stdin may be its node's sign to go on (ssh: scripts.tethered):
        # closed once it ended, or at once if starting the others failed.
        for _, p, _, _ in running:
            if p.stdin is not None:
                p.stdin.close()
