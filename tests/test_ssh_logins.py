"""Who logs in on an ssh node pool: by default each person as themselves, with their own
keys (so people on one pool cannot read or signal each other's work), a shared login only
with `shared_login: true` (and then `skyctl infra` says users are not isolated); the pool
file's fields never reach ssh as options; secrets do not stay in a file on a node."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import wait_until, write_task
from sshd import SshHosts, ssh_hosts, start_or_skip  # noqa: F401 - the fixture
from skyd import protocol
from skyd.infra.ssh import SshClient, SshProvisioner, scripts as ssh_scripts
from skyd.infra.nodepools import PoolError, parse

SECRET = "s3cr3t-" + os.urandom(4).hex()
# A job checks it has the secret without the secret being written in its script.
HAS_SECRET = ('[ "$(printf %s "$SECRET" | sha256sum | cut -c1-16)" = '
              f'{hashlib.sha256(SECRET.encode()).hexdigest()[:16]} ]')


# ---- the pool file's fields --------------------------------------------------------------

def test_a_login_that_is_an_ssh_option_is_refused():
    for user in ("-oProxyCommand=touch /tmp/pwned", "al ice", "ali\nce", "a;b", "-l"):
        with pytest.raises(PoolError, match=r"pool 'p': `user` must be a login name"):
            parse({"p": {"shared_login": True, "user": user, "hosts": ["10.0.0.5"]}})
    with pytest.raises(PoolError, match=r"pool 'p', host 10\.0\.0\.6: `user`"):
        parse({"p": {"shared_login": True, "user": "ok",
                     "hosts": ["10.0.0.5", {"ip": "10.0.0.6", "user": "-oX=y"}]}})


def test_hosts_jump_hosts_and_identity_files_are_checked():
    def err(pool: dict) -> str:
        with pytest.raises(PoolError) as e:
            parse({"p": pool})
        return str(e.value)
    assert "host #1: `ip` must be a host name" in err({"hosts": ["-oProxyCommand=x"]})
    assert "host #2: `ip`" in err({"hosts": ["10.0.0.5", "10.0.0.6 -p 1"]})
    assert "host #1: `ip`" in err({"hosts": [{"ip": "a b"}]})
    assert "host #1: `ip`" in err({"hosts": [{"ip": "a;touch x"}]})
    assert "pool 'p': `proxy_jump`" in err({"proxy_jump": "-oProxyCommand=x", "hosts": ["a"]})
    assert "host a: `proxy_jump`" in err({"hosts": [{"ip": "a", "proxy_jump": "b,-oX=y"}]})
    assert "host a: `proxy_jump`" in err({"hosts": [{"ip": "a", "proxy_jump": "j h"}]})
    assert "`identity_file` must be an absolute path" in err(
        {"identity_file": "keys/id", "hosts": ["a"]})
    assert "`identity_file` must be an absolute path" in err(
        {"identity_file": "-i/x", "hosts": ["a"]})
    assert "`shared_login` must be true or false" in err({"shared_login": "yes", "hosts": ["a"]})
    ok = parse({"p": {"proxy_jump": "me@bastion:2222,jump2", "identity_file": "~/.ssh/pool",
                      "hosts": ["10.0.0.5", "node-1.example.com", "fe80::1%eth0"]}})["p"]
    assert [h.ip for h in ok.hosts] == ["10.0.0.5", "node-1.example.com", "fe80::1%eth0"]
    assert ok.hosts[0].identity_file == "~/.ssh/pool"   # each person's own home expands it
    assert not ok.shared_login


def test_a_shared_login_needs_shared_login_true():
    with pytest.raises(PoolError, match=r"pool 'p'.*`user` names one login for everyone.*"
                                        r"shared_login: true.*not isolated"):
        parse({"p": {"user": "ubuntu", "hosts": ["10.0.0.5"]}})
    with pytest.raises(PoolError, match=r"host 10\.0\.0\.5: `user` names one login"):
        parse({"p": {"hosts": [{"ip": "10.0.0.5", "user": "ubuntu"}]}})
    with pytest.raises(PoolError, match=r"host 10\.0\.0\.5: no `user`"):
        parse({"p": {"shared_login": True, "hosts": ["10.0.0.5"]}})
    pool = parse({"p": {"shared_login": True, "user": "ubuntu", "identity_file": "/k",
                        "hosts": ["10.0.0.5"]}})["p"]
    assert pool.shared_login
    shared = pool.node(pool.hosts[0], 0, ".skyd/c/node-0", 1001, "alice")
    assert (shared.user, shared.login_uid, shared.host) == ("ubuntu", -1, "ubuntu@10.0.0.5:22")
    own = parse({"p": {"hosts": ["10.0.0.5"]}})["p"]
    node = own.node(own.hosts[0], 0, ".skyd/c/node-0", 1001, "alice")
    assert (node.user, node.login_uid, node.host) == ("alice", 1001, "10.0.0.5:22")


def test_a_pool_without_port_gets_22():
    pool = parse({"p": {"hosts": ["10.0.0.5", {"ip": "10.0.0.6"}, {"ip": "h", "port": 2}]}})["p"]
    assert [h.port for h in pool.hosts] == [22, 22, 2]


def test_every_ssh_and_rsync_command_ends_its_options_before_the_destination(monkeypatch, tmp_path):
    client = SshClient(str(tmp_path))
    node = protocol.NodeInfo(rank=0, ip="10.0.0.5", host="10.0.0.5:22", user="alice",
                             proxy_jump="j", identity_file="~/.ssh/k")
    argv = client.ssh(node, "true")
    assert argv[-3:] == ["--", "alice@10.0.0.5", "true"]
    seen = []
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **kw: seen.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    SshProvisioner(client)._rsync(node, str(tmp_path), "dst/")
    assert seen[0][0] == "rsync" and seen[0][-3:] == ["--", f"{tmp_path}/", "alice@10.0.0.5:dst/"]


def test_the_runner_deletes_the_environment_and_a_second_runner_needs_none(tmp_path):
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    (jobdir / "env.sh").write_text(ssh_scripts.env_script({"SECRET": SECRET, "jobdir": "/x"}))
    (jobdir / "run.sh").write_text('echo "got=$SECRET"; sleep 1; echo done\n')
    (jobdir / "runner.sh").write_text(ssh_scripts.RUNNER)
    first = subprocess.Popen(["sh", str(jobdir / "runner.sh"), str(jobdir)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert wait_until(lambda: not (jobdir / "env.sh").exists(), 5)
    second = subprocess.Popen(["sh", str(jobdir / "runner.sh"), str(jobdir)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    out, _ = first.communicate(timeout=20)      # reaped: the second sees it gone
    assert out == f"got={SECRET}\ndone\n"              # the task's own `jobdir` did not matter
    assert (first.returncode, second.wait(timeout=20), second.stdout.read()) == (0, 0, "")
    assert (jobdir / "exit_code").read_text() == "0\n"
    assert not (jobdir / "env.sh").exists()


# ---- a shared login -------------------------------------------------------------------------

@pytest.fixture
def shared(make_daemon, ssh_hosts, workdir):  # noqa: F811
    pools = workdir / "pools.yaml"
    pools.write_text(ssh_hosts.pool_yaml("p"))            # shared_login: true
    d = make_daemon("--node-pools", str(pools), "--ssh-known-hosts", str(ssh_hosts.known_hosts))
    d.hosts, d.pools_file = ssh_hosts, pools
    return d


def test_a_shared_login_still_works_and_infra_says_it_is_not_isolated(shared, workdir):
    task = write_task(workdir, "t.yaml", f"resources:\n  infra: ssh/p\nenvs:\n  SECRET: {SECRET}\n"
                                         f"run: |\n  {HAS_SECRET} && echo ok\n"
                                         "  id -un; sleep 30\n")
    shared.skyctl("launch", "-c", "sh1", "-d", str(task), check=True)
    assert wait_until(lambda: "ok" in shared.skyctl("logs", "sh1", "1", "--no-follow").stdout, 20)
    home = shared.hosts.base_dir / "home"           # the shared login's home on the "node"
    assert shared.skyctl("logs", "sh1", "1", "--no-follow").stdout.split()[:2] == \
        ["ok", shared.hosts.user]
    assert not list(home.glob(".skyd/sh1/node-0/jobs/1/env.sh"))
    assert not _files_holding(home / ".skyd", SECRET)
    p = shared.skyctl("infra")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pool p: shared login: users of this pool are not isolated" in p.stderr   # a warning
    assert f"{shared.hosts.user} (shared)" in p.stdout
    hosts = json.loads(shared.skyctl("infra", "--json").stdout)
    assert all(h["shared_login"] and h["user"] == shared.hosts.user for h in hosts)
    shared.skyctl("cancel", "sh1", "1", check=True)
    assert shared.wait_job("sh1", 1, 20).status == "CANCELLED"


def test_a_pool_without_port_is_probed_on_22(make_daemon, workdir):
    pools = workdir / "pools.yaml"
    pools.write_text("np:\n  hosts:\n    - 127.0.0.254\n")
    d = make_daemon("--node-pools", str(pools))
    p = d.skyctl("infra", "--json", timeout=60)
    assert "Expected" not in p.stderr and p.returncode in (0, 1), p.stderr
    [h] = json.loads(p.stdout)
    assert (h["pool"], h["ip"], h["port"]) == ("np", "127.0.0.254", 22)
    p = d.skyctl("infra")
    assert "127.0.0.254:22" in p.stdout and "shared login" not in p.stdout


def test_an_injected_pool_field_is_refused_naming_pool_host_and_field(shared, workdir):
    mark = workdir / "pwned"
    shared.pools_file.write_text(shared.pools_file.read_text().replace(
        f"user: {shared.hosts.user}", f'user: "-oProxyCommand=touch {mark}"'))
    p = shared.skyctl("infra")
    assert p.returncode != 0
    assert "pool 'p': `user` must be a login name" in p.stderr and "ProxyCommand" in p.stderr
    p = shared.skyctl("launch", "-c", "inj", "--infra", "ssh/p", "true")
    assert p.returncode == 2 and "`user` must be a login name" in p.stderr
    shared.pools_file.write_text(f"p:\n  hosts:\n    - ip: '-oProxyCommand=touch {mark}'\n")
    p = shared.skyctl("infra")
    assert p.returncode != 0 and "pool 'p', host #1: `ip` must be a host name" in p.stderr
    assert not mark.exists()


# ---- per-user logins --------------------------------------------------------------------------

def _own_key(person) -> None:
    """`person` gets a key of their own, authorized for their own login only."""
    r = person.sh("set -e; umask 077; mkdir -p ~/.ssh; "
                  "[ -f ~/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
                  "k=$(cat ~/.ssh/id_ed25519.pub); touch ~/.ssh/authorized_keys; "
                  "grep -qxF \"$k\" ~/.ssh/authorized_keys || echo \"$k\" >> ~/.ssh/authorized_keys")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def own_pool(make_daemon, workdir, people):
    """A root daemon open to alice and bob, with pool `own` (no shared login): two loopback
    sshd hosts on which alice and bob log in as themselves with their own keys."""
    import users
    for person in people:
        _own_key(person)
    base = Path(tempfile.mkdtemp(prefix="skyd-ssh-", dir="/tmp"))
    hosts = SshHosts(base, count=2, first_ip=7, logins=tuple(p.name for p in people))
    try:
        start_or_skip(hosts)
        os.chmod(workdir, 0o755)
        pools = workdir / "pools.yaml"
        pools.write_text(hosts.pool_yaml("own", shared_login=False))
        d = make_daemon("--socket-group", users.GROUP, "--node-pools", str(pools),
                        "--ssh-known-hosts", str(hosts.known_hosts))
        d.hosts = hosts
        yield d
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _job_log(d, person, cluster: str, want: str, timeout: float = 30) -> str:
    out = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = person.skyctl(d, "logs", cluster, "1", "--no-follow").stdout
        if want in out:
            return out
        time.sleep(0.2)
    raise AssertionError(f"{want!r} not in {cluster}'s log: {out!r}")


def test_each_person_logs_in_as_themselves_and_cannot_reach_the_others_work(own_pool, people, workdir):
    d = own_pool
    alice, bob = people
    for person, cluster in ((alice, "ac"), (bob, "bc")):
        # Each copies a workdir of their own (rsync as themselves, with their own key).
        assert person.sh("rm -rf ~/wd && mkdir ~/wd && echo from-$USER > ~/wd/hello.txt"
                         ).returncode == 0
        task = write_task(workdir, f"{cluster}.yaml", f"""
workdir: {person.home}/wd
resources:
  infra: ssh/own
envs:
  SECRET: {SECRET}
run: |
  {HAS_SECRET} && echo secret-ok
  cat hello.txt
  echo "who=$(id -un) pid=$$"
  sleep 300
""")
        p = person.skyctl(d, "launch", "-c", cluster, "-d", str(task))
        assert p.returncode == 0, p.stdout + p.stderr
    logs = {c: _job_log(d, person, c, "pid=") for person, c in ((alice, "ac"), (bob, "bc"))}
    for person, cluster in ((alice, "ac"), (bob, "bc")):
        assert "secret-ok" in logs[cluster] and f"from-{person.name}" in logs[cluster]
        assert f"who={person.name} " in logs[cluster]
    alice_pid = int(re.search(r"pid=(\d+)", logs["ac"]).group(1))
    [ac] = [c for c in d.call(protocol.ClusterStatus(all_users=True)) if c.name == "ac"]
    host = next(h for h in d.hosts if h.ip == ac.nodes[0].ip)
    assert (ac.nodes[0].user, ac.nodes[0].login_uid) == (alice.name, alice.uid)

    # No secret in any file on the nodes once the jobs have started.
    for person in people:
        node_files = Path(person.home) / ".skyd"
        assert not list(node_files.rglob("env.sh"))
        assert not _files_holding(node_files, SECRET)

    # bob, logged in on alice's host as himself, reads none of her files nor signals her job.
    jobdir = f"{alice.home}/.skyd/ac/node-0/jobs/1"
    ssh = (f"ssh -p {host.port} -o BatchMode=yes -o StrictHostKeyChecking=no "
           f"-o UserKnownHostsFile=/dev/null -- {{login}}@{host.ip} ")
    r = bob.sh(ssh.format(login=bob.name) + f"'id -un; cat {jobdir}/run.log; cat {jobdir}/run.sh; "
               f"ls {alice.home}/.skyd; kill -TERM {alice_pid}; echo end'")
    assert r.stdout.split()[0] == bob.name and r.stdout.split()[-1] == "end", r.stderr
    assert SECRET not in r.stdout and "who=" not in r.stdout
    assert r.stderr.count("Permission denied") >= 3 and "Operation not permitted" in r.stderr
    r = bob.sh(ssh.format(login=alice.name) + "true")          # nor log in as her
    assert r.returncode == 255 and "Permission denied" in r.stderr
    assert Path(f"/proc/{alice_pid}").exists()
    assert os.stat(f"/proc/{alice_pid}").st_uid == alice.uid

    # The daemon's own ssh ran as the owners: none as root for this pool.
    control = d.state_dir / "ssh"
    assert not os.listdir(control / "daemon")
    assert os.stat(control / str(alice.uid)).st_uid == alice.uid

    # infra: probed as the asker, with their own login; no shared-login warning.
    p = alice.skyctl(d, "infra")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shared login" not in p.stdout and alice.name in p.stdout
    hosts = json.loads(bob.skyctl(d, "infra", "--json").stdout)
    assert {(h["user"], h["reachable"]) for h in hosts} == {(bob.name, True)}
    assert {h.get("cluster") for h in hosts} == {"bc", "(in use)"}

    # The owner cancels (the daemon signals as them) and tears down (as them).
    assert alice.skyctl(d, "cancel", "ac", "1").returncode == 0
    assert wait_until(lambda: not Path(f"/proc/{alice_pid}").exists(), 20)
    assert alice.skyctl(d, "down", "ac").returncode == 0
    assert not Path(f"{alice.home}/.skyd/ac").exists()
    assert bob.skyctl(d, "down", "bc").returncode == 0
    assert not os.listdir(control / "daemon")
