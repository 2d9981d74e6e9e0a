"""The `ssh` infra: nodes are existing hosts from a node pool, reached with the system's
ssh and rsync (so ~/.ssh/config, agents and jump hosts just work).

Connections are multiplexed (ControlMaster): one handshake per host serves every command
of a request. A node's files live under `~/.skyd/<cluster>/node-<rank>/` of the login:
the workdir in `sky_workdir/`, each job in `jobs/<id>/` — its script, its environment
(0600), its log and its exit status, written on the node by a detached runner, so a job
outlives the daemon and an ssh drop.
"""

from __future__ import annotations

import asyncio
import secrets as _secrets
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator, Callable

import msgspec

from skyd.infra.base import (Infra, JobHandle, NodeProc, Outcome, rank_prefix, register,
                             run_streamed)
from skyd.infra.local import RUNNER, env_script, setup_failed
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError

CONNECT_TIMEOUT = 10        # seconds for a TCP connect + handshake
COMMAND_TIMEOUT = 120       # a bookkeeping command (mkdir, start a job) never takes longer
WATCH_RETRY = (1.0, 10.0)   # back-off while a node does not answer
KILL_GRACE = 3


# Is the runner $pid (started at $start) still running? A zombie is not: the runner's
# parent is gone, and init may take a while to reap it.
ALIVE = ("alive() { s=$(cat /proc/$pid/stat 2>/dev/null) || return 1; set -- ${s##*) }; "
         "[ \"$1\" != Z ] && [ \"${20}\" = \"$start\" ]; }\n")


def node_dir(cluster: str, rank: int) -> str:
    return f".skyd/{cluster}/node-{rank}"


class SshInfra(Infra):
    kind = "ssh"

    def __init__(self) -> None:
        self.control_dir = "/tmp"
        self.known_hosts = ""
        # Told when a node stops or starts answering: (host, ok, reason).
        self.on_health: Callable[[str, bool, str], None] = lambda *_: None

    def configure(self, control_dir: str, known_hosts: str = "") -> None:
        Path(control_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.control_dir, self.known_hosts = control_dir, known_hosts

    # ---- commands -------------------------------------------------------------------

    def ssh_options(self, node: NodeInfo) -> list[str]:
        opts = ["-p", str(node.port), "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", "ControlPersist=120", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", "-o", "StrictHostKeyChecking=accept-new",
                "-o", "LogLevel=ERROR"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if node.identity_file:
            opts += ["-i", node.identity_file, "-o", "IdentitiesOnly=yes"]
        if node.proxy_jump:
            opts += ["-J", node.proxy_jump]
        return opts

    def ssh(self, node: NodeInfo, command: str) -> list[str]:
        return ["ssh", *self.ssh_options(node), f"{node.user}@{node.ip}", command]

    def run(self, node: NodeInfo, script: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a bookkeeping script on a node; its stdout, or a clear error."""
        try:
            p = subprocess.run(self.ssh(node, "bash -s"), input=script.encode(),
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SkydError(ErrorCode.FAILED, f"{node.host}: no answer within {timeout:g}s") from None
        if p.returncode == 255:
            raise unreachable(node, p.stderr)
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"{node.host}: command failed with exit status "
                            f"{p.returncode}", _last_lines(p.stderr))
        return p.stdout.decode(errors="replace")

    def each(self, nodes: list[NodeInfo], fn: Callable[[NodeInfo], object]) -> list:
        """Do `fn` on every node at once; the first error wins."""
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            return list(pool.map(fn, nodes))

    # ---- worker side --------------------------------------------------------------------

    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        def prepare(n: NodeInfo) -> NodeInfo:
            out = self.run(n, f"mkdir -p {n.path}/sky_workdir {n.path}/jobs && "
                              "chmod 700 .skyd && nproc && "
                              "awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo").split()
            return msgspec.structs.replace(n, cpus=float(out[-2]), memory_bytes=int(float(out[-1])))
        return self.each(cluster.nodes, prepare)

    def _rsync(self, node: NodeInfo, src: str, dst: str) -> None:
        source = Path(src).expanduser()
        if not source.exists():
            raise SkydError(ErrorCode.INVALID_TASK, f"{src} does not exist")
        shell = " ".join(shlex.quote(o) for o in ["ssh", *self.ssh_options(node)])
        s = str(source) + ("/" if source.is_dir() else "")
        try:
            p = subprocess.run(["rsync", "-a", "-e", shell, s, f"{node.user}@{node.ip}:{dst}"],
                               capture_output=True, timeout=3600)
        except FileNotFoundError:
            raise SkydError(ErrorCode.FAILED, "rsync is not installed on the server",
                            "install it: apt-get install rsync") from None
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"copying {src} to {node.host} failed "
                            f"(rsync exit status {p.returncode})", _last_lines(p.stderr))

    def sync_workdir(self, nodes, src):
        if not Path(src).expanduser().is_dir():
            raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
        self.each(nodes, lambda n: self._rsync(n, src, f"{n.path}/sky_workdir/"))

    def sync_file_mounts(self, nodes, mounts):
        for target, src in mounts.items():
            dst = target if target.startswith("/") else f"{target.removeprefix('~/')}"
            parent = str(Path(dst).parent)
            self.each(nodes, lambda n: (self.run(n, f"mkdir -p {shlex.quote(parent)}"),
                                        self._rsync(n, src, dst)))

    def run_setup(self, nodes, script, envs):
        def start(n: NodeInfo) -> subprocess.Popen:
            p = subprocess.Popen(self.ssh(n, "bash -s"), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            p.stdin.write((env_script(envs(n)) + f"cd {n.path}/sky_workdir\n"
                           f"bash -c {shlex.quote(script)} < /dev/null\n").encode())
            p.stdin.close()
            return p
        for n, rc, tail in run_streamed(nodes, start):
            if rc == 255:
                raise unreachable(n, b"".join(tail))
            raise setup_failed(n, rc, tail)

    def prepare_job(self, nodes, job_id, run, envs):
        def prepare(n: NodeInfo) -> NodeProc:
            # A fresh job dir: what a failed teardown left there must not pass for this job.
            eof = "SKYD_" + _secrets.token_hex(8)
            script = (f"set -e\njobdir=$HOME/{n.path}/jobs/{job_id}\nrm -rf \"$jobdir\"\n"
                      "mkdir -p \"$jobdir\"\n"
                      f"umask 077\ncat > \"$jobdir/run.sh\" <<'{eof}'\n{run}\n{eof}\n"
                      f"cat > \"$jobdir/env.sh\" <<'{eof}'\n{env_script(envs(n))}{eof}\n"
                      f"cat > \"$jobdir/runner.sh\" <<'{eof}'\n. \"$1/env.sh\"\n{RUNNER}\n{eof}\n"
                      "echo \"$jobdir\"\n")
            jobdir = self.run(n, script).split()[-1]
            return NodeProc(rank=n.rank, pid=0, start=0, jobdir=jobdir, log=f"{jobdir}/run.log")
        return JobHandle(nodes=self.each(nodes, prepare))

    def stop_jobs(self, nodes, handles):
        by_rank = {n.rank: n for n in nodes}
        for h in handles:
            self.each([by_rank[np.rank] for np in h.nodes if np.rank in by_rank],
                      lambda n, h=h: self.run(n, _kill_script(_proc(h, n.rank), True)))

    def teardown(self, state_dir, cluster):
        def remove(n: NodeInfo) -> None:
            try:
                self.run(n, f"rm -rf {n.path}; rmdir .skyd/{cluster.name} 2>/dev/null; true")
            except SkydError as e:
                print(f"warning: could not clean {n.host}: {e.message}", flush=True)
        self.each(cluster.nodes, remove)

    # ---- daemon side -----------------------------------------------------------------------

    def capacity(self, node):
        return node.cpus or float("inf")     # unknown until probed: do not hold jobs back

    async def spawn(self, handle, nodes, uid, gid):
        by_rank = {n.rank: n for n in nodes}

        async def start(np: NodeProc) -> NodeProc:
            node = by_rank[np.rank]
            jobdir = shlex.quote(np.jobdir)
            script = (f"cd {node.path}/sky_workdir\n"
                      f"setsid sh {jobdir}/runner.sh {jobdir} >> {jobdir}/run.log 2>&1 "
                      "< /dev/null &\npid=$!\necho $pid\n"
                      "awk '{print $22}' /proc/$pid/stat 2>/dev/null || echo 0\n")
            rc, out, err = await self._arun(node, script, COMMAND_TIMEOUT)
            if rc != 0:
                raise unreachable(node, err)
            pid, start_ticks = out.split()[:2]
            return msgspec.structs.replace(np, pid=int(pid), start=int(start_ticks))

        procs = await asyncio.gather(*(start(np) for np in handle.nodes))
        return msgspec.structs.replace(handle, nodes=list(procs))

    async def _arun(self, node: NodeInfo, script: str,
                    timeout: float | None = None) -> tuple[int, bytes, bytes]:
        # The script travels as the command, not on stdin: an ssh that fails at once
        # (connection refused) would close its stdin under the write.
        proc = await asyncio.create_subprocess_exec(
            *self.ssh(node, "bash -c " + shlex.quote(script)), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out, err

    async def check(self, node: NodeInfo, timeout: float = 15.0) -> bool:
        """Is the node answering? Reported to on_health either way."""
        try:
            rc, _, err = await self._arun(node, "true", timeout)
        except asyncio.TimeoutError:
            rc, err = 255, f"no answer within {timeout:g}s".encode()
        if rc == 255:
            self.on_health(node.host, False, f"node {node.rank} ({node.host}) does not answer: "
                                             f"{_last_lines(err) or 'ssh failed'}")
            return False
        self.on_health(node.host, True, "")
        return True

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
            rc, out, err = await self._arun(node, script)
            if rc != 255:
                self.on_health(node.host, True, "")
                return out.decode().strip() or "lost"
            self.on_health(node.host, False, f"node {node.rank} ({node.host}) does not answer: "
                                             f"{_last_lines(err) or 'ssh failed'}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY[1])

    async def wait_outcome(self, handle, nodes):
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
                        return _outcome(results)     # one node failed: the job has failed
        finally:
            for t in tasks:
                t.cancel()
        return _outcome(results)

    async def cancel(self, handle, nodes):
        by_rank = {n.rank: n for n in nodes}
        await asyncio.gather(*(self._arun(by_rank[np.rank], _kill_script(np, True), 30)
                               for np in handle.nodes if np.rank in by_rank),
                             return_exceptions=True)

    async def kill(self, handle, nodes):
        by_rank = {n.rank: n for n in nodes}
        await asyncio.gather(*(self._arun(by_rank[np.rank], _kill_script(np, False), 30)
                               for np in handle.nodes if np.rank in by_rank),
                             return_exceptions=True)

    async def follow_log(self, handle, nodes, offset, follow, finished, wait_change
                         ) -> AsyncIterator[bytes]:
        by_rank = {n.rank: n for n in nodes}
        parts = [(np, by_rank[np.rank]) for np in handle.nodes if np.rank in by_rank]
        start = offset + 1 if len(parts) == 1 else 1
        queue: asyncio.Queue = asyncio.Queue()

        async def tail(np: NodeProc, node: NodeInfo) -> None:
            prefix = rank_prefix(np.rank, len(parts))
            log = shlex.quote(np.log)
            if follow:
                # Not `tail --pid`: it counts a zombie runner (not yet reaped by init, which
                # can take a second or more) as alive. ALIVE does not.
                cmd = (f"pid={np.pid}; start={np.start}\n{ALIVE}"
                       f"tail -s 0.2 -c +{start} -f {log} 2>/dev/null & t=$!\n"
                       "while alive; do sleep 0.1; done; sleep 0.3; kill $t; true")
            else:
                cmd = f"tail -c +{start} {log} 2>/dev/null; true"
            proc = await asyncio.create_subprocess_exec(*self.ssh(node, cmd),
                                                        stdout=subprocess.PIPE,
                                                        stdin=subprocess.DEVNULL,
                                                        start_new_session=True)
            try:
                assert proc.stdout is not None
                if not prefix:
                    while data := await proc.stdout.read(65536):
                        await queue.put(data)
                else:
                    while line := await proc.stdout.readline():
                        await queue.put(prefix + line)
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                await queue.put(None)

        tasks = [asyncio.ensure_future(tail(np, node)) for np, node in parts]
        try:
            left = len(tasks)
            while left:
                item = await queue.get()
                if item is None:
                    left -= 1
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()


def _proc(h: JobHandle, rank: int) -> NodeProc:
    return next(np for np in h.nodes if np.rank == rank)


def _kill_script(np: NodeProc, graceful: bool) -> str:
    """Mark the job cancelled and signal its session; escalate after a grace period."""
    jobdir = shlex.quote(np.jobdir)
    if np.pid <= 0:                      # never started: `kill -- -0` would hit the shell
        return f"touch {jobdir}/cancelled\n" if graceful else "true\n"
    if not graceful:
        return f"kill -KILL -- -{np.pid} 2>/dev/null; true\n"
    return (f"touch {jobdir}/cancelled\nkill -TERM -- -{np.pid} 2>/dev/null\n"
            f"i=0; while kill -0 {np.pid} 2>/dev/null && [ $i -lt {KILL_GRACE * 10} ]; "
            "do sleep 0.1; i=$((i+1)); done\n"
            f"kill -KILL -- -{np.pid} 2>/dev/null; true\n")


def _outcome(results: dict[int, str]) -> Outcome:
    if results.get(0) == "cancelled" or "cancelled" in results.values():
        return Outcome("CANCELLED", None, "cancelled")
    for rank, r in sorted(results.items()):
        if r == "lost":
            return Outcome("FAILED", None, f"the job's process on node {rank} was killed")
        if r != "0":
            code = int(r) if r.lstrip("-").isdigit() else None
            return Outcome("FAILED", code, f"exit status {r} on node {rank}")
    return Outcome("SUCCEEDED", 0)


def _last_lines(data: bytes, n: int = 5) -> str:
    return "\n".join(data.decode(errors="replace").strip().splitlines()[-n:])


def unreachable(node: NodeInfo, stderr: bytes) -> SkydError:
    detail = _last_lines(stderr)
    hint = ""
    if "Permission denied" in detail:
        hint = "check the pool's user and identity_file"
    elif "Host key verification failed" in detail or "IDENTIFICATION HAS CHANGED" in detail:
        hint = "the host's key changed: check the host, then fix known_hosts"
    return SkydError(ErrorCode.FAILED, f"cannot reach node {node.rank} ({node.host}): "
                     f"{detail or 'ssh failed'}", hint)


register(SshInfra())
