"""The ssh infra's daemon side: start a prepared job's runners on its nodes, wait on the
nodes for how it ended, cancel or kill it, and tell the registry when a node stops or
starts answering (node health). Every ssh runs as the cluster's owner on a per-user
pool (skyd.infra.ssh.connection)."""

from __future__ import annotations

import asyncio
import shlex
from typing import Callable

import msgspec

from skyd.infra.base import JobHandle, JobRunner, NodeProc, Outcome, already_ended
from skyd.infra.gpus import gpu_env
from skyd.infra.ssh.connection import COMMAND_TIMEOUT, SshClient, last_lines, unreachable, where
from skyd.infra.ssh.joblog import SshJobLog
from skyd.infra.ssh.scripts import ALIVE, kill_script
from skyd.protocol import NodeInfo
from skyd.streams import LogSource, Topic

WATCH_RETRY = (1.0, 10.0)   # back-off while a node does not answer
CHECK_TIMEOUT = 15.0
SIGNAL_TIMEOUT = 30

# Told when a node stops or starts answering: (host, answers, why not).
HealthReport = Callable[[str, bool, str], None]


class SshRunner(JobRunner):
    def __init__(self, client: SshClient, on_health: HealthReport) -> None:
        self.client = client
        self.on_health = on_health

    def capacity(self, node: NodeInfo) -> float:
        return node.cpus or float("inf")     # unknown until probed: do not hold jobs back

    async def spawn(self, handle: JobHandle, nodes: list[NodeInfo], uid: int,
                    gid: int) -> JobHandle:
        by_rank = {n.rank: n for n in nodes}

        async def start(np: NodeProc) -> NodeProc:
            node = by_rank[np.rank]
            jobdir = shlex.quote(np.jobdir)
            gpus = "".join(f"{k}={shlex.quote(v)} " for k, v in gpu_env(np.gpus).items())
            script = (f"cd {node.path}/sky_workdir\n"
                      f"{gpus}setsid sh {jobdir}/runner.sh {jobdir} >> {jobdir}/run.log 2>&1 "
                      "< /dev/null &\npid=$!\necho $pid\n"
                      "awk '{print $22}' /proc/$pid/stat 2>/dev/null || echo 0\n")
            rc, out, err = await self.client.arun(node, script, COMMAND_TIMEOUT)
            if rc != 0:
                raise unreachable(node, err)
            pid, start_ticks = out.split()[:2]
            return msgspec.structs.replace(np, pid=int(pid), start=int(start_ticks))

        procs = await asyncio.gather(*(start(np) for np in handle.nodes))
        return msgspec.structs.replace(handle, nodes=list(procs))

    def _report(self, node: NodeInfo, rc: int, err: bytes) -> bool:
        """Tell on_health whether the node answered (ssh exits 255 when it did not)."""
        if rc == 255:
            self.on_health(node.host, False, f"node {node.rank} ({where(node)}) does not "
                                             f"answer: {last_lines(err) or 'ssh failed'}")
            return False
        self.on_health(node.host, True, "")
        return True

    async def check(self, node: NodeInfo, timeout: float = CHECK_TIMEOUT) -> bool:
        """Is the node answering? Reported to on_health either way."""
        try:
            rc, _, err = await self.client.arun(node, "true", timeout)
        except asyncio.TimeoutError:
            rc, err = 255, f"no answer within {timeout:g}s".encode()
        return self._report(node, rc, err)

    async def _node_outcome(self, node: NodeInfo, np: NodeProc) -> str:
        """Wait on the node until its part of the job is over: an exit code, 'cancelled'
        or 'lost'. Retries (and reports the node unhealthy) while it does not answer."""
        script = (f"pid={np.pid}; start={np.start}; jobdir={shlex.quote(np.jobdir)}\n"
                  + ALIVE +
                  "while alive; do sleep 0.2; done\n"
                  "if [ -e \"$jobdir/cancelled\" ]; then echo cancelled\n"
                  "elif [ -e \"$jobdir/exit_code\" ]; then cat \"$jobdir/exit_code\"\n"
                  "else echo lost; fi\n")
        delay = WATCH_RETRY[0]
        while True:
            rc, out, err = await self.client.arun(node, script)
            if self._report(node, rc, err):
                return out.decode().strip() or "lost"
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY[1])

    async def wait_outcome(self, handle: JobHandle, nodes: list[NodeInfo]) -> Outcome:
        by_rank = {n.rank: n for n in nodes}
        tasks = {asyncio.ensure_future(self._node_outcome(by_rank[np.rank], np)): np
                 for np in handle.nodes if np.rank in by_rank}
        results: dict[int, str] = {}
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    np = tasks.pop(t)
                    results[np.rank] = t.result()
                    if results[np.rank] not in ("0", "cancelled"):
                        return outcome_of(results)     # one node failed: the job has failed
        finally:
            for t in tasks:
                t.cancel()
        return outcome_of(results)

    async def _signal(self, handle: JobHandle, nodes: list[NodeInfo], graceful: bool) -> None:
        by_rank = {n.rank: n for n in nodes}
        await asyncio.gather(*(self.client.arun(by_rank[np.rank], kill_script(np, graceful),
                                                SIGNAL_TIMEOUT)
                               for np in handle.nodes if np.rank in by_rank),
                             return_exceptions=True)

    async def cancel(self, handle: JobHandle, nodes: list[NodeInfo]) -> None:
        await self._signal(handle, nodes, graceful=True)

    async def kill(self, handle: JobHandle, nodes: list[NodeInfo]) -> None:
        await self._signal(handle, nodes, graceful=False)

    def log_source(self, handle: JobHandle, nodes: list[NodeInfo], offset: int, follow: bool,
                   topic: Topic | None = None, ended: Callable[[], bool] = already_ended) -> LogSource:
        return SshJobLog(self.client, handle, nodes, offset, follow, ended)


def outcome_of(results: dict[int, str]) -> Outcome:
    """The job's outcome from what each node's watch said (see _node_outcome)."""
    if results.get(0) == "cancelled" or "cancelled" in results.values():
        return Outcome("CANCELLED", None, "cancelled")
    for rank, r in sorted(results.items()):
        if r == "lost":
            return Outcome("FAILED", None, f"the job's process on node {rank} was killed")
        if r != "0":
            code = int(r) if r.lstrip("-").isdigit() else None
            return Outcome("FAILED", code, f"exit status {r} on node {rank}")
    return Outcome("SUCCEEDED", 0)
