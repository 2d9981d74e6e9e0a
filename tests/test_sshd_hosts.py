"""The real-sshd test helper (tests/sshd.py) itself: loopback hosts answer on their own ip,
multiplexing and rsync work over them, kill()/restart() simulate node loss and recovery,
host keys are checkable, and nothing is left running."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import sshd
from sshd import SshHosts, ssh_hosts  # noqa: F401  (ssh_hosts is a fixture)


def ssh(host, command: str, *opts: str, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", *opts, *host.ssh_args(**kw), host.target, command],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def pid_alive(pid: int) -> bool:
    return sshd._pid_alive(pid)


def test_hosts_answer_on_their_own_ip(ssh_hosts):
    hosts = ssh_hosts.hosts
    assert [h.ip for h in hosts] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert len({h.port for h in hosts}) == 1
    procs = [subprocess.Popen(["ssh", *h.ssh_args(), h.target, "echo $SSH_CONNECTION; id -un"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for h in hosts]
    for h, proc in zip(hosts, procs):
        assert h.alive()
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        conn, user = out.split("\n")[:2]
        client_ip, _, server_ip, server_port = conn.split()
        assert (server_ip, int(server_port)) == (h.ip, h.port)
        assert client_ip.startswith("127.")
        assert user == h.user
    pool = yaml.safe_load(ssh_hosts.pool_yaml("mypool"))
    assert pool == {"mypool": {
        "shared_login": True, "user": hosts[0].user, "identity_file": hosts[0].identity_file,
        "hosts": [{"ip": h.ip, "port": h.port} for h in hosts]}}
    own = yaml.safe_load(ssh_hosts.pool_yaml("own", shared_login=False))
    assert own == {"own": {"hosts": [{"ip": h.ip, "port": h.port} for h in hosts]}}
    sub = yaml.safe_load(ssh_hosts.pool_yaml("two", hosts[1:]))
    assert [e["ip"] for e in sub["two"]["hosts"]] == ["127.0.0.3", "127.0.0.4"]


def test_control_master_is_reused(ssh_hosts):
    h = ssh_hosts[0]
    cm = ["-o", "ControlMaster=auto", "-o", f"ControlPath={ssh_hosts.base_dir}/cm-%C",
          "-o", "ControlPersist=30"]
    try:
        first = ssh(h, "echo one", *cm)
        assert first.returncode == 0 and first.stdout == "one\n", first.stderr
        check = ssh(h, "", "-O", "check", *cm)
        assert "Master running" in check.stderr, check.stderr
        master_pid = check.stderr.split("pid=")[1].split(")")[0]
        # many sessions over the one master (MaxSessions is raised for this)
        procs = [subprocess.Popen(["ssh", *cm, *h.ssh_args(), h.target, f"echo {i}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL) for i in range(8)]
        outs = [p.communicate(timeout=20) for p in procs]
        assert [o for o, _ in outs] == [f"{i}\n" for i in range(8)], outs
        again = ssh(h, "", "-O", "check", *cm)
        assert f"pid={master_pid})" in again.stderr, again.stderr
    finally:
        ssh(h, "", "-O", "exit", *cm)


def test_rsync_copies_a_directory_to_each_host(ssh_hosts, tmp_path):
    if shutil.which("rsync") is None and not os.environ.get("CI"):
        pytest.skip("rsync not installed")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(4096))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    for h in ssh_hosts.hosts[:2]:
        dst = ssh_hosts.base_dir / "home" / f"rsync-{h.ip}"  # hosts share the filesystem
        p = subprocess.run(["rsync", "-a", "-e", h.ssh_command(), f"{src}/",
                            f"{h.target}:{dst}/"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert (dst / "a.txt").read_text() == "alpha\n"
        assert (dst / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
        assert os.access(dst / "run.sh", os.X_OK)
        assert ssh(h, f"{dst}/run.sh").stdout == "hi\n"


def test_kill_loses_the_node_and_restart_brings_it_back(ssh_hosts):
    h, other = ssh_hosts[1], ssh_hosts[2]
    # a detached process started over ssh (like a job runner) dies with the node
    p = ssh(h, "nohup setsid sleep 1234 >/dev/null 2>&1 </dev/null & echo $!")
    assert p.returncode == 0, p.stderr
    remote_pid = int(p.stdout.split()[0])
    assert pid_alive(remote_pid)
    old_pid = h.proc.pid

    h.kill()
    assert not h.alive()
    assert not pid_alive(old_pid)
    assert _wait(lambda: not pid_alive(remote_pid), 5)
    t0 = time.monotonic()
    lost = ssh(h, "true", connect_timeout=2, timeout=10)
    assert lost.returncode == 255, (lost.returncode, lost.stderr)
    assert time.monotonic() - t0 < 5
    assert ssh(other, "true").returncode == 0  # the other nodes are unaffected

    h.restart()
    assert h.alive() and h.proc.pid != old_pid
    back = ssh(h, "echo $SSH_CONNECTION", strict=True)  # same host key as before
    assert back.returncode == 0, back.stderr
    assert back.stdout.split()[2:] == [h.ip, str(h.port)]


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_known_hosts_checks_host_keys(ssh_hosts, tmp_path):
    h, other = ssh_hosts[0], ssh_hosts[1]
    lines = ssh_hosts.known_hosts.read_text().splitlines()
    assert lines == [f"[{x.ip}]:{x.port} {x.host_key_pub}" for x in ssh_hosts]
    ok = ssh(h, "true", strict=True)
    assert ok.returncode == 0, ok.stderr

    # h's entry holds another host's (valid, same-type) key: a changed host key
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[{h.ip}]:{h.port} {other.host_key_pub}\n")
    bad = ssh(h, "true", "-o", f"UserKnownHostsFile={wrong}", "-o",
              "StrictHostKeyChecking=yes")
    assert bad.returncode == 255
    assert ("REMOTE HOST IDENTIFICATION HAS CHANGED" in bad.stderr
            or "Host key verification failed" in bad.stderr), bad.stderr

    # no entry at all: refused under strict checking
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    unknown = ssh(h, "true", "-o", f"UserKnownHostsFile={empty}", "-o",
                  "StrictHostKeyChecking=yes")
    assert unknown.returncode == 255
    assert "Host key verification failed" in unknown.stderr, unknown.stderr


def test_context_manager_cleans_up_everything():
    base = Path(tempfile.mkdtemp(prefix="skyd-ssh-", dir="/tmp"))
    try:
        with SshHosts(base, count=2, first_ip=5) as hosts:
            assert [h.ip for h in hosts] == ["127.0.0.5", "127.0.0.6"]
            pids = [h.proc.pid for h in hosts]
            p = ssh(hosts[0], "nohup setsid sleep 4321 >/dev/null 2>&1 </dev/null & echo $!")
            remote_pid = int(p.stdout.split()[0])
            assert all(pid_alive(x) for x in [*pids, remote_pid])
        assert _wait(lambda: not any(pid_alive(x) for x in [*pids, remote_pid]), 5)
        assert sshd._port_free("127.0.0.5", hosts[0].port)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_missing_sshd_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sshd, "SSHD", "/nonexistent/sshd")
    with pytest.raises(sshd.SshdUnavailable, match="/nonexistent/sshd"):
        with SshHosts(tmp_path / "h", count=1):
            pass
    assert isinstance(sshd.SshdUnavailable("x"), RuntimeError)
