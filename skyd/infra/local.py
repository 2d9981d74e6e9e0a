"""The `local` infra: a cluster is a set of sandbox nodes on the daemon's own host.

A node is a directory (`<state>/clusters/<name>/node-<rank>`) with the task's workdir in
`sky_workdir/`. A job on a node is a detached runner (its own session, not a child of
the daemon or of the worker) that runs the task's `run` with bash and writes the exit
status to `<jobdir>/exit_code` when it ends — so the outcome is recorded even while the
daemon is down, and the daemon learns it at once through a pidfd when it is up.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping

import msgspec

from skyd import privilege

from skyd.sizing import hardware

from skyd.infra.base import (Infra, JobHandle, NodeProc, Outcome, rank_prefix,
                             run_streamed)
from skyd.streams import READ_CHUNK, Backoff, JobLogFiles
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError

LOCAL_IP = "127.0.0.1"
_HOST_CPUS = hardware.detect().cpus     # a local node is this host (cgroup-aware)
WORKDIR = "sky_workdir"

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


def cluster_root(state_dir: str | Path) -> Path:
    return Path(state_dir) / "clusters"


def cluster_dir(state_dir: str | Path, name: str) -> Path:
    return cluster_root(state_dir) / name


def control_root(state_dir: str | Path) -> Path:
    """The daemon's own directory of job control files (see skyd.privilege.JobFiles)."""
    return Path(state_dir) / "jobs"


def control_dir(state_dir: str | Path, cluster: str, job_id: int, rank: int) -> str:
    return str(control_root(state_dir) / cluster / str(job_id) / f"node-{rank}")


def prepare_cluster_dir(state_dir: str | Path, cluster: ClusterRecord, uid: int, gid: int) -> Path:
    """Run before the worker drops privileges: the sandbox belongs to the cluster's owner.
    A new cluster (no nodes yet) always gets a fresh directory; an existing one keeps its
    own, and only if it still is a directory of this owner."""
    root = cluster_root(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)     # owners reach their own cluster; nobody lists the others
    if not cluster.nodes:
        privilege.discard_user_tree(root, cluster.name)
    return privilege.make_user_dir(root, cluster.name, uid, gid)


def provision(state_dir: str, name: str, num_nodes: int) -> list[NodeInfo]:
    nodes = []
    for rank in range(num_nodes):
        path = cluster_dir(state_dir, name) / f"node-{rank}"
        (path / WORKDIR).mkdir(parents=True, exist_ok=True)
        (path / "jobs").mkdir(exist_ok=True)
        nodes.append(NodeInfo(rank=rank, ip=LOCAL_IP, host="local", path=str(path)))
    return nodes


def sync_workdir(nodes: list[NodeInfo], src: str) -> None:
    source = Path(src).expanduser()
    if not source.is_dir():
        raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
    for n in nodes:
        dst = Path(n.path) / WORKDIR
        shutil.copytree(source, dst, dirs_exist_ok=True, symlinks=True)


def sync_file_mounts(nodes: list[NodeInfo], mounts: Mapping[str, str]) -> None:
    """Copy local paths onto each node; targets are relative to the node (or ~)."""
    for target, src in mounts.items():
        source = Path(src).expanduser()
        if not source.exists():
            raise SkydError(ErrorCode.INVALID_TASK, f"file_mounts: source {src} does not exist")
        for n in nodes:
            dst = Path(n.path) / target.lstrip("/").removeprefix("~/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dst, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(source, dst)


def run_setup(nodes: list[NodeInfo], script: str, envs: Callable[[NodeInfo], dict]) -> None:
    """Run setup on every node at once; fail with where and how if any node fails."""
    failures = run_streamed(nodes, lambda n: subprocess.Popen(
        ["bash", "-c", script], cwd=Path(n.path) / WORKDIR, env=envs(n),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    if failures:
        raise setup_failed(*failures[0])


def setup_failed(n: NodeInfo, rc: int, tail: list[bytes]) -> SkydError:
    last = b"".join(tail).decode(errors="replace").rstrip()
    return SkydError(ErrorCode.FAILED,
                     f"setup failed on node {n.rank} ({n.host}) with exit status {rc}",
                     f"last lines of output:\n{last}" if last else "")


def env_script(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def prepare_job(nodes: list[NodeInfo], job_id: int, run: str,
                envs: Callable[[NodeInfo], dict]) -> JobHandle:
    """The job's files on each node: its script, its environment (0600: it may hold
    secrets) and the runner that will start it."""
    procs = []
    for n in nodes:
        jobdir = Path(n.path) / "jobs" / str(job_id)
        shutil.rmtree(jobdir, ignore_errors=True)   # fresh: nothing left passes for this job
        jobdir.mkdir(parents=True, exist_ok=True)
        (jobdir / "run.sh").write_text(run)
        fd = os.open(jobdir / "env.sh", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(env_script(envs(n)))
        procs.append(NodeProc(rank=n.rank, pid=0, start=0, jobdir=str(jobdir),
                              log=str(jobdir / "run.log")))
    return JobHandle(nodes=procs)


def spawn(handle: JobHandle, nodes: list[NodeInfo], uid: int, gid: int,
          log_limit: int = 0) -> JobHandle:
    """Start the runners, detached (own session), as the job's owner, with a clean login
    environment; their output and exit status go to the daemon's control files."""
    by_rank = {n.rank: n for n in nodes}
    procs = []
    for np in handle.nodes:
        node = by_rank[np.rank]
        files = privilege.JobFiles(Path(np.ctl))
        log_fd, code_fd = files.open_for_runner(uid, gid)
        try:
            p = subprocess.Popen(
                # `nice` execs bash in place (same pid): the runner and all it starts
                # run below the daemon's loop.
                ["nice", "-n", str(privilege.WORK_NICE), "bash", "-c", RUNNER, "skyd-runner", np.jobdir,
                 str(Path(node.path) / WORKDIR), str(code_fd), str(max(0, log_limit)),
                 str(privilege.WORK_NICE)],
                cwd="/", env=privilege.login_env(uid), stdin=subprocess.DEVNULL,
                stdout=log_fd, stderr=subprocess.STDOUT, pass_fds=(code_fd,),
                start_new_session=True, **privilege.popen_identity(uid, gid))
        finally:
            os.close(log_fd)
            os.close(code_fd)
        procs.append(msgspec.structs.replace(np, pid=p.pid, start=process_start(p.pid) or 0,
                                             log=str(files.log)))
    return msgspec.structs.replace(handle, nodes=procs)


def teardown(state_dir: str, name: str) -> None:
    """As the cluster's owner (the worker runs as them): remove its nodes. The emptied
    directory itself is removed by the daemon, which owns its parent."""
    try:
        privilege.rmtree_owned(cluster_dir(state_dir, name))
    except OSError as e:
        raise SkydError(ErrorCode.FAILED, f"teardown of cluster {name!r} did not finish: {e}",
                        "remove what blocks it, then run down again") from None


# ---- used by the daemon: cheap, non-blocking in practice -------------------------------

def process_start(pid: int) -> int | None:
    """Start time of a live process in clock ticks, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def _alive(np: NodeProc) -> bool:
    start = process_start(np.pid)
    return start is not None and (np.start == 0 or start == np.start)


def _files(np: NodeProc) -> privilege.JobFiles | None:
    return privilege.JobFiles(Path(np.ctl)) if np.ctl else None


def _exit_code(np: NodeProc) -> int | None:
    files = _files(np)
    return files.exit_status() if files is not None else None


def job_outcome(handle: JobHandle) -> Outcome | None:
    """None while any node still runs; else how the job ended."""
    if any(_alive(np) for np in handle.nodes):
        return None
    first = _files(handle.nodes[0])
    if first is not None and first.is_cancelled():
        return Outcome("CANCELLED", None, "cancelled")
    codes = [(np, _exit_code(np)) for np in handle.nodes]
    for np, code in codes:
        if code is None:
            return Outcome("FAILED", None, f"the job's process on node {np.rank} was killed")
    for np, code in codes:
        if code != 0:
            return Outcome("FAILED", code, f"exit status {code} on node {np.rank}")
    return Outcome("SUCCEEDED", 0)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def signal_job(handle: JobHandle, sig: int) -> None:
    for np in handle.nodes:
        if not _alive(np):
            continue
        try:
            os.killpg(np.pid, sig)
        except OSError:
            pass
        for pid in _session_members(np.pid):  # processes that left the group
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def mark_cancelled(handle: JobHandle) -> None:
    """The daemon's marker (in its control directory): the job ends CANCELLED."""
    for np in handle.nodes:
        files = _files(np)
        if files is not None:
            files.mark_cancelled()


async def wait_exit(handle: JobHandle) -> None:
    """Return when every node's runner has exited: pidfds, no polling."""
    loop = asyncio.get_running_loop()
    for np in handle.nodes:
        if not _alive(np):
            continue
        try:
            fd = os.pidfd_open(np.pid)
        except OSError:
            continue
        done = loop.create_future()
        loop.add_reader(fd, lambda d=done: d.done() or d.set_result(None))
        try:
            if _alive(np):      # it may have exited between the check and the open
                await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)


def log_sources(handle: JobHandle) -> list[tuple[bytes, str]]:
    """(line prefix, log path) per node; no prefix for a single node. Only the daemon's
    control files: a handle without them (never started) has no log."""
    return [(rank_prefix(np.rank, len(handle.nodes)), str(privilege.JobFiles(Path(np.ctl)).log))
            for np in handle.nodes if np.ctl]


async def read_log(path: str, offset: int) -> bytes:
    """A chunk of a job's log, read off the loop, never following a link or a FIFO."""
    return await asyncio.to_thread(privilege.read_regular, path, offset, READ_CHUNK)



def _stop_jobs(handles: list[JobHandle], grace: float = 3.0) -> None:
    for h in handles:
        mark_cancelled(h)
        signal_job(h, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(job_outcome(h) is None for h in handles):
        time.sleep(0.05)
    for h in handles:
        signal_job(h, signal.SIGKILL)


class LocalInfra(Infra):
    kind = "local"
    log_limit = 0          # bytes kept of each node's job output (0: all); set by the daemon

    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        return provision(state_dir, cluster.name, cluster.num_nodes)

    def sync_workdir(self, nodes, src):
        sync_workdir(nodes, src)

    def sync_file_mounts(self, nodes, mounts):
        sync_file_mounts(nodes, mounts)

    def run_setup(self, nodes, script, envs):
        run_setup(nodes, script, envs)

    def prepare_job(self, nodes, job_id, run, envs):
        return prepare_job(nodes, job_id, run, envs)

    async def spawn(self, handle, nodes, uid, gid):
        return spawn(handle, nodes, uid, gid, self.log_limit)   # a fork+exec per node

    def capacity(self, node):
        return _HOST_CPUS

    def stop_jobs(self, nodes, handles):
        _stop_jobs(handles)

    def teardown(self, state_dir, cluster):
        teardown(state_dir, cluster.name)

    async def wait_outcome(self, handle, nodes):
        while True:
            outcome = job_outcome(handle)
            if outcome is not None:
                return outcome
            await wait_exit(handle)

    async def cancel(self, handle, nodes):
        mark_cancelled(handle)
        signal_job(handle, signal.SIGTERM)
        asyncio.get_running_loop().call_later(3.0, signal_job, handle, signal.SIGKILL)

    async def kill(self, handle, nodes):
        signal_job(handle, signal.SIGKILL)

    def log_source(self, handle, nodes, offset, follow, topic=None, ended=lambda: True):
        # Written by the detached runners: woken by the job's topic (its end, from the
        # pidfd watcher), else by a back-off poll.
        return JobLogFiles(log_sources(handle), follow, ended, Backoff(topic), read_log)

