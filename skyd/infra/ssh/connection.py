"""Reaching a node: the ssh command lines (multiplexed: one handshake per host serves
every command), who runs them (a per-user pool's cluster owner, or this process) and
running a command on a node, blocking or async."""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar

from skyd import privilege
from skyd.protocol import ErrorCode, NodeInfo, SkydError

CONNECT_TIMEOUT = 10        # seconds for a TCP connect + handshake
COMMAND_TIMEOUT = 120       # a bookkeeping command (mkdir, start a job) never takes longer
OWNER_TTL = 60.0            # seconds an owner's identity (groups, home) is reused

T = TypeVar("T")


def control_dir(state_dir: str | Path, who: str) -> str:
    """`<state>/ssh/<who>`: the multiplexing sockets of a uid (its workers, and the daemon
    acting as that owner) or of the daemon itself (`daemon`, for shared logins)."""
    return os.path.join(state_dir, "ssh", who)


class Owner(NamedTuple):
    """The local account an ssh child runs as (a per-user pool's cluster owner)."""
    uid: int
    gid: int
    groups: list[int]
    env: dict[str, str]          # a clean login-like environment, never the daemon's
    control_dir: str             # <state>/ssh/<uid>, the owner's own

    def popen(self) -> dict[str, Any]:
        """subprocess.Popen arguments that start the child as this owner."""
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups,
                "env": self.env, "cwd": "/"}

    def exec_kwargs(self) -> dict[str, Any]:
        """The same for asyncio's subprocesses (uvloop has no user/group arguments): the
        child drops its groups, gid and uid before exec, with nothing but syscalls."""
        uid, gid, groups = self.uid, self.gid, self.groups

        def become() -> None:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        return {"preexec_fn": become, "env": self.env, "cwd": "/"}


class SshClient:
    """ssh as one process uses it. `control_dir` holds this process's own control
    sockets (it must exist): `<state>/ssh/<uid>` in a worker, `<state>/ssh/daemon` in the
    daemon; owners' control dirs are its siblings (made on first use, as root)."""

    def __init__(self, control_dir: str, known_hosts: str = "") -> None:
        self.control_dir = control_dir
        self.control_base = str(Path(control_dir).parent)
        self.known_hosts = known_hosts
        self._owners: dict[int, tuple[float, Owner]] = {}

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

    # ---- command lines -------------------------------------------------------------------

    def ssh_options(self, node: NodeInfo, control_dir: str | None = None) -> list[str]:
        opts = ["-p", str(node.port), "-o", "ControlMaster=auto",
                "-o", f"ControlPath={control_dir or self.control_dir}/%C",
                "-o", "ControlPersist=120", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3"]
        opts += self._auth_options(node)
        if node.proxy_jump:
            # Not `-J`: ssh gives a jump hop none of these options (key, known hosts, batch
            # mode), so it would log in with the daemon account's ~/.ssh. Each hop is an
            # ssh of its own, with the same options, as a ProxyCommand.
            opts += ["-o", "ProxyCommand=" + self._through_hops(
                node.proxy_jump.split(","), node.ip, node.port, node)]
        return opts

    def _auth_options(self, node: NodeInfo) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if node.identity_file:
            opts += ["-i", node.identity_file, "-o", "IdentitiesOnly=yes"]
        return opts

    def _through_hops(self, hops: list[str], host: str, port: int, node: NodeInfo) -> str:
        """The ProxyCommand that reaches host:port through the last of `hops` (itself
        reached through the ones before it). ssh expands %-tokens in a ProxyCommand once
        per level: a literal % is doubled."""
        login, _, addr = hops[-1].rpartition("@")
        hop_host, hop_port = split_host_port(addr)
        argv = ["ssh", *self._auth_options(node)]
        if len(hops) > 1:
            argv += ["-o", "ProxyCommand=" + self._through_hops(hops[:-1], hop_host,
                                                                hop_port or 22, node)]
        target = f"[{host}]" if ":" in host else host
        argv += ["-W", f"{target}:{port}", "-p", str(hop_port or 22), "--",
                 f"{login}@{hop_host}" if login else hop_host]
        return " ".join(shlex.quote(a) for a in argv).replace("%", "%%")

    def ssh(self, node: NodeInfo, command: str, owner: Owner | None = None) -> list[str]:
        """The ssh command line; `--` ends the options whatever the pool file says."""
        return ["ssh", *self.ssh_options(node, owner.control_dir if owner else None), "--",
                f"{node.user}@{node.ip}", command]

    # ---- blocking (worker side) ----------------------------------------------------------

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
                            f"{p.returncode}", last_lines(p.stderr))
        return p.stdout.decode(errors="replace")

    @staticmethod
    def each(nodes: list[NodeInfo], fn: Callable[[NodeInfo], T]) -> list[T]:
        """Do `fn` on every node at once; the first error wins."""
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            return list(pool.map(fn, nodes))

    # ---- async (daemon side) -------------------------------------------------------------

    async def exec(self, node: NodeInfo, command: str, *, stdin: int, stdout: int,
                   stderr: int | None = None) -> asyncio.subprocess.Process:
        """ssh to `node` running `command`, as the node's owner (per-user pool) or as this
        process (shared login), in a session of its own."""
        owner = await self.aowner(node)
        program, *args = self.ssh(node, command, owner)
        return await asyncio.create_subprocess_exec(
            program, *args, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
            **(owner.exec_kwargs() if owner else {}))

    async def arun(self, node: NodeInfo, script: str,
                   timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run `script` on a node: (exit status, stdout, stderr); 255 when ssh failed."""
        # The script travels as the command, not on stdin: an ssh that fails at once
        # (connection refused) would close its stdin under the write.
        proc = await self.exec(node, "bash -c " + shlex.quote(script),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out, err


def last_lines(data: bytes, n: int = 5) -> str:
    return "\n".join(data.decode(errors="replace").strip().splitlines()[-n:])


def where(node: NodeInfo) -> str:
    """login@ip:port of a node, for messages."""
    return node.host if "@" in node.host else f"{node.user}@{node.host}"


def unreachable(node: NodeInfo, stderr: bytes) -> SkydError:
    # Not what ssh says of its own multiplexing ("mux_client_...: read from master
    # failed"): the master gave up on the host, which the next line says.
    detail = "\n".join(line for line in last_lines(stderr).splitlines()
                       if not line.startswith("mux_client_"))
    hint = ""
    if "timed out" in detail or "Timeout" in detail or "not responding" in detail:
        hint = ("the host does not answer (it hangs, or the network to it is down): "
                "try again once it does")
    elif "Permission denied" in detail:
        hint = ("check the pool's user and identity_file" if node.login_uid < 0 else
                f"{node.user} logs in with their own ssh keys (or the pool's identity_file, "
                f"in their home): authorize one for {node.user} on {node.ip}")
    elif "Host key verification failed" in detail or "IDENTIFICATION HAS CHANGED" in detail:
        hint = "the host's key changed: check the host, then fix known_hosts"
    return SkydError(ErrorCode.FAILED, f"cannot reach node {node.rank} ({where(node)}): "
                     f"{detail or 'ssh failed'}", hint)


def split_host_port(addr: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (the proxy_jump forms nodepools accepts)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, _, port = addr.partition(":")
    return host, int(port) if port else None
