"""What each kind sends (an op over the protocol, or a skyctl command line), the clusters
its load needs, and the clean-up of everything a run created."""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import tempfile
from pathlib import Path

from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.protocol import Error, Result, Status
from skyd.taskspec import Task

KINDS = ("status", "api_status", "logs", "launch", "exec", "jobs_launch")
LONG = {"launch", "exec", "jobs_launch"}
RUN = "echo loadtest"


def unsupported(kind: str) -> str | None:
    if kind == "jobs_launch" and "jobs_launch" not in protocol.OPS:
        return ("jobs_launch: not supported by this server (its protocol has no 'jobs_launch' "
                f"op; it has: {', '.join(sorted(protocol.OPS))})")
    return None


class Plan:
    """The clusters a run needs and creates, and the requests to clean up afterwards."""

    def __init__(self, socket: str, setup: str | None):
        self.socket = socket
        self.tag = secrets.token_hex(3)
        self.task = Task(name="loadtest", setup=setup or None, run=RUN)
        self.created: list[str] = []       # clusters to down at the end
        self.request_ids: list[str] = []   # long requests accepted (cancelled if still running)
        self.job_ids: list[int] = []       # managed jobs queued (cancelled if unfinished)
        self._yaml: Path | None = None

    def cluster(self, kind: str, k: int) -> str:
        prefix = {"logs": "g", "exec": "x", "launch": "l", "jobs_launch": "j"}[kind]
        return f"lt-{self.tag}-{prefix}{0 if kind == 'logs' else k}"

    def prepare(self, kind: str, clients: int) -> None:
        """Launch (and wait for) the clusters that logs and exec run against."""
        if kind == "logs":
            names = [self.cluster(kind, 0)]
        elif kind == "exec":
            names = [self.cluster(kind, k) for k in range(clients)]
        else:
            if kind in LONG:
                self.created += [self.cluster(kind, k) for k in range(clients)]
            return
        self.created += names
        failures = launch_clusters(self.socket, names, Task(name="loadtest", run=RUN))
        if failures:
            raise RuntimeError(f"could not prepare clusters for {kind}: {failures[0]}")

    def op(self, kind: str, k: int) -> protocol.Op:
        if kind == "status":
            return protocol.ClusterStatus()
        if kind == "api_status":
            return protocol.ApiStatus()
        if kind == "logs":
            return protocol.JobLogs(cluster=self.cluster(kind, k), follow=False)
        if kind == "launch":
            return protocol.Launch(task=self.task, cluster=self.cluster(kind, k))
        if kind == "exec":
            return protocol.Exec(task=Task(name="loadtest", run=RUN), cluster=self.cluster(kind, k))
        return protocol.OPS[kind](task=self.task)  # type: ignore[call-arg]

    def yaml(self) -> Path:
        if self._yaml is None:
            fd, name = tempfile.mkstemp(prefix="skyd-loadtest-", suffix=".yaml")
            body = f"name: loadtest\nrun: {RUN}\n"
            if self.task.setup:
                body += f"setup: {json.dumps(self.task.setup)}\n"
            os.write(fd, body.encode())
            os.close(fd)
            self._yaml = Path(name)
        return self._yaml

    def argv(self, kind: str, k: int, wait: bool) -> list[str]:
        """A skyctl command line for the kind (-r mode)."""
        asy = [] if wait else ["--async"]
        if kind == "status":
            return ["status"]
        if kind == "api_status":
            return ["api", "status"]
        if kind == "logs":
            return ["logs", self.cluster(kind, k), "--no-follow"]
        if kind == "launch":
            return ["launch", "-y", "-c", self.cluster(kind, k), *asy, str(self.yaml())]
        if kind == "exec":
            return ["exec", "-c", self.cluster(kind, k), *asy, str(self.yaml())]
        return ["jobs", "launch", "-y", "-n", self.cluster(kind, k), *asy, str(self.yaml())]

    def close(self) -> None:
        if self._yaml is not None:
            self._yaml.unlink(missing_ok=True)
            self._yaml = None


def _call(socket: str, op: protocol.Op, timeout: float = 120.0) -> Result | Error:
    with Connection(socket, "loadtest", timeout=timeout).connect() as c:
        frames = list(c.submit(op, True))
    return frames[-1]


def failure_of(last) -> str | None:
    """Why a final frame is a failure; None for a success."""
    if isinstance(last, Error):
        return f"{last.code.value}: {last.message}"
    if isinstance(last, Result) and (last.error is not None or last.status is not Status.SUCCEEDED):
        if last.error is None:
            return last.status.value
        return f"{last.status.value}: {last.error.code.value}: {last.error.message}"
    return None


def _parallel(fn, items: list, workers: int = 8) -> list:
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def launch_clusters(socket: str, names: list[str], task: Task) -> list[str]:
    def one(name: str) -> str | None:
        try:
            return failure_of(_call(socket, protocol.Launch(task=task, cluster=name)))
        except (Unreachable, ServerError, OSError) as e:
            return str(e)
    return [f for f in _parallel(one, names) if f]


def cleanup(socket: str, plan: Plan, timeout: float = 120.0) -> dict:
    """Cancel the managed jobs not finished and the long requests still pending or running,
    then down the clusters."""
    cancelled: list[str] = []
    jobs = list(dict.fromkeys(plan.job_ids))
    for i in range(0, len(jobs), 500):
        try:
            with Connection(socket, "loadtest", timeout=timeout).connect() as c:
                left = [j.job_id for j in c.call(protocol.JobsQueue(job_ids=jobs[i:i + 500],
                                                                    skip_finished=True))]
                if left:
                    c.call(protocol.JobsCancel(job_ids=left))
        except (Unreachable, ServerError, OSError):
            pass
    ids = list(dict.fromkeys(plan.request_ids))
    for i in range(0, len(ids), 500):
        try:
            with Connection(socket, "loadtest", timeout=timeout).connect() as c:
                cancelled += c.call(protocol.ApiCancel(request_ids=ids[i:i + 500]))
        except (Unreachable, ServerError, OSError):
            pass

    def down(name: str) -> str | None:
        try:
            failure = failure_of(_call(socket, protocol.Down(cluster=name), timeout))
        except (Unreachable, ServerError, OSError) as e:
            return f"{name}: {e}"
        if failure and "not_found" not in failure and "does not exist" not in failure \
                and "no cluster" not in failure.lower():
            return f"{name}: {failure}"
        return None
    names = list(dict.fromkeys(plan.created))
    errors = [e for e in _parallel(down, names) if e]
    return {"clusters": len(names), "down_errors": errors, "requests_cancelled": len(cancelled)}
