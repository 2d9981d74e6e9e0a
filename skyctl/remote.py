"""ssh:// — the daemon on a VM, reached as DOCKER_HOST=ssh:// reaches Docker: skyctl runs
the system `ssh` with `skyctl dial-stdio` on the VM, which bridges the SSH session to the
daemon's Unix socket there. The SSH login is the identity (the daemon sees the remote
user's uid on its socket); no port is exposed. How ssh itself is run (one shared master
connection, batch mode, a process group of its own): skyctl.sshcmd.

Settings (env, or the client config's key): SKYD_REMOTE_SKYCTL / remote_skyctl (skyctl on
the VM, default `skyctl`); the ssh command line's: skyctl.sshcmd.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess

from skyctl.endpoint import SshAddress, config_path, setting
from skyctl.errors import NoDaemon, Restarting, SocketDenied, Unreachable
from skyctl.sshcmd import spawn, ssh_argv

DIAL_RESTARTING = 75        # dial-stdio's exit status when the socket refuses (EX_TEMPFAIL)
_SSH_FAILED = 255           # ssh's own failure (auth, host key, network)
_NOT_FOUND = 127            # the remote shell found no such command


def remote_skyctl() -> str:
    return setting("remote_skyctl", "SKYD_REMOTE_SKYCTL") or "skyctl"


def dial_command(addr: SshAddress) -> str:
    cmd = f"{remote_skyctl()} dial-stdio"
    if addr.socket:
        cmd += " --host " + shlex.quote("unix://" + addr.socket)
    return cmd


class SshLink:
    """One `ssh VM skyctl dial-stdio`: `sock` is our end of its stdin and stdout."""

    def __init__(self, addr: SshAddress, timeout: float | None = None):
        self.addr = addr
        self.command = dial_command(addr)
        ours, theirs = socket.socketpair()
        try:
            self.proc = spawn(ssh_argv(addr, self.command), stdin=theirs, stdout=theirs,
                              stderr=subprocess.PIPE)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(timeout)
        self.sock = ours

    def failure(self) -> Unreachable:
        """Why the session ended before the daemon's welcome, from ssh's exit status and
        what was said on its stderr (ssh's, or dial-stdio's on the VM)."""
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        said = self._stderr()
        host = self.addr.host
        if rc == DIAL_RESTARTING:
            return Restarting(said or f"skyd on {host} is not answering")
        if rc == 4:
            return NoDaemon(said or f"no skyd on {host}")
        if rc == 5:
            return SocketDenied(said or f"permission denied on skyd's socket on {host}")
        if rc == _NOT_FOUND:
            return Unreachable(f"`{self.command}` is not a command on {host} ({said}): install "
                               f"skyd there, or set remote_skyctl in {config_path()} (or "
                               "SKYD_REMOTE_SKYCTL) to skyctl's path on the VM")
        if rc == _SSH_FAILED:
            return Unreachable(f"ssh to {self.addr} failed: {said or 'no reason given'}")
        return Unreachable(f"`{self.command}` on {host} ended ({rc}) before skyd answered: "
                           f"{said or 'nothing said'}")

    def _stderr(self) -> str:
        """What is in the stderr pipe now, without waiting (a master connection that went
        to the background may hold the pipe open)."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        os.set_blocking(fd, False)
        chunks = []
        try:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
        return " ".join(line.removeprefix("error: ").strip() for line in lines[-3:])

    def ship_files(self, op):
        """The op, with its task's local workdir and file_mounts uploaded to the VM and
        named by their paths there."""
        task = getattr(op, "task", None)
        if task is None or not (task.workdir or task.file_mounts):
            return op
        from skyctl.upload import ship
        return ship(self.addr, op)

    def close(self) -> None:
        self.sock.close()               # EOF on ssh's stdin: the remote side hangs up
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
