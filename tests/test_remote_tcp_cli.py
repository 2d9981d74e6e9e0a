"""The real skyctl command line over tcp:// with TLS (a self-signed certificate made here):
the token from SKYD_TOKEN, or from a 0600 file named in the client config (a looser one
refused); status, launch with its followed log, api status, --json; a wrong token's
message, delay and exit code. And revocation: the sessions a token opened end, with a
clear error, when it is revoked (`skyd token revoke`, or its file edited then SIGHUP),
while other tokens' sessions, the Unix socket's and the work itself go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from conftest import ROOT, Daemon, wait_until
from skyctl.exits import DENIED, UNREACHABLE, USAGE
from skyd import protocol
from skyd.server.remote import BAD_TOKEN_DELAY
from tcpclient import connect, new_token, self_signed, skyd_token, tcp_port


class Laptop:
    """skyctl as someone elsewhere runs it: SKYD_HOST=tcp://..., their own client config
    (XDG_CONFIG_HOME), nothing of the test's environment."""

    def __init__(self, d: Daemon, home: Path, cert: Path):
        self.d, self.home, self.cert = d, home, cert
        self.url = f"tcp://127.0.0.1:{tcp_port(d)}"
        (home / "config" / "skyctl").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
        self.env.update(PYTHONPATH=str(ROOT), NO_COLOR="1", XDG_CONFIG_HOME=str(home / "config"),
                        SKYD_HOST=self.url, SKYD_TLS_CA=str(cert))

    def skyctl(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "skyctl", *args], capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **env},
                              cwd=self.home)

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "skyctl", *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**self.env, **env}, cwd=self.home)

    def config(self, text: str) -> None:
        (self.home / "config" / "skyctl" / "config.toml").write_text(text)


class Lines:
    """A running skyctl's stdout and stderr, read as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [threading.Thread(target=_read_into, args=(pipe, into), daemon=True)
                         for pipe, into in ((proc.stdout, self.lines),
                                            (proc.stderr, self.errors))]
        for t in self._readers:
            t.start()

    def has(self, text: str, timeout: float = 30, stderr: bool = False) -> bool:
        lines = self.errors if stderr else self.lines
        return wait_until(lambda: any(text in line for line in lines), timeout)

    def ended(self, timeout: float = 15) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(5)
        return rc, "".join(self.errors)


def _read_into(pipe, lines: list[str]) -> None:
    lines.extend(iter(pipe.readline, ""))


@pytest.fixture
def tls_daemon(make_daemon, workdir):
    cert, key = self_signed(workdir)
    os.chmod(workdir, 0o755)          # the token's user's jobs reach their cluster directory
    d = make_daemon("--tcp", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    laptop_home = workdir / "laptop"
    laptop_home.mkdir()
    return d, Laptop(d, laptop_home, cert)


def test_the_cli_over_tcp_with_tls_and_skyd_token(tls_daemon, people):
    d, laptop = tls_daemon
    alice = people[0]
    token = new_token(d, "alice-laptop", "--user", alice.name)
    as_alice = {"SKYD_TOKEN": token}

    p = laptop.skyctl("api", "info", "--json", **as_alice)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert (info["user"], info["uid"], info["admin"], info["tls"]) == (alice.name, alice.uid,
                                                                      False, True)
    p = laptop.skyctl("status", **as_alice)
    assert p.returncode == 0, p.stderr
    # A launch follows its request's log, then its job's, to the job's end.
    p = laptop.skyctl("launch", "-c", "tc", "--infra", "local",
                      "echo I am $(id -un); for i in 1 2 3; do echo line $i; sleep 0.1; done",
                      **as_alice)
    assert p.returncode == 0, p.stderr
    assert f"I am {alice.name}\nline 1\nline 2\nline 3\n" in p.stdout, p.stdout
    assert "Job 1 on tc finished: SUCCEEDED" in p.stderr, p.stderr
    p = laptop.skyctl("status", **as_alice)
    assert p.returncode == 0 and "tc" in p.stdout, p.stderr
    p = laptop.skyctl("status", "--json", **as_alice)
    assert p.returncode == 0, p.stderr
    [cluster] = json.loads(p.stdout)
    assert (cluster["name"], cluster["user"]) == ("tc", alice.name)
    p = laptop.skyctl("api", "status", "-a", "--json", **as_alice)
    assert p.returncode == 0, p.stderr
    reqs = json.loads(p.stdout)
    assert reqs and {r["user"] for r in reqs} == {alice.name}
    assert "launch" in {r["name"] for r in reqs} and all(r["status"] for r in reqs)
    p = laptop.skyctl("logs", "tc", "1", **as_alice)          # a finished job's log again
    assert p.returncode == 0 and "line 3" in p.stdout, p.stderr

    # A wrong token: said plainly after the fixed delay, exit code 5, no traceback.
    t0 = time.monotonic()
    p = laptop.skyctl("status", SKYD_TOKEN="skyd_" + "x" * 43)
    took = time.monotonic() - t0
    assert p.returncode == DENIED, (p.returncode, p.stderr)
    assert "invalid token (unknown or revoked)" in p.stderr and "skyd token create" in p.stderr
    assert took >= BAD_TOKEN_DELAY and "Traceback" not in p.stderr
    # None at all: skyctl says where one goes, and sends nothing.
    p = laptop.skyctl("status")
    assert p.returncode == USAGE and "tcp:// needs a token: set SKYD_TOKEN" in p.stderr
    # TLS that the system's authorities cannot check: unreachable, with what to set.
    p = laptop.skyctl("status", SKYD_TLS_CA="", SKYD_TLS="1", **as_alice)
    assert p.returncode == UNREACHABLE and "failed TLS verification" in p.stderr, p.stderr
    assert "tls_ca" in p.stderr
    assert token not in d.log()
    d.call(protocol.Down(cluster="tc"))


def test_a_token_file_named_in_the_client_config(tls_daemon):
    d, laptop = tls_daemon
    token = new_token(d, "from-file")
    token_file = laptop.home / "skyd.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    laptop.config(f'host = "{laptop.url}"\ntoken_file = "{token_file}"\n'
                  f'tls_ca = "{laptop.cert}"\n')
    bare = {"SKYD_HOST": "", "SKYD_TLS_CA": ""}       # everything from the config file
    p = laptop.skyctl("api", "info", "--json", **bare)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["user"] == "root"
    p = laptop.skyctl("status", "--json", **bare)
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr

    # Readable by others: refused before anything is sent, saying how to fix it.
    token_file.chmod(0o644)
    p = laptop.skyctl("status", **bare)
    assert p.returncode == USAGE, (p.returncode, p.stderr)
    assert f"the token file {token_file} is readable by others (mode 0644)" in p.stderr
    assert f"chmod 600 {token_file}" in p.stderr
    assert "refused a login" not in d.log()           # nothing reached the daemon
    token_file.chmod(0o600)
    assert laptop.skyctl("status", **bare).returncode == 0


def test_revoking_a_token_ends_its_open_sessions(tls_daemon, people):
    d, laptop = tls_daemon
    alice = people[0]
    doomed = new_token(d, "doomed", "--user", alice.name)
    other = new_token(d, "other", "--user", alice.name)
    p = laptop.skyctl("launch", "-c", "tick", "-d", "--infra", "local",
                      "for i in $(seq 600); do echo tick $i; sleep 0.1; done", SKYD_TOKEN=doomed)
    assert p.returncode == 0, p.stderr
    # Three live sessions on the doomed token (a followed log, a watch, an idle one), one
    # on another token, one on the Unix socket.
    follower = Lines(laptop.popen("logs", "tick", "1", SKYD_TOKEN=doomed))
    watcher = Lines(laptop.popen("api", "watch", SKYD_TOKEN=doomed))
    idle = connect(d, doomed, ca=laptop.cert)
    bystander = Lines(laptop.popen("logs", "tick", "1", SKYD_TOKEN=other))
    local = d.connect()
    local_follow = local.submit(protocol.JobLogs(cluster="tick", job_id=1, follow=True))
    assert follower.has("tick 3"), (follower.lines, follower.errors)
    assert bystander.has("tick 3"), (bystander.lines, bystander.errors)
    assert watcher.has("watching your requests", stderr=True)

    p = skyd_token(d, "revoke", "doomed")
    assert p.returncode == 0, p.stderr
    assert "its open connections are closed" in p.stdout, p.stdout
    t0 = time.monotonic()
    for proc in (follower, watcher):
        rc, err = proc.ended()
        assert rc == DENIED, (rc, err)
        assert "the token this connection was opened with has been revoked" in err, err
        assert "Traceback" not in err and "reconnecting" not in err.lower(), err
    assert time.monotonic() - t0 < 5
    got = idle.read()                                 # unasked: the reason, then the end
    assert isinstance(got, protocol.Error) and got.code is protocol.ErrorCode.PERMISSION_DENIED
    assert "revoked" in got.message
    with pytest.raises((ConnectionError, OSError, msgspec.DecodeError)):
        idle.read()
    idle.close()
    # The others go on, and so does the job; the token is refused from now on.
    n = len(bystander.lines)
    assert wait_until(lambda: len(bystander.lines) > n + 3, 10), "the other token's log stopped"
    assert isinstance(next(local_follow), (protocol.Chunk, protocol.Notice))
    jobs = d.call(protocol.JobQueue(cluster="tick"))
    assert [j.status for j in jobs] == [protocol.JobStatus.RUNNING]
    p = laptop.skyctl("status", SKYD_TOKEN=doomed)
    assert p.returncode == DENIED and "invalid token" in p.stderr, p.stderr
    assert "closed 3 connections opened with a revoked token" in d.log()

    bystander.proc.send_signal(signal.SIGINT)
    assert bystander.ended()[0] == 130
    local.close()
    d.call(protocol.Down(cluster="tick"))


def test_a_token_gone_from_its_file_on_sighup_ends_its_sessions(tls_daemon):
    """Root edits the token file by hand (a restored backup, a config tool) and reloads:
    the sessions of the tokens no longer in it end too."""
    d, laptop = tls_daemon
    kept, dropped = new_token(d, "kept"), new_token(d, "dropped")
    a, b = connect(d, kept, ca=laptop.cert), connect(d, dropped, ca=laptop.cert)
    path = d.state_dir / "tokens.json"
    doc = json.loads(path.read_text())
    doc["tokens"] = [t for t in doc["tokens"] if t["record"]["name"] != "dropped"]
    path.write_text(json.dumps(doc))
    d.proc.send_signal(signal.SIGHUP)
    got = b.read()
    assert isinstance(got, protocol.Error) and "revoked" in got.message
    b.close()
    assert a.call(protocol.ApiInfo()).user == "root"      # the kept token's session goes on
    a.close()
