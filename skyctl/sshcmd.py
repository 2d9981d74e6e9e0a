"""How skyctl runs the system `ssh` for an ssh:// daemon: the command line, the process,
and one command on the VM with its output captured (skyctl.remote's session to the daemon
and skyctl.upload's transfers both go through here).

One SSH connection serves every call: ControlMaster=auto with a per-user control path
(a 0700 directory) and ControlPersist, so a second command pays no handshake. ssh runs in
a process group of its own, as Docker's does: a Ctrl-C in the terminal reaches skyctl
alone, which detaches cleanly and closes the session itself. It runs in batch mode for
the same reason (it has no terminal to ask on): keys and ssh-agent, and the VM's host
key accepted once by hand (`ssh user@vm true`).

Settings (env, or the client config's key): SKYD_SSH_COMMAND / ssh_command (the ssh
command line, default `ssh`; options in it win over skyctl's).
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

from skyctl.endpoint import SshAddress, setting
from skyctl.errors import Unreachable

CONTROL_PERSIST = "10m"     # an idle master connection stays this long


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


def spawn(argv: list[str], **kw) -> subprocess.Popen:
    """ssh in a process group of its own (a terminal's Ctrl-C is skyctl's to handle)."""
    try:
        return subprocess.Popen(argv, process_group=0, **kw)
    except FileNotFoundError:
        raise Unreachable(f"{argv[0]} not found: ssh:// needs the OpenSSH client "
                          "(or set SKYD_SSH_COMMAND)") from None


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
