"""A real `skyd serve` process (DaemonProcess, also the base of tests/conftest.py's
Daemon), the benchmarks' variant of it, and the clean-up of everything they started.

For benchmarks: a temporary state dir under /tmp (short path: a Unix socket path
must fit in 107 bytes), the daemon in its own session, and at the end every process
that belongs to it killed: its session (forkserver, resource tracker, workers, setup
commands), processes whose command line names the temp dir (job runners), and processes
whose working directory is inside it (setup commands run in the node's workdir).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol

ROOT = Path(__file__).resolve().parent.parent


def daemon_env(pycache: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    return with_pycache(env, pycache)


def with_pycache(env: dict[str, str], pycache: str | None) -> dict[str, str]:
    """Let Python cache bytecode under `pycache` (never inside the repository)."""
    if pycache:
        env = dict(env)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


class DaemonProcess:
    """A real `skyd serve` process in its own session: spawn, wait until it answers a
    handshake, its log, stop. Shared by the benchmarks (BenchDaemon) and the tests
    (tests/conftest.py's Daemon); `args` are extra `skyd serve` flags."""

    client_name = "skyd"                    # the source named in the handshake
    connect_timeout: float | None = None    # socket timeout of connect() by default
    cwd: str | None = None                  # the daemon's working directory (None: ours)

    def __init__(self, state_dir: Path, args: list[str] | None = None,
                 log_path: Path | None = None):
        self.state_dir = Path(state_dir)
        self.socket = self.state_dir / "skyd.sock"
        if len(str(self.socket).encode()) >= 107:
            raise ValueError(f"socket path too long: {self.socket}")
        self.args = list(args or [])
        self.log_path = Path(log_path) if log_path else (
            self.state_dir.parent / f"{self.state_dir.name}.daemon.log")
        self.proc: subprocess.Popen | None = None
        self.sessions: set[int] = set()   # session ids of every daemon started (= its pid)
        self.spawned_at: float | None = None   # perf_counter() just before the last spawn
        self._log = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return daemon_env()

    def command(self, extra: list[str] | None = None) -> list[str]:
        return [sys.executable, "-m", "skyd", "serve", "--state-dir", str(self.state_dir),
                "--socket", str(self.socket), *self.args, *(extra or [])]

    def spawn(self, extra: list[str] | None = None) -> subprocess.Popen:
        """Start it in a session of its own, output appended to `log_path`; no waiting."""
        cmd, env = self.command(extra), self.env()
        self._log = open(self.log_path, "ab")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.cwd, start_new_session=True)
        self.sessions.add(self.proc.pid)
        return self.proc

    def wait_ready(self, timeout: float = 20.0, poll: float = 0.05) -> None:
        """Until a handshake on the socket succeeds; raise if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"skyd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                Connection(str(self.socket), self.client_name).connect().close()
                return
            except Unreachable:
                time.sleep(poll)
        raise RuntimeError(f"skyd did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal it and reap it; on timeout SIGKILL its whole session. Its return code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:      # not a session leader (started elsewhere)
                    self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill9(self) -> None:
        """kill -9 the daemon process alone (a crash), and reap it."""
        self.stop(signal.SIGKILL, timeout=10)

    def connect(self, timeout: float | None = None) -> Connection:
        return Connection(str(self.socket), self.client_name,
                          timeout=self.connect_timeout if timeout is None else timeout).connect()

    def call(self, op):
        with self.connect() as c:
            return c.call(op)

    def frames(self, op, wait: bool = True) -> list:
        with self.connect() as c:
            return list(c.submit(op, wait))


class BenchDaemon(DaemonProcess):
    """A benchmark's daemon: state dir `root/name`, run from the repository with
    PYTHONPATH set, bytecode cached under `pycache` if given (else as the environment says)."""

    client_name = "bench"
    connect_timeout = 30.0
    cwd = str(ROOT)

    def __init__(self, root: Path, name: str, args: list[str] | None = None,
                 pycache: str | None = None):
        super().__init__(root / name, ["--skip-resources-check", "--drain-timeout", "2",
                                       *(args or [])])
        self.pycache = pycache

    def env(self) -> dict[str, str]:
        return daemon_env(self.pycache)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.state_dir / "skyd.db"

    def request_log(self, rid: str) -> Path:
        return self.state_dir / "logs" / "requests" / f"{rid}.log"

    def start(self, timeout: float = 30.0, poll: float = 0.002) -> float:
        """Start it; return seconds from spawn until it answers a handshake."""
        self.spawn()
        self.wait_ready(timeout, poll)
        return time.perf_counter() - self.spawned_at


# ---- processes --------------------------------------------------------------------------

def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (state Z counts as gone)."""
    st = _stat(pid)
    return st is not None and st[0] != b"Z"


def pid_state(pid: int) -> str | None:
    st = _stat(pid)
    return st[0].decode() if st else None


def ours(root: Path, sessions: set[int]) -> list[int]:
    """Processes that belong to this benchmark's daemons (never this process)."""
    me = os.getpid()
    found = []
    needle = str(root).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        st = _stat(pid)
        if st is None or st[0] == b"Z":
            continue
        hit = int(st[4]) in sessions                 # field 6: session id
        if not hit:
            try:
                hit = needle in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
        if not hit:
            try:
                hit = os.readlink(f"/proc/{pid}/cwd").startswith(str(root))
            except OSError:
                pass
        if hit:
            found.append(pid)
    return found


def kill_leftovers(root: Path, sessions: set[int]) -> list[int]:
    killed = []
    for _ in range(5):                 # bounded: children may appear while we kill
        pids = ours(root, sessions)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        time.sleep(0.05)
    return killed


__all__ = ["BenchDaemon", "DaemonProcess", "ServerError", "Unreachable", "kill_leftovers", "ours", "pid_alive",
           "pid_state"]


def bounded_wait(pred: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def server_info(socket: str, tool: str) -> protocol.ServerInfo | None:
    """The daemon's ServerInfo, or None after saying on stderr why it cannot be reached."""
    try:
        with Connection(socket, tool, timeout=10).connect() as c:
            return c.call(protocol.ApiInfo())
    except (Unreachable, ServerError, OSError) as e:
        print(f"{tool}: cannot reach skyd at {socket}: {e}", file=sys.stderr)
        return None
