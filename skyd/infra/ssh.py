"""The `ssh` infra: nodes are existing hosts from a node pool, reached with the system's
ssh and rsync (so ~/.ssh/config, agents and jump hosts just work).

Who logs in: on a per-user pool (the default) a node is reached under its cluster owner's
own login name with the owner's own ssh setup — every ssh and rsync runs *as the owner*:
in the worker (which already is the owner) and in the daemon (starting, watching,
cancelling jobs, reading logs, health checks, `skyctl infra` probes), where the ssh child
drops to the owner's uid, groups, HOME and clean environment and uses the owner's control
directory `<state>/ssh/<uid>`. Users of one pool then cannot read each other's files or
signal each other's jobs. A pool with `shared_login: true` is reached with its one login
and key, by the daemon as itself (control directory `<state>/ssh/daemon`): not isolated.

Connections are multiplexed (ControlMaster): one handshake per host serves every command
of a request. A node's files live under `~/.skyd/<cluster>/node-<rank>/` of the login
(0700): the workdir in `sky_workdir/`, each job in `jobs/<id>/` — its script, its
environment (0600, deleted by the runner as soon as it has read it: no secret stays in a
file once the job has started), its log and its exit status, written on the node by a
detached runner, so a job outlives the daemon and an ssh drop. Every command line puts
`--` before the destination; the pool file's fields are checked (skyd.infra.nodepools).
"""

from __future__ import annotations

import asyncio
import os
import secrets as _secrets
import shlex
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Hashable, NamedTuple

import msgspec

from skyd import privilege
from skyd.infra.base import (Infra, JobHandle, NodeProc, Outcome, rank_prefix,
                             run_streamed)
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError
from skyd.streams import LineMerge, LogSource, Topic

# The runner on a node: read the job's environment and delete it at once (secrets are
# never left in a file once the job has started), run the user's script, then record how
# it ended. Cancel writes the `cancelled` marker first, then signals the whole session.
# Starting a job is idempotent: only the first runner (mkdir is atomic) reads the
# environment and runs the script; one started again (the daemon died between starting
# it and recording that) follows the first to its end instead and needs no env.sh. The
# environment is applied in a subshell, so a task variable cannot change the runner's own.
RUNNER = r'''
jobdir=$1
if mkdir "$jobdir/started" 2>/dev/null; then
  echo $$ > "$jobdir/started/pid"
  skyd_env=$(cat "$jobdir/env.sh" 2>/dev/null)
  rm -f "$jobdir/env.sh"
  (eval "$skyd_env"; unset skyd_env; exec bash "$1/run.sh" < /dev/null)
  rc=$?
  printf '%s\n' "$rc" > "$jobdir/exit_code.tmp" && mv "$jobdir/exit_code.tmp" "$jobdir/exit_code"
  exit $rc
fi
i=0
while [ ! -s "$jobdir/started/pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
first=$(cat "$jobdir/started/pid" 2>/dev/null)
trap '[ -n "$first" ] && kill -TERM -- -$first 2>/dev/null' TERM
while [ -n "$first" ] && kill -0 "$first" 2>/dev/null; do sleep 0.5 & wait $!; done
[ -e "$jobdir/exit_code" ] && exit "$(cat "$jobdir/exit_code")"
exit 1
'''


def env_script(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def setup_failed(n: NodeInfo, rc: int, tail: list[bytes]) -> SkydError:
    last = b"".join(tail).decode(errors="replace").rstrip()
    return SkydError(ErrorCode.FAILED,
                     f"setup failed on node {n.rank} ({where(n)}) with exit status {rc}",
                     f"last lines of output:\n{last}" if last else "")


CONNECT_TIMEOUT = 10        # seconds for a TCP connect + handshake
COMMAND_TIMEOUT = 120       # a bookkeeping command (mkdir, start a job) never takes longer
WATCH_RETRY = (1.0, 10.0)   # back-off while a node does not answer
KILL_GRACE = 3
OWNER_TTL = 60.0            # seconds an owner's identity (groups, home) is reused


# Is the runner $pid (started at $start) still running? A zombie is not: the runner's
# parent is gone, and init may take a while to reap it.
ALIVE = ("alive() { s=$(cat /proc/$pid/stat 2>/dev/null) || return 1; set -- ${s##*) }; "
         "[ \"$1\" != Z ] && [ \"${20}\" = \"$start\" ]; }\n")


def node_dir(cluster: str, rank: int) -> str:
    return f".skyd/{cluster}/node-{rank}"


class Owner(NamedTuple):
    """The local account an ssh child runs as (a per-user pool's cluster owner)."""
    uid: int
    gid: int
    groups: list[int]
    env: dict[str, str]          # a clean login-like environment, never the daemon's
    control_dir: str             # <state>/ssh/<uid>, the owner's own

    def popen(self) -> dict:
        """subprocess.Popen arguments that start the child as this owner."""
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups,
                "env": self.env, "cwd": "/"}

    def exec_kwargs(self) -> dict:
        """The same for asyncio's subprocesses (uvloop has no user/group arguments): the
        child drops its groups, gid and uid before exec, with nothing but syscalls."""
        uid, gid, groups = self.uid, self.gid, self.groups

        def become() -> None:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        return {"preexec_fn": become, "env": self.env, "cwd": "/"}


class SshInfra(Infra):
    kind = "ssh"

    def __init__(self) -> None:
        self.control_dir = "/tmp"       # this process's own ssh control sockets
        self.control_base = "/tmp"      # <state>/ssh: owners' control dirs are <uid> in it
        self.known_hosts = ""
        self._owners: dict[int, tuple[float, Owner]] = {}
        # Told when a node stops or starts answering: (host, ok, reason).
        self.on_health: Callable[[str, bool, str], None] = lambda *_: None

    def configure(self, control_dir: str, known_hosts: str = "") -> None:
        """`control_dir` is `<state>/ssh/<uid>` (a worker) or `<state>/ssh/daemon`; owners'
        control dirs are its siblings."""
        Path(control_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.control_dir, self.known_hosts = control_dir, known_hosts
        self.control_base = str(Path(control_dir).parent)
        self._owners.clear()

    # ---- who runs ssh ------------------------------------------------------------------

    def _switches(self, node: NodeInfo) -> bool:
        """Must ssh to this node run as another account than this process?"""
        return node.login_uid >= 0 and node.login_uid != os.geteuid() and os.geteuid() == 0

    def owner(self, node: NodeInfo) -> Owner | None:
        """The account ssh to `node` runs as, when not this process itself (blocking: NSS
        lookups and the owner's control dir; cached)."""
        if not self._switches(node):
            return None
        uid = node.login_uid
        cached = self._owners.get(uid)
        if cached is not None and time.monotonic() - cached[0] < OWNER_TTL:
            return cached[1]
        _name, gid, _home, _shell = privilege.identity(uid)
        owner = Owner(uid, gid, privilege.groups_of(uid, gid), privilege.login_env(uid),
                      self._owner_control_dir(uid, gid))
        self._owners[uid] = (time.monotonic(), owner)
        return owner

    async def aowner(self, node: NodeInfo) -> Owner | None:
        if not self._switches(node):
            return None
        cached = self._owners.get(node.login_uid)
        if cached is not None and time.monotonic() - cached[0] < OWNER_TTL:
            return cached[1]
        return await asyncio.to_thread(self.owner, node)

    def _owner_control_dir(self, uid: int, gid: int) -> str:
        """`<state>/ssh/<uid>`, owned by uid and 0700. Its parent is the daemon's and no
        user can change it, so what is found there was made by the daemon (or a worker's
        prepare_as_root) and may be given to its owner."""
        path = os.path.join(self.control_base, str(uid))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise SkydError(ErrorCode.INTERNAL, f"{path} is not a directory")
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
        return path

    # ---- commands -------------------------------------------------------------------

    def ssh_options(self, node: NodeInfo, control_dir: str | None = None) -> list[str]:
        opts = ["-p", str(node.port), "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "ControlMaster=auto",
                "-o", f"ControlPath={control_dir or self.control_dir}/%C",
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

    def ssh(self, node: NodeInfo, command: str, owner: Owner | None = None) -> list[str]:
        """The ssh command line; `--` ends the options whatever the pool file says."""
        return ["ssh", *self.ssh_options(node, owner.control_dir if owner else None), "--",
                f"{node.user}@{node.ip}", command]

    def run(self, node: NodeInfo, script: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a bookkeeping script on a node; its stdout, or a clear error."""
        owner = self.owner(node)
        try:
            p = subprocess.run(self.ssh(node, "bash -s", owner), input=script.encode(),
                               capture_output=True, timeout=timeout,
                               **(owner.popen() if owner else {}))
        except subprocess.TimeoutExpired:
            raise SkydError(ErrorCode.FAILED, f"{where(node)}: no answer within {timeout:g}s") from None
        if p.returncode == 255:
            raise unreachable(node, p.stderr)
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"{where(node)}: command failed with exit status "
                            f"{p.returncode}", _last_lines(p.stderr))
        return p.stdout.decode(errors="replace")

    def each(self, nodes: list[NodeInfo], fn: Callable[[NodeInfo], object]) -> list:
        """Do `fn` on every node at once; the first error wins."""
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            return list(pool.map(fn, nodes))

    # ---- worker side --------------------------------------------------------------------

    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        def prepare(n: NodeInfo) -> NodeInfo:
            out = self.run(n, f"umask 077 && mkdir -p {n.path}/sky_workdir {n.path}/jobs && "
                              "chmod 700 .skyd && nproc && "
                              "awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo").split()
            return msgspec.structs.replace(n, cpus=float(out[-2]), memory_bytes=int(float(out[-1])))
        return self.each(cluster.nodes, prepare)

    def _rsync(self, node: NodeInfo, src: str, dst: str) -> None:
        source = Path(src).expanduser()
        if not source.exists():
            raise SkydError(ErrorCode.INVALID_TASK, f"{src} does not exist")
        owner = self.owner(node)
        opts = self.ssh_options(node, owner.control_dir if owner else None)
        shell = " ".join(shlex.quote(o) for o in ["ssh", *opts])
        s = str(source) + ("/" if source.is_dir() else "")
        host = f"[{node.ip}]" if ":" in node.ip else node.ip
        try:
            p = subprocess.run(["rsync", "-a", "-e", shell, "--", s,
                                f"{node.user}@{host}:{dst}"],
                               capture_output=True, timeout=3600,
                               **(owner.popen() if owner else {}))
        except FileNotFoundError:
            raise SkydError(ErrorCode.FAILED, "rsync is not installed on the server",
                            "install it: apt-get install rsync") from None
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"copying {src} to {where(node)} failed "
                            f"(rsync exit status {p.returncode})", _last_lines(p.stderr))

    def sync_workdir(self, nodes, src):
        if not Path(src).expanduser().is_dir():
            raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
        self.each(nodes, lambda n: self._rsync(n, src, f"{n.path}/sky_workdir/"))

    def sync_file_mounts(self, nodes, mounts):
        for target, src in mounts.items():
            dst = target if target.startswith("/") else f"{target.removeprefix('~/')}"
            parent = str(Path(dst).parent)
            self.each(nodes, lambda n: (self.run(n, f"mkdir -p -- {shlex.quote(parent)}"),
                                        self._rsync(n, src, dst)))

    def run_setup(self, nodes, script, envs):
        def start(n: NodeInfo) -> subprocess.Popen:
            owner = self.owner(n)
            p = subprocess.Popen(self.ssh(n, "bash -s", owner), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 **(owner.popen() if owner else {}))
            assert p.stdin is not None
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
            # env.sh (0600) lives until the runner has read it.
            eof = "SKYD_" + _secrets.token_hex(8)
            script = (f"set -e\njobdir=$HOME/{n.path}/jobs/{job_id}\nrm -rf \"$jobdir\"\n"
                      "umask 077\nmkdir -p \"$jobdir\"\n"
                      f"cat > \"$jobdir/run.sh\" <<'{eof}'\n{run}\n{eof}\n"
                      f"cat > \"$jobdir/env.sh\" <<'{eof}'\n{env_script(envs(n))}{eof}\n"
                      f"cat > \"$jobdir/runner.sh\" <<'{eof}'\n{RUNNER}\n{eof}\n"
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
                print(f"warning: could not clean {where(n)}: {e.message}", flush=True)
        self.each(cluster.nodes, remove)

    # ---- daemon side -----------------------------------------------------------------------

    def capacity(self, node):
        return node.cpus or float("inf")     # unknown until probed: do not hold jobs back

    async def _exec(self, node: NodeInfo, command: str, **kw) -> asyncio.subprocess.Process:
        """ssh to `node` running `command`, as the node's owner (per-user pool) or as this
        process (shared login), in a session of its own."""
        owner = await self.aowner(node)
        return await asyncio.create_subprocess_exec(
            *self.ssh(node, command, owner), start_new_session=True,
            **(owner.exec_kwargs() if owner else {}), **kw)

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
        proc = await self._exec(node, "bash -c " + shlex.quote(script),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
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
            self.on_health(node.host, False, f"node {node.rank} ({where(node)}) does not "
                                             f"answer: {_last_lines(err) or 'ssh failed'}")
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
            self.on_health(node.host, False, f"node {node.rank} ({where(node)}) does not "
                                             f"answer: {_last_lines(err) or 'ssh failed'}")
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

    def log_source(self, handle, nodes, offset, follow, topic=None, ended=lambda: True):
        return SshJobLog(self, handle, nodes, offset, follow)


class SshJobLog(LogSource):
    """A job's log on its nodes, through one `tail` per node over ssh (as the cluster's
    owner): its output comes down the pipe, so the daemon hears it — no polling. The
    tails end when the job's runners have (`follow`), or at the end of the file."""

    def __init__(self, infra: SshInfra, handle: JobHandle, nodes: list[NodeInfo],
                 offset: int, follow: bool):
        by_rank = {n.rank: n for n in nodes}
        self.infra, self.follow = infra, follow
        self.parts = [(np, by_rank[np.rank]) for np in handle.nodes if np.rank in by_rank]
        self.start = offset + 1 if len(self.parts) == 1 else 1
        self.merge = LineMerge([rank_prefix(np.rank, len(self.parts)) for np, _ in self.parts])
        self.topic = Topic()            # moves on every chunk, and when a tail ends
        self.buf = bytearray()
        self.ended = 0
        self.tasks: list[asyncio.Task] | None = None

    def mark(self) -> int:
        return self.topic.version

    def finished(self) -> bool:
        return self.ended >= len(self.parts)

    async def wait_change(self, seen: Hashable) -> None:
        assert isinstance(seen, int)
        await self.topic.wait(seen)

    async def read(self, offset: int) -> bytes:
        if self.tasks is None:
            self.tasks = [asyncio.ensure_future(self._tail(i, np, node))
                          for i, (np, node) in enumerate(self.parts)]
        if not self.follow:     # what is there: until the tails reach the end of the files
            while not self.buf and not self.finished():
                await self.topic.wait(self.topic.version)
        done = self.finished()
        data, self.buf = bytes(self.buf), bytearray()
        return data or (self.merge.rest() if done else b"")

    async def _tail(self, i: int, np: NodeProc, node: NodeInfo) -> None:
        log = shlex.quote(np.log)
        if self.follow:
            # Not `tail --pid`: it counts a zombie runner (not yet reaped by init, which
            # can take a second or more) as alive. ALIVE does not.
            cmd = (f"pid={np.pid}; start={np.start}\n{ALIVE}"
                   f"tail -s 0.2 -c +{self.start} -f {log} 2>/dev/null & t=$!\n"
                   "while alive; do sleep 0.1; done; sleep 0.3; kill $t; true")
        else:
            cmd = f"tail -c +{self.start} {log} 2>/dev/null; true"
        proc = None
        try:
            proc = await self.infra._exec(node, cmd, stdout=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            while data := await proc.stdout.read(65536):
                self.buf += self.merge.feed(i, data)
                self.topic.notify()
        finally:
            if proc is not None:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
            self.ended += 1
            self.topic.notify()

    def close(self) -> None:
        for t in self.tasks or ():
            t.cancel()

def _proc(h: JobHandle, rank: int) -> NodeProc:
    return next(np for np in h.nodes if np.rank == rank)


def _kill_script(np: NodeProc, graceful: bool) -> str:
    """Mark the job cancelled and signal its session; escalate after a grace period."""
    jobdir = shlex.quote(np.jobdir)
    if np.pid <= 0:                      # never started: `kill -- -0` would hit the shell
        # and never will: its environment (secrets) goes now
        return (f"touch {jobdir}/cancelled; rm -f {jobdir}/env.sh\n" if graceful
                else f"rm -f {jobdir}/env.sh\n")
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


def where(node: NodeInfo) -> str:
    """login@ip:port of a node, for messages."""
    return node.host if "@" in node.host else f"{node.user}@{node.host}"


def unreachable(node: NodeInfo, stderr: bytes) -> SkydError:
    detail = _last_lines(stderr)
    hint = ""
    if "Permission denied" in detail:
        hint = ("check the pool's user and identity_file" if node.login_uid < 0 else
                f"{node.user} logs in with their own ssh keys (or the pool's identity_file, "
                f"in their home): authorize one for {node.user} on {node.ip}")
    elif "Host key verification failed" in detail or "IDENTIFICATION HAS CHANGED" in detail:
        hint = "the host's key changed: check the host, then fix known_hosts"
    return SkydError(ErrorCode.FAILED, f"cannot reach node {node.rank} ({where(node)}): "
                     f"{detail or 'ssh failed'}", hint)

