"""ssh:// — the daemon on a VM, reached as DOCKER_HOST=ssh:// reaches Docker: skyctl runs
the system `ssh` with `skyctl dial-stdio` on the VM, which bridges the SSH session to the
daemon's Unix socket there. The SSH login is the identity (the daemon sees the remote
user's uid on its socket); no port is exposed.

One SSH connection serves every call: ControlMaster=auto with a per-user control path
(a 0700 directory) and ControlPersist, so a second command pays no handshake. ssh runs in
a process group of its own, as Docker's does: a Ctrl-C in the terminal reaches skyctl
alone, which detaches cleanly and closes the session itself. It runs in batch mode for
the same reason (it has no terminal to ask on): keys and ssh-agent, and the VM's host
key accepted once by hand (`ssh user@vm true`).

Settings (env, or the client config's key): SKYD_SSH_COMMAND / ssh_command (the ssh
command line, default `ssh`; options in it win over skyctl's), SKYD_REMOTE_SKYCTL /
remote_skyctl (skyctl on the VM, default `skyctl`).
"""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess

from skyctl.connection import NoDaemon, Restarting, SocketDenied, Unreachable
from skyctl.endpoint import SshAddress, config_path, setting

CONTROL_PERSIST = "10m"     # an idle master connection stays this long
DIAL_RESTARTING = 75        # dial-stdio's exit status when the socket refuses (EX_TEMPFAIL)
_SSH_FAILED = 255           # ssh's own failure (auth, host key, network)
_NOT_FOUND = 127            # the remote shell found no such command


def control_dir() -> str:
    """A directory only this user can enter, for ssh's control sockets: under
    $XDG_RUNTIME_DIR when it is ours, else ~/.cache/skyd/ssh."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _mine(runtime):
        d = os.path.join(runtime, "skyctl")
    else:
        d = os.path.join(os.path.expanduser("~"), ".cache", "skyd", "ssh")
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise Unreachable(f"{d} is not a directory of yours: skyctl keeps its ssh control "
                          "sockets there; remove it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)
    return d


def _mine(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and os.access(path, os.W_OK)


def ssh_argv(addr: SshAddress, command: str) -> list[str]:
    """The ssh command line that runs `command` (one shell string) on the VM, through the
    shared master connection."""
    base = shlex.split(setting("ssh_command", "SKYD_SSH_COMMAND") or "ssh")
    argv = [*base, "-T", "-e", "none", "-o", "BatchMode=yes", "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control_dir()}/%C", "-o", f"ControlPersist={CONTROL_PERSIST}"]
    if addr.port:
        argv += ["-p", str(addr.port)]
    if addr.user:
        argv += ["-l", addr.user]
    return [*argv, "--", addr.host, command]


def remote_skyctl() -> str:
    return setting("remote_skyctl", "SKYD_REMOTE_SKYCTL") or "skyctl"


def dial_command(addr: SshAddress) -> str:
    cmd = f"{remote_skyctl()} dial-stdio"
    if addr.socket:
        cmd += " --host " + shlex.quote("unix://" + addr.socket)
    return cmd


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    """ssh in a process group of its own (a terminal's Ctrl-C is skyctl's to handle)."""
    try:
        return subprocess.Popen(argv, process_group=0, **kw)
    except FileNotFoundError:
        raise Unreachable(f"{argv[0]} not found: ssh:// needs the OpenSSH client "
                          "(or set SKYD_SSH_COMMAND)") from None


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


def run(addr: SshAddress, command: str, stdin=subprocess.DEVNULL,
        timeout: float | None = 60) -> subprocess.CompletedProcess:
    """Run a shell command on the VM through the shared connection; its output captured."""
    proc = spawn(ssh_argv(addr, command), stdin=stdin, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise Unreachable(f"ssh to {addr} did not answer within {timeout:g} s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
