"""The real-daemon fixture: a `skyd serve` process in a temporary state directory on a
temporary socket, talked to through the real skyctl (in-process Connection, or real
subprocesses). Every test cleans up the processes it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pytest

from profiling._daemon import DaemonProcess
from reaper import Reaper
from skyd import protocol

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SKYD_HOST", None)
    env["NO_COLOR"] = "1"
    return env


class Daemon(DaemonProcess):
    """A real skyd process. `args` are extra `skyd serve` flags. Spawning, waiting for the
    handshake, the log and stopping are profiling/_daemon.py's DaemonProcess."""

    client_name = "test"

    def env(self) -> dict[str, str]:
        return _env()

    def start(self, extra: list[str] | None = None, wait: bool = True) -> "Daemon":
        self.spawn(extra)
        if wait:
            self.wait_ready(poll=0.005)     # a connect that fails costs far less than a wait
        return self

    def restart(self, extra: list[str] | None = None, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start(extra)

    # ---- talking to it (connect, call, frames: DaemonProcess) ---------------------------

    def submit_async(self, op: protocol.Op) -> str:
        msgs = self.frames(op, wait=False)
        assert isinstance(msgs[-1], protocol.Accepted), msgs
        return msgs[-1].request_id

    def skyctl(self, *args: str, timeout: float = 60, check: bool = False,
               user: tuple[int, int] | None = None, **kw) -> subprocess.CompletedProcess:
        env = _env()
        env["SKYD_HOST"] = self.host
        pre = None
        if user is not None:
            uid, gid = user
            env["HOME"] = "/tmp"

            def pre() -> None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
        p = subprocess.run([sys.executable, "-m", "skyctl", *args], capture_output=True,
                           text=True, timeout=timeout, env=env, preexec_fn=pre, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"skyctl {' '.join(args)} -> {p.returncode}\n"
                                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def request(self, rid: str) -> protocol.RequestRecord:
        return self.call(protocol.ApiStatus(request_ids=[rid]))[0]

    def wait_request(self, rid: str, timeout: float = 30.0) -> protocol.RequestRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.request(rid)
            if rec.status.finished:
                return rec
            time.sleep(0.05)
        raise AssertionError(f"request {rid} did not finish within {timeout}s: {rec}")

    def wait_job(self, cluster: str, job_id: int, timeout: float = 30.0) -> protocol.JobRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = {j.job_id: j for j in self.call(protocol.JobQueue(cluster=cluster))}
            job = jobs.get(job_id)
            if job is not None and job.status in protocol.JOB_FINISHED:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} on {cluster} did not finish within {timeout}s: {job}")


def processes_mentioning(path: str | Path) -> list[int]:
    """Processes whose command line names `path` (job runners name their job dir), or has
    that text (a test's marker command, as `sleep 30171`)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found.append(int(entry.name))
    return found


def kill_leftovers(state_dir: Path) -> list[int]:
    """Kill every process whose command line names the state dir (job runners, setups)."""
    pids = processes_mentioning(state_dir)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


def write_task(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body)
    return path


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def wait_until(pred, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@pytest.fixture(scope="session", autouse=True)
def reaper():
    """Ends the tests' daemons while the next test runs (tests/reaper.py); the session waits
    for the last of them."""
    r = Reaper(kill_leftovers)
    yield r
    r.pump(block=True)


@pytest.fixture
def workdir(reaper):
    reaper.pump()               # what earlier tests' daemons left, once they have exited
    # Short paths: a Unix socket path must fit in 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="skyd-t-", dir="/tmp"))
    yield d
    reaper.remove_later(d)      # after its daemons have exited


def _maker(directory: Path, daemons: list[Daemon]):
    def make(*args: str, start: bool = True, name: str = "state") -> Daemon:
        d = Daemon(directory / name, ["--skip-resources-check", "--drain-timeout", "2", *args])
        daemons.append(d)
        if start:
            d.start()
        return d
    return make


@pytest.fixture
def make_daemon(workdir, reaper):
    daemons: list[Daemon] = []
    yield _maker(workdir, daemons)
    reaper.stop_later(daemons)  # SIGTERM now; they exit while the next test runs


@pytest.fixture(scope="module")
def make_module_daemon(reaper):
    """make_daemon for daemons a module's tests share: only for tests that assert on what
    they did themselves (before and after), never on the daemon being fresh."""
    directory = Path(tempfile.mkdtemp(prefix="skyd-m-", dir="/tmp"))
    daemons: list[Daemon] = []
    yield _maker(directory, daemons)
    reaper.stop_later(daemons)
    reaper.remove_later(directory)


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


def raw_frames(sock_path: Path, payloads: list[bytes], hello: bool = True,
               read: int = 1) -> list:
    """Send raw frames (for bad-input tests) and decode `read` answers per payload."""
    dec = msgspec.msgpack.Decoder(protocol.ServerMsg)
    out = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        if hello:
            protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "test"))
            out.append(dec.decode(protocol.recv_frame(s)))
        for p in payloads:
            s.sendall(p)
            for _ in range(read):
                try:
                    out.append(dec.decode(protocol.recv_frame(s)))
                except (ConnectionError, OSError):
                    out.append(None)
    return out


# ---- real people: two ordinary accounts beside root (tests/users.py) ----------------------

@pytest.fixture(scope="session")
def people():
    """[alice, bob]: real accounts in the group `skyd-users`, running the real skyctl."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and act as other users")
    import users
    try:
        client, persons = users.make_people()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"test accounts cannot run skyctl: {e}")
    yield persons
    client.close()


@pytest.fixture
def team(make_daemon, workdir, people):
    """A root daemon whose socket is open to the group `skyd-users` (alice and bob)."""
    import users
    os.chmod(workdir, 0o755)          # mkdtemp made it 0700: let them reach the socket
    return make_daemon("--socket-group", users.GROUP)
