"""The local infra's daemon side: a job on a node is a detached runner (its own session,
not a child of the daemon or of the worker) that runs the task's `run` with bash and
writes the exit status to the daemon's control files when it ends — so the outcome is
recorded even while the daemon is down, and the daemon learns it at once through a
pidfd when it is up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

import msgspec

from skyd import privilege
from skyd.infra.base import JobHandle, JobRunner, Outcome, already_ended, rank_prefix
from skyd.infra.gpus import gpu_env
from skyd.infra.local import devicefence
from skyd.infra.local.scopes import Scopes
from skyd.infra.local.processes import alive, job_outcome, mark_cancelled, process_start, signal_job
from skyd.infra.local.provisioner import WORKDIR
from skyd.protocol import NodeInfo
from skyd.sizing.cpugroups import CpuGroups
from skyd.streams import READ_CHUNK, Backoff, JobLogFiles, LogSource, Topic

CANCEL_GRACE = 3.0        # seconds between SIGTERM and SIGKILL when cancelling

# The runner, started by the daemon as the job's owner with the job's output file as
# stdout and the exit-status file as descriptor $3 (both in the daemon's control
# directory: the owner has no path to them). It loads the job's environment (then removes
# the file: secrets live only in the process environment), runs the user's script and
# records how it ended — durably (`dd conv=fsync` with no input fsyncs descriptor 3)
# before it exits, so that once the runner is gone its exit status is there, even after
# a crash of the machine: a job whose runner is gone without one was killed, and only
# such a job is ever run again. Starting a job is idempotent: only the first runner
# (mkdir is atomic) runs the script; one started again (the daemon died between starting
# it and recording that) follows the first to its end instead.
#
# $5 is how much nicer than the daemon the job runs. The runner is started under `nice`,
# which all it starts inherits; but a session of its own is also an autogroup of its own
# (kernel.sched_autogroup_enabled, outside a cpu cgroup), and the CPU is shared between
# autogroups by their own nice value, so the runner lowers its group's too.
#
# $4 caps the bytes kept of the job's output (0: no cap): past it one marker line says
# so and the rest is read and discarded, so the job is never blocked or killed by it.
# (`head -c N` reads no more than it writes, so the byte after the cap is still there;
# unbuffered, or a file as its stdout would hold the output back from followers.)
RUNNER = r'''
jobdir=$1 workdir=$2 cap=${4:-0}
{ [ -n "$5" ] && echo "$5" > /proc/self/autogroup; } 2>/dev/null
[ "$3" = 3 ] || eval "exec 3>&$3 $3>&-"
run_job() {
  ( . "$jobdir/env.sh" && rm -f "$jobdir/env.sh" && cd "$workdir" && exec bash "$jobdir/run.sh" ) < /dev/null 3>&-
}
keep() {
  stdbuf -o0 head -c "$cap"
  if [ "$(head -c 1 | wc -c)" -gt 0 ]; then
    printf '\n[skyd] output truncated: the job log limit of %s bytes was reached; the rest is discarded\n' "$cap"
    cat > /dev/null
  fi
}
if mkdir "$jobdir/started" 2>/dev/null; then
  echo $$ > "$jobdir/started/pid"
  if [ "$cap" -gt 0 ]; then
    run_job 2>&1 | keep
    rc=${PIPESTATUS[0]}
  else
    run_job
    rc=$?
  fi
  printf '%s\n' "$rc" >&3
  dd conv=fsync status=none < /dev/null >&3 2>/dev/null
  exit $rc
fi
exec 3>&-
i=0
while [ ! -s "$jobdir/started/pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
first=$(cat "$jobdir/started/pid" 2>/dev/null)
trap '[ -n "$first" ] && kill -TERM -- -$first 2>/dev/null' TERM
while [ -n "$first" ] && kill -0 "$first" 2>/dev/null; do sleep 0.5 & wait $!; done
exit 0
'''


def control_root(state_dir: str | Path) -> Path:
    """The daemon's own directory of job control files (see skyd.privilege.JobFiles)."""
    return Path(state_dir) / "jobs"


def control_dir(state_dir: str | Path, cluster: str, job_id: int, rank: int) -> str:
    return str(control_root(state_dir) / cluster / str(job_id) / f"node-{rank}")


def spawn(handle: JobHandle, nodes: list[NodeInfo], uid: int, gid: int,
          log_limit: int = 0, fence: devicefence.DeviceFence | None = None,
          scopes: Scopes | None = None) -> JobHandle:
    """Start the runners, detached (own session), as the job's owner, with a clean login
    environment; their output and exit status go to the daemon's control files. With a
    `fence`, a runner on a host with GPUs starts in a devices cgroup that denies it the
    GPUs its job does not hold; with `scopes`, any other runner starts in a systemd scope
    of its own (the two do not combine: scopes.py). What it starts is in the calling
    thread's cpu cgroup (LocalRunner.spawn: where work yields to the daemon)."""
    by_rank = {n.rank: n for n in nodes}
    procs = []
    for np in handle.nodes:
        node = by_rank[np.rank]
        files = privilege.JobFiles(Path(np.ctl))
        log_fd, code_fd = files.open_for_runner(uid, gid)
        env = {**privilege.login_env(uid), **gpu_env(np.gpus)}
        fenced = fence is not None and np.gpus is not None
        if fenced:
            # CUDA numbers GPUs fastest first unless told otherwise; in PCI order its
            # numbers are nvidia-smi's, the ones the ledger gives and the fence leaves open.
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        # `nice` execs bash in place (same pid): the runner and all it starts run below
        # the daemon's loop.
        argv = ["nice", "-n", str(privilege.WORK_NICE), "bash", "-c", RUNNER, "skyd-runner",
                np.jobdir, str(Path(node.path) / WORKDIR), str(code_fd),
                str(max(0, log_limit)), str(privilege.WORK_NICE)]
        if scopes is not None and not fenced:
            # systemd-run execs it in place once in its scope (same pid), as its owner.
            options, identity = privilege.scope_identity(uid, gid)
            argv = scopes.command(np.ctl, options, argv)
        else:
            # setpriv execs it in place (same pid) as its owner.
            become, identity = privilege.exec_identity(uid, gid)
            argv = become + argv
        try:
            def start() -> subprocess.Popen:
                return subprocess.Popen(
                    argv, cwd="/", env=env, stdin=subprocess.DEVNULL,
                    stdout=log_fd, stderr=subprocess.STDOUT, pass_fds=(code_fd,),
                    start_new_session=True, **identity)
            if fence is not None and np.gpus is not None:
                p = fence.spawn_inside(np.ctl, np.gpus, start)
            else:
                p = start()
        finally:
            os.close(log_fd)
            os.close(code_fd)
        procs.append(msgspec.structs.replace(np, pid=p.pid, start=process_start(p.pid) or 0,
                                             log=str(files.log)))
    return msgspec.structs.replace(handle, nodes=procs)


async def wait_exit(handle: JobHandle) -> None:
    """Return when every node's runner has exited: pidfds, no polling."""
    loop = asyncio.get_running_loop()
    for np in handle.nodes:
        if not alive(np):
            continue
        try:
            fd = os.pidfd_open(np.pid)
        except OSError:
            continue
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set_once, done)
        try:
            if alive(np):      # it may have exited between the check and the open
                await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)


def _set_once(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def log_sources(handle: JobHandle) -> list[tuple[bytes, str]]:
    """(line prefix, log path) per node; no prefix for a single node. Only the daemon's
    control files: a handle without them (never started) has no log."""
    return [(rank_prefix(np.rank, len(handle.nodes)), str(privilege.JobFiles(Path(np.ctl)).log))
            for np in handle.nodes if np.ctl]


async def read_log(path: str, offset: int) -> bytes:
    """A chunk of a job's log, read off the loop, never following a link or a FIFO."""
    return await asyncio.to_thread(privilege.read_regular, path, offset, READ_CHUNK)


class LocalRunner(JobRunner):
    """`cpus`: what a node (this host, as the daemon detected it) offers to jobs;
    `log_limit`: bytes kept of each node's job output (0: all); `scopes`: systemd-run's
    scopes where the daemon found them at its start (scopes.detect), else None; `cpu`:
    where work yields to the daemon (skyd.sizing.cpugroups), None where not used."""

    def __init__(self, cpus: float, log_limit: int = 0, scopes: Scopes | None = None,
                 cpu: CpuGroups | None = None) -> None:
        self.cpus = cpus
        self.log_limit = max(0, log_limit)
        self.scopes = scopes
        self.cpu = cpu

    @property
    def fence(self) -> devicefence.DeviceFence | None:
        """The host's device fence (found once, at first use); None: none here."""
        return devicefence.detect()

    @property
    def isolation(self) -> str:
        """How jobs on this host are kept to their GPUs (protocol.GpuHost.isolation)."""
        return devicefence.ENVIRONMENT if self.fence is None else devicefence.ENFORCED

    def sweep_fences(self) -> None:
        """At the daemon's start: the device cgroups left empty by jobs that ended."""
        if self.fence is not None:
            self.fence.sweep()

    def capacity(self, node: NodeInfo) -> float:
        return self.cpus

    async def spawn(self, handle: JobHandle, nodes: list[NodeInfo], uid: int,
                    gid: int) -> JobHandle:
        # A fork+exec per node, in a thread: a few ms each that the loop, which accepts
        # everyone's requests, should not spend (profiling/bench_acceptance.py).
        args = (handle, nodes, uid, gid, self.log_limit, self.fence, self.scopes)
        if self.cpu is not None:
            return await self.cpu.start_in_work(spawn, *args)
        return await asyncio.to_thread(spawn, *args)

    async def wait_outcome(self, handle: JobHandle, nodes: list[NodeInfo]) -> Outcome:
        while True:
            outcome = job_outcome(handle)
            if outcome is not None:
                fence = self.fence
                if fence is not None and handle.nodes and handle.nodes[0].ctl:
                    fence.sweep(handle.nodes[0].ctl)   # its runners are gone: so are their cgroups
                return outcome
            await wait_exit(handle)

    async def cancel(self, handle: JobHandle, nodes: list[NodeInfo]) -> None:
        mark_cancelled(handle)
        signal_job(handle, signal.SIGTERM)
        asyncio.get_running_loop().call_later(CANCEL_GRACE, signal_job, handle, signal.SIGKILL)

    async def kill(self, handle: JobHandle, nodes: list[NodeInfo]) -> None:
        signal_job(handle, signal.SIGKILL)

    def log_source(self, handle: JobHandle, nodes: list[NodeInfo], offset: int, follow: bool,
                   topic: Topic | None = None, ended: Callable[[], bool] = already_ended) -> LogSource:
        # Written by the detached runners: woken by the job's topic (its end, from the
        # pidfd watcher), else by a back-off poll.
        return JobLogFiles(log_sources(handle), follow, ended, Backoff(topic), read_log)
