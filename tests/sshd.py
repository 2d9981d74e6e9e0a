"""Real sshd servers on loopback addresses, for testing the `ssh` infra.

`SshHosts` starts one `/usr/sbin/sshd -D -e` per host, each listening on its own loopback
address (127.0.0.2, 127.0.0.3, ... — Linux routes all of 127.0.0.0/8 to `lo`, so no
configuration is needed) on the same port, with its own host key and one shared client key
pair. All hosts share this machine's filesystem and process table: use distinct remote
paths per host.

    with SshHosts(Path(tempfile.mkdtemp(prefix="skyd-ssh-", dir="/tmp"))) as hosts:
        subprocess.run(["ssh", *hosts[0].ssh_args(), hosts[0].target, "true"], check=True)

or, in a test, the `ssh_hosts` fixture (3 hosts, skipped when sshd is not installed unless
the CI environment variable is set).

`SshHost.kill()` simulates node loss: it SIGKILLs the listening sshd, every process it
started (session sshd's and their children) and every process whose environment says it was
started over an ssh session to that host (SSH_CONNECTION names its ip and port), so that
detached remote processes die too. `restart()` starts sshd again on the same ip, port and
host key.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
START_TIMEOUT = 10.0


class SshdUnavailable(RuntimeError):
    """sshd (or ssh/ssh-keygen) is not installed or cannot run here."""


def _check_tools() -> None:
    missing = []
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    for tool in ("ssh", SSH_KEYGEN):
        if shutil.which(tool) is None:
            missing.append(tool)
    if missing:
        raise SshdUnavailable(
            f"cannot start test sshd servers: {', '.join(missing)} not found "
            "(apt-get install openssh-server openssh-client rsync)")


def _account_locked(user: str) -> bool:
    """True when `user`'s password field is locked ('!...'): with UsePAM no, sshd then refuses
    even public-key logins ("account is locked"); with UsePAM yes it does not."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == user:
                return rest.startswith("!")
    except OSError:
        pass
    return False


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _session_processes(ip: str, port: int) -> list[int]:
    """Processes started over an ssh session to ip:port (SSH_CONNECTION="cip cport ip port")."""
    suffix = f" {ip} {port}".encode()
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(b"SSH_CONNECTION=") and var.endswith(suffix):
                found.append(int(entry.name))
                break
    return found


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@dataclass
class SshHost:
    ip: str
    port: int
    user: str
    identity_file: str
    proc: subprocess.Popen | None
    dir: Path = field(default=Path("/nonexistent"))  # this host's sshd_config, host key, log
    known_hosts: str = "/dev/null"                     # SshHosts.known_hosts (all hosts)
    host_key_pub: str = ""                             # "ssh-ed25519 AAAA..."

    @property
    def target(self) -> str:
        return f"{self.user}@{self.ip}"

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def ssh_args(self, strict: bool = False, connect_timeout: float | None = None) -> list[str]:
        """ssh options to reach this host (no destination, no command). Hermetic: -F
        /dev/null ignores ~/.ssh/config and /etc/ssh/ssh_config. strict=True checks the host
        key against `known_hosts`; otherwise host keys are neither checked nor recorded.
        Extra `-o` options appended after these win only for options not set here (ssh takes
        the first value): ConnectTimeout is therefore left out unless given."""
        args = ["-F", "/dev/null", "-p", str(self.port), "-i", self.identity_file,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "PasswordAuthentication=no", "-o", "LogLevel=ERROR"]
        if strict:
            args += ["-o", "StrictHostKeyChecking=yes",
                     "-o", f"UserKnownHostsFile={self.known_hosts}"]
        else:
            args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if connect_timeout is not None:
            args += ["-o", f"ConnectTimeout={connect_timeout:g}"]
        return args

    def ssh_command(self, **kw) -> str:
        """The ssh command line as one string, for `rsync -e`."""
        return shlex.join(["ssh", *self.ssh_args(**kw)])

    def run(self, command: str, timeout: float = 30, check: bool = False,
            **kw) -> subprocess.CompletedProcess:
        """Run `command` on this host over ssh (text mode, output captured)."""
        return subprocess.run(["ssh", *self.ssh_args(connect_timeout=5), self.target, command],
                              capture_output=True, text=True, timeout=timeout, check=check, **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start sshd (not waiting for it: see wait_ready)."""
        log = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until `ssh ... true` succeeds; RuntimeError (with sshd's log) if it does not."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not self.alive():
                raise RuntimeError(f"sshd for {self.ip}:{self.port} exited "
                                   f"(rc={self.proc.returncode if self.proc else None}):\n"
                                   f"{self._log_text()}")
            try:
                p = subprocess.run(["ssh", *self.ssh_args(connect_timeout=1), self.target,
                                    "true"], capture_output=True, text=True, timeout=5,
                                   stdin=subprocess.DEVNULL)
                if p.returncode == 0:
                    return
                last = p.stderr
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd for {self.ip}:{self.port} did not accept "
                                   f"`ssh true` within {timeout}s: {last.strip()}\n"
                                   f"sshd log:\n{self._log_text()}")
            time.sleep(0.05)

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self, sessions: bool = True) -> None:
        """SIGKILL sshd (node loss). With sessions=True (default) also every session sshd,
        everything they started, and every process started over ssh to this host, detached
        or not. The object stays usable: restart() brings sshd back."""
        if self.proc is None:
            return
        pids = _descendants(self.proc.pid) if sessions else []
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        if sessions:
            _kill_all(pids)
            _kill_all(_session_processes(self.ip, self.port))
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if sessions:
            # session sshd's whose parent died are reparented, not gone; sweep once more
            _kill_all([p for p in pids if _pid_alive(p)])

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Start sshd again on the same ip/port/host key and wait until it answers."""
        if self.alive():
            self.kill()
        self.start()
        self.wait_ready(timeout)


class SshHosts:
    """Context manager: `count` sshd servers on 127.0.0.{first_ip}, ... all on `port`, or, if
    that is taken on some ip (a leftover or concurrent run), the next port up free on all.
    Files live under `base_dir`, which must be short (keep it in /tmp). __enter__ returns
    the list of SshHost; the object also has .hosts, .identity_file, .known_hosts and
    pool_yaml()."""

    def __init__(self, base_dir: Path, count: int = 3, first_ip: int = 2, port: int = 22022,
                 logins: tuple[str, ...] = ()):
        if not 1 <= count or first_ip < 1 or first_ip + count - 1 > 254:
            raise ValueError(f"bad host range 127.0.0.{first_ip} x {count}")
        self.base_dir = Path(base_dir)
        self.count = count
        self.first_ip = first_ip
        self.port = port
        # Other accounts of this machine that log in with their own keys (their
        # ~/.ssh/authorized_keys), as people do on a per-user node pool.
        self.logins = tuple(logins)
        self.user = getpass.getuser()
        self.identity_file = self.base_dir / "id_ed25519"
        self.known_hosts = self.base_dir / "known_hosts"
        self.use_pam = False
        self._made_user = False
        self.hosts: list[SshHost] = []

    # list-like access
    def __iter__(self) -> Iterator[SshHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, i: int) -> SshHost:
        return self.hosts[i]

    def _keygen(self, path: Path, comment: str) -> str:
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
        return " ".join(Path(f"{path}.pub").read_text().split()[:2])

    def _pick_port(self, ips: list[str], first: int) -> int:
        for port in range(first, first + 200):
            if all(_port_free(ip, port) for ip in ips):
                return port
        raise RuntimeError(f"no free port in {first}..{first + 199} on {ips}")

    def _sshd_config(self, ip: str, port: int, d: Path, use_pam: bool) -> str:
        return "\n".join([
            f"ListenAddress {ip}",
            f"Port {port}",
            f"HostKey {d / 'ssh_host_ed25519_key'}",
            f"PidFile {d / 'sshd.pid'}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"UsePAM {'yes' if use_pam else 'no'}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "AcceptEnv LANG",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "MaxStartups 100",
            "MaxSessions 100",
            # The test client key logs in as the test login only; other logins (`logins`)
            # with the keys in their own ~/.ssh/authorized_keys.
            f"Match User {self.user}",
            f"    AuthorizedKeysFile {self.base_dir / 'authorized_keys'}",
            "",
        ])

    def __enter__(self) -> list[SshHost]:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.hosts

    def _start(self) -> None:
        _check_tools()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
            os.chmod("/run/sshd", 0o755)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._make_login()
        client_pub = self._keygen(self.identity_file, "skyd-test-client")
        (self.base_dir / "authorized_keys").write_text(client_pub + "\n")
        ips = [f"127.0.0.{self.first_ip + i}" for i in range(self.count)]
        # A locked account ('!') logs in with a key only through PAM.
        self.use_pam = any(_account_locked(u) for u in (self.user, *self.logins))
        for ip in ips:
            d = self.base_dir / ip
            d.mkdir(exist_ok=True)
            host_pub = self._keygen(d / "ssh_host_ed25519_key", f"skyd-test-host-{ip}")
            self.hosts.append(SshHost(ip=ip, port=0, user=self.user,
                                      identity_file=str(self.identity_file), proc=None, dir=d,
                                      known_hosts=str(self.known_hosts),
                                      host_key_pub=host_pub))
        first = self.port
        for attempt in range(5):
            port = self._pick_port(ips, first)
            self._configure(port)
            if attempt == 0:
                t = subprocess.run([SSHD, "-t", "-f", str(self.hosts[0].config)],
                                   capture_output=True, text=True)
                if t.returncode != 0:
                    raise SshdUnavailable(f"sshd -t rejects the test config: {t.stderr.strip()}")
            for h in self.hosts:
                h.start()
            try:
                with ThreadPoolExecutor(len(self.hosts)) as pool:  # each ssh costs a login
                    for f in [pool.submit(h.wait_ready) for h in self.hosts]:
                        f.result()
                return
            except RuntimeError:
                # another process took the port between the probe and sshd's bind: next port
                if not any("Address already in use" in h._log_text() for h in self.hosts):
                    raise
                for h in self.hosts:
                    h.kill()
                    h.log.unlink(missing_ok=True)
                first = port + 1
        raise RuntimeError(f"could not bind sshd on {ips} from port {self.port} up")

    def _configure(self, port: int) -> None:
        """Write every host's sshd_config and the known_hosts file for `port`."""
        known = []
        for h in self.hosts:
            h.port = port
            h.config.write_text(self._sshd_config(h.ip, port, h.dir, self.use_pam))
            entry = f"[{h.ip}]:{port}" if port != 22 else h.ip
            known.append(f"{entry} {h.host_key_pub}")
        self.known_hosts.write_text("\n".join(known) + "\n")

    def __exit__(self, *exc) -> None:
        for h in self.hosts:
            try:
                h.kill()
            except Exception:
                pass
        if self._made_user:
            subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)
            for _ in range(50):
                if subprocess.run(["userdel", self.user], capture_output=True).returncode in (0, 6):
                    break
                time.sleep(0.1)       # its last processes are still exiting
            self._made_user = False

    def _make_login(self) -> None:
        """A throw-away login with an empty home of its own: tests do not depend on (or
        disturb) root's shell start-up files (this machine's ~/.bashrc runs pyenv, whose
        rehash lock is left behind when a node is killed mid-login), and each test's
        remote files start empty."""
        name = "skyd" + os.urandom(3).hex()
        home = self.base_dir / "home"
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/bash", "-U", "-p", "*",
                        name], check=True, capture_output=True)
        home.mkdir(mode=0o700)
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base_dir, 0o755)
        self.user, self._made_user = name, True
    def pool_yaml(self, name: str, hosts: list[SshHost] | None = None,
                  shared_login: bool = True) -> str:
        """A SkyPilot-style ssh node pool entry (ssh_node_pools.yaml) for these hosts. With
        shared_login (the default here) everyone reaches them as the test login with the test
        key; without, each person logs in as themselves with their own keys."""
        hosts = self.hosts if hosts is None else hosts
        lines = [f"{name}:"]
        if shared_login:
            lines += ["  shared_login: true", f"  user: {self.user}",
                      f"  identity_file: {self.identity_file}"]
        lines += ["  hosts:"]
        for h in hosts:
            lines += [f"    - ip: {h.ip}", f"      port: {h.port}"]
        return "\n".join(lines) + "\n"


def start_or_skip(hosts: SshHosts) -> None:
    """Start the hosts; skip the test when sshd is unavailable, unless $CI is set."""
    try:
        hosts.__enter__()
    except SshdUnavailable as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


@pytest.fixture
def ssh_hosts(tmp_path_factory) -> Iterator[SshHosts]:
    """3 real sshd hosts on 127.0.0.2-4, stopped (with everything started over them) and their
    files removed after the test. Skips when sshd is unavailable, unless $CI is set."""
    base = Path(tempfile.mkdtemp(prefix="skyd-ssh-", dir="/tmp"))
    hosts = SshHosts(base, count=3)
    try:
        start_or_skip(hosts)
        try:
            yield hosts
        finally:
            hosts.__exit__(None, None, None)
    finally:
        shutil.rmtree(base, ignore_errors=True)
