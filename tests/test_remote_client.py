"""skyctl over ssh:// against a real sshd on loopback, as real users (alice and bob, each
logging in as themselves with their own key): the daemon sees each one's uid through
`skyctl dial-stdio` on the VM; followed logs and Ctrl-C through it; one SSH connection
for many calls; the workdir uploaded once per content.

The "VM" is this machine behind a counting TCP relay (tests can tell how many SSH
connections were made, and how many bytes went up), reached as ssh://alice@127.0.0.1:PORT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_until, write_task
from sshd import SshHosts, start_or_skip


COVERAGE_ENV = ("COVERAGE_PROCESS_START", "COVERAGE_FILE")


def _measured() -> str:
    """Under coverage (.ci/run), its settings for `skyctl dial-stdio` on the VM: an ssh
    session does not inherit our environment."""
    return "".join(f"{k}={os.environ[k]} " for k in COVERAGE_ENV if k in os.environ)


class Relay:
    """A TCP relay to sshd that counts connections and the bytes sent up."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.bytes_up = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if up:
                    with self._lock:
                        self.bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def _own_key(person) -> None:
    r = person.sh("set -e; umask 077; mkdir -p ~/.ssh; "
                  "[ -f ~/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
                  "k=$(cat ~/.ssh/id_ed25519.pub); touch ~/.ssh/authorized_keys; "
                  "grep -qxF \"$k\" ~/.ssh/authorized_keys || echo \"$k\" >> ~/.ssh/authorized_keys")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def vm(people):
    """One sshd on 127.0.0.11 where alice and bob log in with their own keys, behind a Relay."""
    for person in people:
        _own_key(person)
    base = Path(tempfile.mkdtemp(prefix="skyd-rc-", dir="/tmp"))
    hosts = SshHosts(base, count=1, first_ip=11, logins=tuple(p.name for p in people))
    try:
        start_or_skip(hosts)
        h = hosts[0]
        relay = Relay((h.ip, h.port))
        known = base / "relay_known_hosts"
        known.write_text(f"[127.0.0.1]:{relay.port} {h.host_key_pub}\n")
        known.chmod(0o644)
        os.chmod(base, 0o755)
        yield relay, known
        relay.close()
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


class Remote:
    """A person running skyctl on their "laptop" against the team daemon over ssh://."""

    def __init__(self, person, daemon, relay: Relay, known: Path, run_dir: Path):
        self.person, self.d, self.relay = person, daemon, relay
        self.run_dir = run_dir               # their XDG_RUNTIME_DIR: ssh's control sockets
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": person.home, "NO_COLOR": "1",
            "USER": person.name, "PYTHONPATH": person.pythonpath, "XDG_RUNTIME_DIR": str(run_dir),
            "XDG_CONFIG_HOME": str(run_dir / "config"),
            "SKYD_HOST": f"ssh://{person.name}@127.0.0.1:{relay.port}{daemon.socket}",
            "SKYD_SSH_COMMAND": f"ssh -F /dev/null -o UserKnownHostsFile={known} "
                                "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "
                                "-i ~/.ssh/id_ed25519",
            "SKYD_REMOTE_SKYCTL": f"env PYTHONPATH={person.pythonpath} {_measured()}"
                                  f"{person.python} -m skyctl",
            **{k: os.environ[k] for k in COVERAGE_ENV if k in os.environ},
        }

    def argv(self, *args: str) -> list[str]:
        return [self.person.python, "-m", "skyctl", *args]

    def skyctl(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env={**self.env, **kw.pop("env", {})},
                              preexec_fn=self.person._become, capture_output=True, text=True,
                              timeout=timeout, cwd=self.run_dir, **kw)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env=self.env, preexec_fn=self.person._become,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.run_dir)

    def control_sockets(self) -> list[str]:
        d = self.run_dir / "skyctl"
        return [p.name for p in d.iterdir() if p.is_socket()] if d.exists() else []

    def close(self) -> None:
        """Stop the master connections this person's calls left behind."""
        for name in self.control_sockets():
            subprocess.run(["ssh", "-o", f"ControlPath={self.run_dir / 'skyctl' / name}",
                            "-O", "exit", "x"], capture_output=True, timeout=10,
                           preexec_fn=self.person._become, env=self.env)


@pytest.fixture
def remotes(team, people, vm, workdir):
    relay, known = vm
    made = []
    for person in people:
        run_dir = workdir / f"run-{person.name}"
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, person.uid, person.gid)
        made.append(Remote(person, team, relay, known, run_dir))
    yield made
    for r in made:
        r.close()


def test_each_person_is_their_own_uid_through_ssh(remotes, people):
    for r, person in zip(remotes, people):
        p = r.skyctl("api", "info", "--json")
        assert p.returncode == 0, p.stderr
        info = json.loads(p.stdout)
        assert (info["user"], info["uid"], info["admin"]) == (person.name, person.uid, False)
    alice = remotes[0]
    p = alice.skyctl("launch", "-c", "ra", "--infra", "local", "echo uid=$(id -u)")
    assert p.returncode == 0, p.stderr
    assert f"uid={people[0].uid}" in p.stdout
    # bob does not see alice's cluster
    p = remotes[1].skyctl("status", "--json")
    assert p.returncode == 0 and "ra" not in [c["name"] for c in json.loads(p.stdout)]


def test_one_ssh_connection_serves_many_calls(remotes):
    alice = remotes[0]
    before = alice.relay.connections
    assert alice.skyctl("status").returncode == 0
    assert alice.control_sockets(), "no ControlMaster socket after the first call"
    mode = (alice.run_dir / "skyctl").stat().st_mode & 0o777
    assert mode == 0o700
    for _ in range(3):
        p = alice.skyctl("status")
        assert p.returncode == 0, p.stderr
    assert alice.relay.connections - before == 1      # one handshake for four calls


def test_followed_logs_and_ctrl_c_through_ssh(remotes):
    alice = remotes[0]
    p = alice.skyctl("launch", "-c", "tick", "-d", "--infra", "local",
                     "for i in $(seq 300); do echo tick $i; sleep 0.2; done")
    assert p.returncode == 0, p.stderr
    follower = alice.popen("logs", "tick", "1")
    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(follower.stdout.readline, "")),
                              daemon=True)
    reader.start()
    assert wait_until(lambda: any("tick 3" in line for line in got), timeout=30), got
    follower.send_signal(signal.SIGINT)
    rc = follower.wait(timeout=20)
    err = follower.stderr.read()
    assert rc == 130, err
    assert "Stopped following; the job keeps running" in err and "Traceback" not in err
    p = alice.skyctl("queue", "tick", "--json")
    assert p.returncode == 0, p.stderr
    assert [j["status"] for j in json.loads(p.stdout)] == ["RUNNING"]     # detached, not stopped
    assert alice.skyctl("cancel", "tick", "1").returncode == 0


def test_the_workdir_is_uploaded_once_per_content(remotes, people, workdir):
    alice, person = remotes[0], people[0]
    assert person.sh("rm -rf ~/.skyd/uploads").returncode == 0     # a VM that has none yet
    laptop = alice.run_dir / "project"
    laptop.mkdir()
    (laptop / "hello.txt").write_text("hello from the laptop\n")
    (laptop / "data.bin").write_bytes(os.urandom(2 << 20))
    (laptop / "sub").mkdir()
    (laptop / "sub" / "x.txt").write_text("x\n")
    notes = alice.run_dir / "notes.txt"
    notes.write_text("mounted note\n")
    subprocess.run(["chown", "-R", f"{person.uid}:{person.gid}", str(laptop), str(notes)],
                   check=True)
    task = write_task(alice.run_dir, "t.yaml", f"""
workdir: {laptop}
file_mounts:
  ~/note.txt: {notes}
resources:
  infra: local
run: cat hello.txt sub/x.txt ../note.txt
""")
    os.chown(task, person.uid, person.gid)
    sent = alice.relay.bytes_up
    p = alice.skyctl("launch", "-c", "up", str(task))
    assert p.returncode == 0, p.stderr
    assert "hello from the laptop\nx\nmounted note\n" in p.stdout
    first = alice.relay.bytes_up - sent
    assert first > 2 << 20
    uploads = Path(person.home) / ".skyd" / "uploads"
    assert uploads.stat().st_mode & 0o777 == 0o700
    assert len([d for d in uploads.iterdir() if not d.name.startswith(".")]) == 2
    sent = alice.relay.bytes_up
    p = alice.skyctl("exec", "up", str(task))
    assert p.returncode == 0, p.stderr
    assert "hello from the laptop" in p.stdout
    assert alice.relay.bytes_up - sent < 256 << 10, "an unchanged workdir was sent again"
    # A changed file makes a new tree; the limit is checked before anything is sent.
    (laptop / "hello.txt").write_text("changed\n")
    p = alice.skyctl("exec", "up", str(task), env={"SKYD_UPLOAD_LIMIT_MB": "1"})
    assert p.returncode == 2 and "over the upload limit of 1.0 MiB" in p.stderr, p.stderr
    p = alice.skyctl("exec", "up", str(task))
    assert p.returncode == 0 and "changed" in p.stdout, p.stderr


def test_a_large_upload_says_its_progress(remotes, people):
    alice, person = remotes[0], people[0]
    big = alice.run_dir / "big"
    big.mkdir()
    (big / "blob").write_bytes(os.urandom(9 << 20))
    subprocess.run(["chown", "-R", f"{person.uid}:{person.gid}", str(big)], check=True)
    p = alice.skyctl("launch", "-c", "big", "--infra", "local", "--workdir", str(big),
                     "wc -c < blob")
    assert p.returncode == 0, p.stderr
    assert str(9 << 20) in p.stdout
    assert f"Uploading workdir {big} (9.0 MiB)" in p.stderr and "MiB/s" in p.stderr


def test_ssh_failures_are_said_plainly(remotes, workdir):
    alice = remotes[0]
    p = alice.skyctl("status", env={"SKYD_REMOTE_SKYCTL": "no-such-skyctl"})
    assert p.returncode == 4 and "is not a command on 127.0.0.1" in p.stderr, p.stderr
    assert "remote_skyctl" in p.stderr
    host = alice.env["SKYD_HOST"].replace(str(alice.d.socket), f"{workdir}/none.sock")
    t = time.monotonic()
    p = alice.skyctl("status", env={"SKYD_HOST": host})
    assert p.returncode == 4 and f"no skyd socket at {workdir}/none.sock" in p.stderr, p.stderr
    assert time.monotonic() - t < 15
    p = alice.skyctl("status", env={"SKYD_HOST": "ssh://-oProxyCommand=x"})
    assert p.returncode == 2 and "no host name" in p.stderr
