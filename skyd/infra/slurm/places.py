"""Where Slurm's commands run and the cluster's files live: `Here` (the daemon's host is a
login node) or `LoginNode` (a login node reached over ssh, as the cluster's owner: their
login name and ssh setup, through skyd.infra.ssh's connection handling). Both offer the
same few operations — run a command, stream one, and the handful of file operations a
cluster needs (its directories, scripts, the allocation's marker, the workdir) — so the
rest of the infra does not know which it has.

Over ssh, a Slurm command or file operation rides the owner's multiplexed connection (one
handshake per worker or daemon); a job's step does not (see `step_launcher`)."""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Protocol

from skyd.infra.slurm.settings import SlurmSettings
from skyd.infra.ssh.connection import SshClient, last_lines
from skyd.infra.ssh.scripts import tethered
from skyd.protocol import ErrorCode, NodeInfo, SkydError

RSYNC_TIMEOUT = 3600
FILE_TIMEOUT = 60           # a file operation on the login node never takes longer
NO_COMMAND = 127            # the shell's status for a command it cannot find
SSH_FAILED = 255            # ssh's own failure (a Slurm command never exits with it)


class Place(Protocol):
    """Where Slurm's commands run (and the cluster's files are)."""
    remote: bool

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Run a command (text output captured); FileNotFoundError when it is not there,
        subprocess.TimeoutExpired past `timeout`."""
        ...

    async def arun(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        ...

    def stream(self, argv: list[str], cwd: str, env_file: str) -> subprocess.Popen:
        """Start a command in `cwd` with the variables of `env_file` (written by
        `write`; removed once read), stdout and stderr together on a pipe. The caller
        closes its stdin, if it is a pipe, once it has waited for it."""
        ...

    def home(self) -> str: ...
    def make_dirs(self, *paths: str) -> None: ...
    def write(self, path: str, text: str, mode: int = 0o600) -> None: ...

    def write_durably(self, path: str, text: str) -> bool:
        """Write a file (0600) that outlives a crash of the host it is on (it and the
        directories above it, up to the home, synced); whether one was there before."""
        ...

    def remove(self, *paths: str) -> None: ...
    def copy_in(self, src: Path, dst: str) -> None: ...

    def wait_file(self, path: str, window: float) -> str | None:
        """The file's text once it exists, looking for up to `window` seconds; None if it
        does not appear in that time."""
        ...


def env_script(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


class Here:
    """This host: commands with the settings' environment, files with os and shutil."""
    remote = False

    def __init__(self, settings: SlurmSettings, env: dict[str, str], home: str = "/"):
        self.env = settings.env(env)
        self._home = home

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    async def arun(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        return await _communicate(proc, timeout)

    def stream(self, argv: list[str], cwd: str, env_file: str) -> subprocess.Popen:
        script = (f"set -a; . {shlex.quote(env_file)} || exit 1; set +a; "
                  f"rm -f {shlex.quote(env_file)}; exec \"$@\"")
        return subprocess.Popen(["bash", "-c", script, "skyd-step", *argv], cwd=cwd,
                                env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def home(self) -> str:
        return self._home

    def make_dirs(self, *paths: str) -> None:
        old = os.umask(0o077)
        try:
            for path in paths:
                Path(path).mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)

    def write(self, path: str, text: str, mode: int = 0o600) -> None:
        p = Path(path)
        p.unlink(missing_ok=True)
        p.touch(mode)
        p.write_text(text)

    def write_durably(self, path: str, text: str) -> bool:
        existed = os.path.lexists(path)
        self.write(path, text)
        for name in (path, *_dirs_up_to(path, self._home)):
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno != errno.EINVAL:     # a file system that cannot sync it
                    raise
            finally:
                os.close(fd)
        return existed

    def remove(self, *paths: str) -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    def copy_in(self, src: Path, dst: str) -> None:
        target = Path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True, symlinks=True)
        else:
            shutil.copy2(src, target)

    def wait_file(self, path: str, window: float) -> str | None:
        deadline = time.monotonic() + window
        while True:
            try:
                return Path(path).read_text()
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.01, window))


class LoginNode:
    """A login node over ssh, reached as `node.user` with the ssh setup of `node.login_uid`
    (this process's own when it already is them: a worker). `client` multiplexes."""
    remote = True

    def __init__(self, settings: SlurmSettings, client: SshClient, node: NodeInfo):
        self.settings, self.client, self.node = settings, client, node
        self._home = ""
        # What every command needs to find the cluster: the login node's own environment
        # (a login shell's), with the settings' Slurm configuration and commands.
        self.prologue = env_script({"SLURM_CONF": settings.slurm_conf}
                                   if settings.slurm_conf else {})
        if settings.bin_dir:
            self.prologue += f"export PATH={shlex.quote(settings.bin_dir)}:\"$PATH\"\n"

    @property
    def where(self) -> str:
        host = f"[{self.node.ip}]" if ":" in self.node.ip else self.node.ip
        return f"{self.node.user}@{host}:{self.node.port}"

    def unreachable(self, stderr: str) -> SkydError:
        detail = last_lines(stderr.encode())
        hint = "is the login node up, and slurm.login right in the server's config?"
        if "Permission denied" in detail:
            hint = (f"{self.node.user} logs in to the login node with their own ssh keys "
                    f"(or slurm.identity_file, in their home): authorize one for "
                    f"{self.node.user} on {self.node.ip}")
        elif "Host key verification failed" in detail or "IDENTIFICATION HAS CHANGED" in detail:
            hint = "the login node's key changed: check the host, then fix known_hosts"
        return SkydError(ErrorCode.FAILED, f"cannot reach Slurm's login node {self.where}: "
                         f"{detail or 'ssh failed'}", hint)

    def _command(self, argv: list[str]) -> str:
        return self.prologue + "exec " + shlex.join(argv)

    def _checked(self, rc: int, stderr: str) -> None:
        if rc == SSH_FAILED:
            raise self.unreachable(stderr)
        if rc == NO_COMMAND and "not found" in stderr:
            raise FileNotFoundError(stderr.strip())

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        p = self._ssh(self._command(argv), timeout)
        self._checked(p.returncode, p.stderr)
        return p

    def _ssh(self, command: str, timeout: float, input: str | None = None
             ) -> subprocess.CompletedProcess:
        owner = self.client.owner(self.node)
        return subprocess.run(self.client.ssh(self.node, command, owner), input=input,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              **(owner.popen() if owner else {}))

    async def arun(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        proc = await self.client.exec(self.node, self._command(argv),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        rc, out, err = await _communicate(proc, timeout)
        self._checked(rc, err)
        return rc, out, err

    def stream(self, argv: list[str], cwd: str, env_file: str) -> subprocess.Popen:
        owner = self.client.owner(self.node)
        # Tethered to the session: when the worker or its ssh goes (a cancel, a time
        # limit), srun is stopped on the login node, and with it the step. stdin stays open
        # until the caller has waited for it.
        command = (self.prologue + f"cd {shlex.quote(cwd)} || exit 1\n"
                   f"set -a; . {shlex.quote(env_file)} || exit 1; set +a\n"
                   f"rm -f {shlex.quote(env_file)}\n" + tethered(shlex.join(argv)))
        return subprocess.Popen(self.client.ssh(self.node, command, owner),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, **(owner.popen() if owner else {}))

    def sh(self, script: str, input: str | None = None, timeout: float = FILE_TIMEOUT) -> str:
        """Run a bookkeeping script on the login node: its stdout, or a clear error."""
        try:
            p = self._ssh(script, timeout, input)
        except subprocess.TimeoutExpired:
            raise SkydError(ErrorCode.FAILED, f"Slurm's login node {self.where} did not "
                            f"answer within {timeout:g}s") from None
        if p.returncode == SSH_FAILED:
            raise self.unreachable(p.stderr)
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"on Slurm's login node {self.where}: a command "
                            f"failed with exit status {p.returncode}",
                            last_lines(p.stderr.encode()))
        return p.stdout

    def home(self) -> str:
        if not self._home:
            self._home = self.sh('printf "%s" "$HOME"').strip()
            if not self._home.startswith("/"):
                raise SkydError(ErrorCode.FAILED, f"{self.node.user} has no home directory "
                                f"on Slurm's login node {self.where}")
        return self._home

    def make_dirs(self, *paths: str) -> None:
        self.sh("umask 077 && mkdir -p -- " + " ".join(map(shlex.quote, paths)))

    def write(self, path: str, text: str, mode: int = 0o600) -> None:
        q = shlex.quote(path)
        self.sh(f"rm -f -- {q} && (umask 077 && cat > {q}) && chmod {mode:o} -- {q}",
                input=text)

    def write_durably(self, path: str, text: str) -> bool:
        q = shlex.quote(path)
        synced = " ".join(map(shlex.quote, [path, *_dirs_up_to(path, self.home())]))
        # One ssh; a sync the login node's file system refuses is passed over.
        out = self.sh(f"[ -e {q} ] && echo existed; rm -f -- {q} && (umask 077 && cat > {q}) "
                      f"&& {{ sync -- {synced} 2>/dev/null || true; }}", input=text)
        return out.strip() == "existed"

    def remove(self, *paths: str) -> None:
        self.sh("rm -rf -- " + " ".join(map(shlex.quote, paths)))

    def copy_in(self, src: Path, dst: str) -> None:
        self.make_dirs(str(Path(dst).parent))
        owner = self.client.owner(self.node)
        opts = self.client.ssh_options(self.node, owner.control_dir if owner else None)
        host = f"[{self.node.ip}]" if ":" in self.node.ip else self.node.ip
        source = str(src) + ("/" if src.is_dir() else "")
        try:
            p = subprocess.run(["rsync", "-a", "-e", shlex.join(["ssh", *opts]), "--", source,
                                f"{self.node.user}@{host}:{dst}"],
                               capture_output=True, timeout=RSYNC_TIMEOUT,
                               stdin=subprocess.DEVNULL, **(owner.popen() if owner else {}))
        except FileNotFoundError:
            raise SkydError(ErrorCode.FAILED, "rsync is not installed on the server",
                            "install it: apt-get install rsync") from None
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"copying {src} to Slurm's login node "
                            f"{self.where} failed (rsync exit status {p.returncode})",
                            last_lines(p.stderr))

    def wait_file(self, path: str, window: float) -> str | None:
        # One ssh for the whole window: the login node looks every 10 ms.
        tries = max(1, int(window / 0.02))
        script = (f"f={shlex.quote(path)}; i=0; while [ $i -lt {tries} ]; do "
                  '[ -e "$f" ] && exec cat -- "$f"; sleep 0.01; i=$((i+1)); done; exit 3')
        p = self._ssh(script, window + FILE_TIMEOUT)
        if p.returncode == SSH_FAILED:
            raise self.unreachable(p.stderr)
        return p.stdout if p.returncode == 0 else None

    def step_launcher(self, hold: str, command: str) -> str:
        """The local script (a job's run.sh, which the daemon's runner starts as the owner)
        that runs `command` on the login node: an ssh of its own (not multiplexed, so that
        neither the end of another job nor the daemon closing its masters ends it), its
        stdin a FIFO it holds open itself — the login node's side sees that stdin end (and
        ends the step: see scripts.login_step) only when this ssh is gone."""
        opts = self.client.ssh_options(self.node)
        argv = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", *opts, "--",
                f"{self.node.user}@{self.node.ip}", command]
        q = shlex.quote(hold)
        return (f"rm -f {q} && mkfifo -m 600 {q} && exec 0<>{q} && rm -f {q} || exit 1\n"
                f"exec {shlex.join(argv)}\n")


def _dirs_up_to(path: str, home: str) -> list[str]:
    """The directories above `path`, nearest first, up to `home` (to the root when it is
    not under `home`)."""
    found = []
    for parent in Path(path).parents:
        found.append(str(parent))
        if str(parent) in (home, "/"):
            break
    return found


async def _communicate(proc: asyncio.subprocess.Process, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def login_node(settings: SlurmSettings, client: SshClient, uid: int, user: str) -> NodeInfo:
    """The login node as `user` (local uid `uid`; -1: this process, with the settings'
    watch key) reaches it."""
    host, port = settings.login_host
    identity = settings.identity_file if uid >= 0 else settings.watch_identity_file
    return NodeInfo(rank=0, ip=host, host=f"{host}:{port}", user=user, port=port,
                    identity_file=identity, login_uid=uid)
