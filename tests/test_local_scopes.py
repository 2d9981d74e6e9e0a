"""Local jobs in systemd scopes (skyd/infra/local/scopes.py). systemd is not PID 1 here,
so no real scope can be made: a stand-in `systemd-run` in the test's directory records
its argv and then does what the real one does once systemd made the scope (gid, then
uid, then exec of the command after `--`, in place), and the detection is pointed at a
directory of the test's standing for /run/systemd/system (scopes.detect takes both as
arguments: no test-only knob in the daemon). The runners, their scripts, the privilege
drop and the outcome are the real ones: LocalRunner, as the daemon uses it.

Asserted: each node's runner went through `systemd-run --scope` with the slice and a unit
of its own, the job ran (as its owner, with its owner's groups and none of root's), its
outcome was recorded, the pid the daemon tracks is the runner's own (systemd-run execs
in place), cancelling reaches it; without systemd nothing goes through systemd-run; a
node the device fence takes gets no scope; the daemon says at its start which applies."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import sys
import time
from pathlib import Path

import msgspec
import pytest

from conftest import wait_until
from skyd.infra.base import JobHandle, Outcome
from skyd.infra.local import LocalProvisioner, LocalRunner, control_dir, devicefence, scopes
from skyd.infra.local.processes import process_start
from skyd.protocol import ClusterRecord, ClusterState, NodeInfo

STAND_IN = '''#!{python}
# A stand-in for `systemd-run --scope` (systemd is not PID 1 here): records its argv, then
# does what the real one does once systemd made the scope: gid, then uid (the supplementary
# groups it leaves as they are), then execs the command after `--` in place.
import json, os, pwd, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("systemd 255 (255.4-1ubuntu8)")
    sys.exit(0)
with open({record!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
cut = args.index("--")
opts = dict(a[2:].split("=", 1) for a in args[:cut] if a.startswith("--") and "=" in a)
env = dict(os.environ)
if "gid" in opts:
    gid = int(opts["gid"])
    os.setresgid(gid, gid, gid)
if "uid" in opts:
    pw = pwd.getpwnam(opts["uid"])
    env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
os.execvpe(args[cut + 1], args[cut + 1:], env)
'''

SHOW = ('echo "node=$NODE uid=$(id -u) gid=$(id -g) groups=$(id -G) user=$USER"; '
        'grep devices /proc/self/cgroup || true')


class Host:
    """The test's stand-ins: `bin` holds systemd-run, `booted` stands for
    /run/systemd/system, `record` gets one JSON argv per systemd-run call."""

    def __init__(self, workdir: Path) -> None:
        self.bin = workdir / "bin"
        self.bin.mkdir()
        self.booted = workdir / "run-systemd-system"
        self.booted.mkdir()
        self.record = workdir / "systemd-run.argv"
        stand_in = self.bin / "systemd-run"
        stand_in.write_text(STAND_IN.format(python=sys.executable, record=str(self.record)))
        stand_in.chmod(0o755)
        self.state = workdir / "state"

    def calls(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def host(workdir) -> Host:
    if os.geteuid() != 0:
        pytest.skip("a system scope (and so this path) needs a root daemon")
    os.chmod(workdir, 0o755)        # mkdtemp made it 0700: the owners reach their nodes
    return Host(workdir)


def prepared(host: Host, cluster: str, job_id: int, run: str, num_nodes: int, uid: int,
             gid: int, gpus: dict[int, list[int] | None] | None = None
             ) -> tuple[JobHandle, list[NodeInfo]]:
    """A local cluster of `num_nodes` owned by `uid` and a job's files on it, as the
    worker leaves them; with the control directories the daemon gives each node."""
    from skyd.infra.local import prepare_cluster_dir
    rec = ClusterRecord(name=cluster, status=ClusterState.UP, infra="local",
                        num_nodes=num_nodes, user=pwd.getpwuid(uid).pw_name, uid=uid,
                        launched_at=time.time())
    top = prepare_cluster_dir(host.state, rec, uid, gid)
    prov = LocalProvisioner()
    nodes = prov.provision(str(host.state), rec)
    handle = prov.prepare_job(nodes, job_id, run, lambda n: {"NODE": str(n.rank)})
    for d, _, files in os.walk(top):      # the worker made them as the owner
        for p in [d, *(os.path.join(d, f) for f in files)]:
            os.chown(p, uid, gid)
    gpus = gpus or {}
    return JobHandle(nodes=[
        msgspec.structs.replace(np, ctl=control_dir(host.state, cluster, job_id, np.rank),
                                gpus=gpus.get(np.rank)) for np in handle.nodes]), nodes


def run_job(runner: LocalRunner, handle: JobHandle, nodes: list[NodeInfo], uid: int,
            gid: int) -> tuple[JobHandle, Outcome]:
    async def go() -> tuple[JobHandle, Outcome]:
        started = await runner.spawn(handle, nodes, uid, gid)
        return started, await asyncio.wait_for(runner.wait_outcome(started, nodes), 60)
    return asyncio.run(go())


def log_of(np) -> str:
    return Path(np.ctl, "run.log").read_text()


def runner_pid(np) -> int:
    """The pid the runner wrote itself ($$, in the node's job directory)."""
    return int(Path(np.jobdir, "started", "pid").read_text())


def assert_scope_call(argv: list[str], cluster: str, job_id: int) -> int:
    """One systemd-run call for a node of this job: its rank."""
    cut = argv.index("--")
    options, command = argv[:cut], argv[cut + 1:]
    assert "--scope" in options and "--collect" in options, argv
    assert f"--slice={scopes.SLICE}" in options, argv
    assert "--expand-environment=no" in options, argv      # the stand-in says systemd 255
    [unit] = [o for o in options if o.startswith("--unit=")]
    m = re.fullmatch(rf"--unit=skyd-job-{cluster}-{job_id}-(\d+)-[0-9a-f]{{6}}\.scope", unit)
    assert m, unit
    assert command[:4] == ["nice", "-n", "10", "bash"] and "skyd-runner" in command, command
    return int(m.group(1))


def test_each_node_runs_in_a_scope_of_its_own_as_its_owner(host):
    import users
    pw = users.ensure_user(users.NAMES[0])
    found = scopes.detect(host.booted, str(host.bin))
    assert found is not None and found.version == 255
    assert found.systemd_run == str(host.bin / "systemd-run")
    handle, nodes = prepared(host, "team-a", 7, SHOW, 2, pw.pw_uid, pw.pw_gid)
    started, outcome = run_job(LocalRunner(1.0, scopes=found), handle, nodes, pw.pw_uid,
                               pw.pw_gid)

    assert outcome == Outcome("SUCCEEDED", 0), [log_of(np) for np in started.nodes]
    calls = host.calls()
    assert sorted(assert_scope_call(argv, "team-a", 7) for argv in calls) == [0, 1]
    units = {o for argv in calls for o in argv if o.startswith("--unit=")}
    assert len(units) == 2, units                   # a unit per node
    for argv in calls:      # systemd-run switches to the owner; root makes the scope
        assert f"--uid={pw.pw_name}" in argv and f"--gid={pw.pw_gid}" in argv, argv
    groups = sorted(os.getgrouplist(pw.pw_name, pw.pw_gid))
    for np in started.nodes:
        text = log_of(np)
        m = re.search(r"node=(\d+) uid=(\d+) gid=(\d+) groups=([\d ]+) user=(\S+)", text)
        assert m, text
        assert int(m.group(1)) == np.rank
        assert (int(m.group(2)), int(m.group(3)), m.group(5)) == (pw.pw_uid, pw.pw_gid,
                                                                  pw.pw_name), text
        # The owner's groups, set before systemd-run: none of root's is left.
        assert sorted(map(int, m.group(4).split())) == groups, text
        assert 0 not in map(int, m.group(4).split()), text
        # The daemon tracks the runner itself: systemd-run, then nice, exec'd in place.
        assert np.pid == runner_pid(np) and np.start > 0
        assert Path(np.ctl, "exit_code").read_text().strip() == "0"


def test_cancel_reaches_the_runner_in_its_scope(host):
    found = scopes.detect(host.booted, str(host.bin))
    handle, nodes = prepared(host, "team-b", 3, "echo up; sleep 60", 1, 0, 0)
    runner = LocalRunner(1.0, scopes=found)

    async def go() -> tuple[JobHandle, Outcome]:
        started = await runner.spawn(handle, nodes, 0, 0)
        [np] = started.nodes
        assert await asyncio.to_thread(wait_until, lambda: "up" in log_of(np), 20)
        # The pid and start time the daemon keeps are the live runner's.
        assert process_start(np.pid) == np.start
        assert b"skyd-runner" in Path(f"/proc/{np.pid}/cmdline").read_bytes()
        await runner.cancel(started, nodes)
        return started, await asyncio.wait_for(runner.wait_outcome(started, nodes), 30)

    started, outcome = asyncio.run(go())
    assert outcome.status == "CANCELLED", outcome
    [argv] = host.calls()
    assert assert_scope_call(argv, "team-b", 3) == 0
    assert not any(o.startswith("--uid=") for o in argv), argv   # root's job: no switch


def test_without_systemd_nothing_goes_through_systemd_run(host, workdir):
    # Not PID 1 (no such directory), or no systemd-run on PATH: no scopes.
    assert scopes.detect(workdir / "absent", str(host.bin)) is None
    assert scopes.detect(host.booted, str(workdir / "empty")) is None
    handle, nodes = prepared(host, "team-c", 1, SHOW, 1, 0, 0)
    started, outcome = run_job(LocalRunner(1.0, scopes=None), handle, nodes, 0, 0)
    assert outcome == Outcome("SUCCEEDED", 0), log_of(started.nodes[0])
    assert host.calls() == []                        # the runner's argv as it always was
    [np] = started.nodes
    assert np.pid == runner_pid(np) and "node=0 uid=0" in log_of(np)


def test_a_node_the_device_fence_takes_gets_no_scope(host):
    fence = devicefence.detect()
    if fence is None:
        pytest.skip("no usable cgroup v1 devices controller here (or not root)")
    found = scopes.detect(host.booted, str(host.bin))
    # Rank 0 holds GPU 0 of a host with GPUs (fenced); rank 1's host has none (a scope).
    handle, nodes = prepared(host, "team-d", 2, SHOW, 2, 0, 0, gpus={0: [0], 1: None})
    started, outcome = run_job(LocalRunner(1.0, scopes=found), handle, nodes, 0, 0)
    assert outcome == Outcome("SUCCEEDED", 0), [log_of(np) for np in started.nodes]
    [argv] = host.calls()
    assert assert_scope_call(argv, "team-d", 2) == 1
    fenced, scoped = started.nodes
    assert "/skyd/" in log_of(fenced) and "/skyd/" not in log_of(scoped), \
        (log_of(fenced), log_of(scoped))


def test_the_daemon_says_at_its_start_which_applies(make_daemon):
    d = make_daemon()
    expected = ("local jobs run in the daemon's own cgroup: " if not scopes.BOOTED.is_dir()
                or shutil.which("systemd-run") is None else "local jobs run each node in a scope")
    assert wait_until(lambda: expected in d.log(), 10), d.log()
