"""The `slurm` infra through a login node reached over ssh (`slurm.login`): a real sshd on
loopback (tests/sshd.py) in front of the real Slurm cluster (tests/slurm.py) — the "login
node" is this host, reached over ssh — and a real person (alice) logging in as herself
with her own key. Every Slurm command skyd runs for her, the worker's and the daemon's
alike, must come through her ssh session: the commands here log who ran them and from
which ssh connection."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from conftest import processes_mentioning, wait_until, write_task
from slurm import COMMANDS, slurm_cluster  # noqa: F401 - the fixture
from sshd import SshHosts, start_or_skip
from skyd import protocol
from test_slurm import TASK, _forget_files, allocation_state, cluster, slurm_config, steps

LOGIN_IP = 13                        # the login node: 127.0.0.13


def _own_key(person) -> None:
    """`person` gets a key of their own, authorized for their own login only."""
    r = person.sh("set -e; umask 077; mkdir -p ~/.ssh; "
                  "[ -f ~/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
                  "k=$(cat ~/.ssh/id_ed25519.pub); touch ~/.ssh/authorized_keys; "
                  "grep -qxF \"$k\" ~/.ssh/authorized_keys || echo \"$k\" >> ~/.ssh/authorized_keys")
    assert r.returncode == 0, r.stderr


def _telling_bin(directory: Path) -> tuple[Path, Path]:
    """A bin_dir of Slurm's commands that each log `COMMAND USER SSH_CLIENT_IP` (`-` for
    none: not run through ssh) before running the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    log.touch()
    os.chmod(log, 0o666)
    os.chmod(directory, 0o755)
    for cmd in COMMANDS:
        wrapper = directory / cmd
        wrapper.write_text(f'#!/bin/bash\necho "{cmd} $(id -un) ${{SSH_CONNECTION%% *}}-" >> {log}\n'
                           f'exec {shutil.which(cmd)} "$@"\n')
        os.chmod(wrapper, 0o755)
    return directory, log


@pytest.fixture
def login_node(people):
    """A login node (sshd on 127.0.0.13) where each person logs in as themselves with
    their own key; the test login (hosts.user) with the test key."""
    for person in people:
        _own_key(person)
    base = Path(tempfile.mkdtemp(prefix="skyd-ssh-", dir="/tmp"))
    hosts = SshHosts(base, count=1, first_ip=LOGIN_IP, logins=tuple(p.name for p in people))
    try:
        start_or_skip(hosts)
        yield hosts
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_login_daemon(make_daemon, workdir, login_node, slurm_cluster):  # noqa: F811
    """A root daemon open to alice and bob whose Slurm commands run on the login node."""
    import users
    made: list[str] = []

    def make(**settings):
        os.chmod(workdir, 0o755)
        bin_dir, calls = _telling_bin(workdir / "bin")
        h = login_node[0]
        config, files_dir = slurm_config(workdir, slurm_cluster, login=f"{h.ip}:{h.port}",
                                         bin_dir=str(bin_dir), **settings)
        made.append(files_dir)
        d = make_daemon("--socket-group", users.GROUP, "--config", str(config),
                        "--ssh-known-hosts", str(login_node.known_hosts))
        d.slurm, d.calls, d.files_dir = slurm_cluster, calls, files_dir
        return d
    try:
        yield make
    finally:
        slurm_cluster.cancel_all()
        for files_dir in made:
            _forget_files(files_dir)


@pytest.fixture
def login(make_login_daemon):
    return make_login_daemon()


def test_launch_exec_cancel_down_through_the_login_node_as_the_user(login, people, workdir):
    d, (alice, _bob) = login, people
    assert alice.sh("rm -rf ~/wd && mkdir ~/wd && echo from-workdir > ~/wd/data.txt"
                    ).returncode == 0
    task = write_task(workdir, "t.yaml", TASK + f"""
workdir: {alice.home}/wd
envs:
  GREETING: hi
setup: echo "setup as $(id -un) via ${{SSH_CONNECTION%% *}}"
run: |
  echo "$GREETING as $(id -un) via ${{SSH_CONNECTION%% *}} rank=$SKYPILOT_NODE_RANK in $PWD"
  cat data.txt
""")
    os.chmod(task, 0o644)
    p = alice.skyctl(d, "launch", "-c", "lc", str(task), "-y")
    assert p.returncode == 0, p.stderr + p.stdout
    # setup and the job ran under srun started in alice's ssh session on the login node
    assert f"setup as {alice.name} via 127.0.0.1" in p.stdout, p.stdout
    assert f"hi as {alice.name} via 127.0.0.1 rank=0" in p.stdout
    assert "from-workdir" in p.stdout
    c = cluster(d, "lc")
    alloc = c.nodes[0].allocation
    # Slurm sees alice: the allocation is hers
    [job] = [j for j in d.slurm.jobs() if j["id"] == alloc]
    assert (job["name"], job["user"], job["state"]) == ("skyd-lc", alice.name, "RUNNING")
    assert c.status == "UP"

    e = alice.skyctl(d, "exec", "lc", "echo exec-step $SLURM_JOB_NAME; exit 7")
    assert "exec-step skyd-job-2" in e.stdout, e.stdout + e.stderr
    assert d.wait_job("lc", 2).exit_code == 7
    assert "exec-step skyd-job-2" in alice.skyctl(d, "logs", "lc", "2", "--no-follow").stdout

    # cancel: the ssh of the job's step goes, and with it the step on the node
    rid = alice.skyctl(d, "exec", "lc", "--async", "sleep 300").stdout.strip()
    d.wait_request(rid)
    assert wait_until(lambda: steps(d.slurm, alloc) == ["skyd-job-3"], 15)
    assert alice.skyctl(d, "cancel", "lc", "3", "-y").returncode == 0
    assert d.wait_job("lc", 3).status == "CANCELLED"
    assert wait_until(lambda: steps(d.slurm, alloc) == [], 15), steps(d.slurm, alloc)
    assert allocation_state(d.slurm, alloc) == "RUNNING"

    files = Path(alice.home) / d.files_dir / "lc"
    assert (files / "sky_workdir" / "data.txt").exists()
    p = alice.skyctl(d, "down", "lc", "-y")
    assert p.returncode == 0, p.stderr
    assert wait_until(lambda: allocation_state(d.slurm, alloc) == "CANCELLED", 15)
    assert not files.exists()

    # Every Slurm command skyd ran — the worker's and the daemon's watch — ran as alice,
    # in an ssh session (from the loopback client) on the login node.
    calls = [line.split() for line in d.calls.read_text().splitlines()]
    assert {cmd for cmd, _, _ in calls} >= {"sbatch", "srun", "squeue", "scancel"}
    assert [c for c in calls if c[1:] != [alice.name, "127.0.0.1-"]] == [], calls


def test_the_watch_runs_as_each_owner_and_sees_an_allocation_ended_outside(login, people, workdir):
    d, (alice, _bob) = login, people
    task = write_task(workdir, "t.yaml", TASK + "run: echo up\n")
    os.chmod(task, 0o644)
    assert alice.skyctl(d, "launch", "-c", "w1", str(task), "-y").returncode == 0
    alloc = cluster(d, "w1").nodes[0].allocation
    d.slurm.run(["scancel", alloc])
    assert wait_until(lambda: cluster(d, "w1").status == "STOPPED", 20), cluster(d, "w1")
    assert "its allocation ended" in cluster(d, "w1").status_reason
    assert alice.skyctl(d, "down", "w1", "-y").returncode == 0


def test_with_watch_user_the_daemon_watches_as_its_own_login(make_login_daemon, login_node,
                                                             people, workdir):
    """slurm.watch_user: the daemon's squeue logs in as that login with its own key; the
    user's work still runs as the user."""
    d = make_login_daemon(watch_user=login_node.user,
                          watch_identity_file=str(login_node.identity_file))
    alice = people[0]
    task = write_task(workdir, "t.yaml", TASK + "run: echo up\n")
    os.chmod(task, 0o644)
    assert alice.skyctl(d, "launch", "-c", "wu", str(task), "-y").returncode == 0
    alloc = cluster(d, "wu").nodes[0].allocation
    d.slurm.run(["scancel", alloc])
    assert wait_until(lambda: cluster(d, "wu").status == "STOPPED", 20), cluster(d, "wu")
    calls = [line.split() for line in d.calls.read_text().splitlines()]
    by_daemon = [c for c in calls if c[1] == login_node.user]
    assert by_daemon and {c[0] for c in by_daemon} == {"squeue"}
    assert all(c[2] == "127.0.0.1-" for c in calls)
    assert {c[1] for c in calls} == {login_node.user, alice.name}
    assert alice.skyctl(d, "down", "wu", "-y").returncode == 0


def test_the_login_settings_are_checked():
    from skyd.infra.slurm import SettingsError, parse_settings
    s = parse_settings({"login": "login1:2222", "identity_file": "~/.ssh/slurm"})
    assert (s.login_host, s.identity_file) == (("login1", 2222), "~/.ssh/slurm")
    assert parse_settings({"login": "[::1]:22"}).login_host == ("::1", 22)
    for bad, needle in (({"login": "-oProxyCommand=x"}, "slurm.login"),
                        ({"login": "h:notaport"}, "slurm.login"),
                        ({"login": "h", "identity_file": "rel/key"}, "slurm.identity_file"),
                        ({"login": "h", "watch_user": "-x"}, "slurm.watch_user"),
                        ({"watch_user": "skyd"}, "set slurm.login too")):
        with pytest.raises(SettingsError, match=needle):
            parse_settings(bad)


def test_an_unreachable_login_node_is_a_clear_error(make_daemon, workdir, people, slurm_cluster):  # noqa: F811
    import users
    alice = people[0]
    os.chmod(workdir, 0o755)
    # Nothing listens there.
    config, files_dir = slurm_config(workdir, slurm_cluster, login="127.0.0.14:9")
    d = make_daemon("--socket-group", users.GROUP, "--config", str(config))
    try:
        task = write_task(workdir, "t.yaml", TASK + "run: echo never\n")
        os.chmod(task, 0o644)
        started = time.monotonic()
        p = alice.skyctl(d, "launch", "-c", "u1", str(task), "-y")
        assert p.returncode != 0
        out = p.stdout + p.stderr
        assert f"cannot reach Slurm's login node {alice.name}@127.0.0.14:9" in out, out
        assert "Connection refused" in out
        assert time.monotonic() - started < 30         # at once: not waited on like Slurm
        assert not [j for j in slurm_cluster.jobs() if j["name"] == "skyd-u1"]
    finally:
        _forget_files(files_dir)


def test_a_cancelled_setup_ends_with_its_ssh_session(login, people, workdir):
    """A launch cancelled during its setup: the setup's srun, started in alice's ssh session
    on the login node, ends with that session (its end is the login node's sign; a quiet
    setup would not notice a closed channel), and the step with it."""
    d, alice = login, people[0]
    mark = "sleep 30171"
    task = write_task(workdir, "s.yaml", TASK + f"setup: {mark}\nrun: echo ran\n")
    os.chmod(task, 0o644)
    rid = alice.skyctl(d, "launch", "-c", "ls", str(task), "-y", "--async").stdout.strip()

    def setup_step() -> bool:
        found = [c for c in d.call(protocol.ClusterStatus(all_users=True)) if c.name == "ls"]
        return bool(found and found[0].nodes
                    and steps(d.slurm, found[0].nodes[0].allocation) == ["skyd-setup"])
    assert wait_until(setup_step, 60), d.log()[-2000:]
    alloc = cluster(d, "ls").nodes[0].allocation
    assert alice.skyctl(d, "api", "cancel", rid).returncode == 0
    assert d.wait_request(rid).status is protocol.Status.CANCELLED
    assert wait_until(lambda: steps(d.slurm, alloc) == [], 20), steps(d.slurm, alloc)
    assert wait_until(lambda: not processes_mentioning(mark), 10)


def test_a_job_through_the_login_node_rides_out_a_kill_9_of_the_daemon(login, people, workdir):
    """The daemon killed with -9 while alice's job runs through the login node: its ssh
    masters and its watch's session go with it, the job's step goes on; the next daemon
    watches it again through her session, and it ran once, to its end."""
    d, alice = login, people[0]
    ran = Path(alice.home) / "ran-once"
    ran.unlink(missing_ok=True)
    task = write_task(workdir, "r.yaml", TASK + f"run: echo x >> {ran}; sleep 6; echo done\n")
    os.chmod(task, 0o644)
    rid = alice.skyctl(d, "launch", "-c", "lr", str(task), "-y", "--async").stdout.strip()
    assert d.wait_request(rid, 90).status is protocol.Status.SUCCEEDED
    alloc = cluster(d, "lr").nodes[0].allocation
    assert wait_until(lambda: steps(d.slurm, alloc) == ["skyd-job-1"], 30), steps(d.slurm, alloc)
    d.stop(signal.SIGKILL)
    d.start()
    assert d.wait_job("lr", 1, timeout=60).status == "SUCCEEDED"
    assert "done" in alice.skyctl(d, "logs", "lr", "1", "--no-follow").stdout
    assert ran.read_text().count("x") == 1
    assert alice.skyctl(d, "down", "lr", "-y").returncode == 0
    assert wait_until(lambda: allocation_state(d.slurm, alloc) == "CANCELLED", 15)
