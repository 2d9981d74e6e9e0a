"""No orphans: after any stop — SIGTERM, kill -9 of the daemon, kill -9 of its forkserver or
of a busy worker — no process the daemon started outlives what it should. Jobs on clusters
are meant to survive the daemon (their runners are detached); workers, the setups they run,
the forkserver and the resource tracker, ssh masters and followers are not. The next start
is clean. Processes are compared by (pid, start time) from snapshots taken while the daemon
was busy (profiling/soak/procs.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

from conftest import processes_mentioning, wait_until
from profiling.soak import procs
from sshd import SshHosts, ssh_hosts, start_or_skip  # noqa: F401 - the fixture
from skyd import protocol
from skyd.taskspec import Resources, Task

def _busy(d, workdir: Path) -> tuple[str, int]:
    """A cluster job running, a launch in its setup (a busy worker with a child), a managed
    job running. (The launch's id, the managed job's.)"""
    started = workdir / "setup-started"
    d.submit_async(protocol.Launch(task=Task(run="sleep 300"), cluster="keep"))
    rid = d.submit_async(protocol.Launch(task=Task(setup=f"touch {started}; sleep 301", run="true"),
                                         cluster="busy"))
    job = d.frames(protocol.JobsLaunch(task=Task(run="sleep 302")), wait=False)[-1].job_id
    assert wait_until(started.exists, 20)
    assert wait_until(lambda: _job_status(d, "keep", 1) == "RUNNING", 20)
    assert wait_until(lambda: _managed(d, job).status == "RUNNING", 30)
    return rid, job


def _job_status(d, cluster: str, job_id: int) -> str | None:
    jobs = {j.job_id: j.status for j in d.call(protocol.JobQueue(cluster=cluster))}
    return jobs.get(job_id)


def _managed(d, job_id: int) -> protocol.ManagedJobRecord:
    return {j.job_id: j for j in d.call(protocol.JobsQueue(all_users=True))}[job_id]


def _snapshot(d) -> dict[int, procs.Proc]:
    snap = procs.started_by(d.proc.pid, d.state_dir)
    cmds = " | ".join(p.cmd for p in snap.values())
    assert "multiprocessing.forkserver" in cmds and "resource_tracker" in cmds, cmds
    assert "sleep 301" in cmds, cmds                                  # the launch's setup
    assert _jobs_of(snap) == {"keep", "managed"}, cmds
    return snap


def _jobs_of(snap: dict[int, procs.Proc]) -> set[str]:
    """The clusters whose job runners are alive in `snap` (managed-N as `managed`)."""
    names = set()
    for p in procs.survivors(snap, procs.JOB):
        m = re.search(r"/clusters/([a-z0-9-]+)/node-0/jobs/", p.cmd)
        if m:
            names.add("managed" if m.group(1).startswith("managed-") else m.group(1))
    return names


def _worker_of(d, rid: str) -> int:
    log = (d.state_dir / "logs" / "requests" / f"{rid}.log").read_text()
    return int(re.findall(r"running launch in worker process (\d+)", log)[-1])


def _clean_end(d, job: int, snap: dict[int, procs.Proc]) -> None:
    """The jobs that survived are the daemon's again; cancelled, nothing is left at all."""
    assert _job_status(d, "keep", 1) == "RUNNING"
    d.call(protocol.CancelJobs(cluster="keep", all=True))
    d.call(protocol.JobsCancel(all=True))
    d.call(protocol.ApiCancel(all=True))
    assert wait_until(lambda: _job_status(d, "keep", 1) == "CANCELLED", 20)
    assert wait_until(lambda: _managed(d, job).status == "CANCELLED"
                      and not _managed(d, job).teardown_pending, 30)
    d.stop(signal.SIGTERM)
    left = procs.wait_gone(snap, 10, kind=None)
    assert left == [], procs.describe(left)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_stopping_the_daemon_leaves_only_its_jobs(make_daemon, workdir, how):
    d = make_daemon()
    rid, job = _busy(d, workdir)
    snap = _snapshot(d)
    if how == "sigterm":
        assert d.stop(signal.SIGTERM) == 0
    else:
        d.kill9()
    left = procs.wait_gone(snap, 10)
    assert left == [], procs.describe(left)
    assert _jobs_of(snap) == {"keep", "managed"}, procs.describe(procs.survivors(snap, procs.JOB))
    seen = len(d.log())
    d.start()
    started = d.log()[seen:]                   # the next start is clean: no error, nothing to kill
    assert "Traceback" not in started and " ERROR " not in started, started
    assert not re.search(r"killed \d+ process", started), started
    _clean_end(d, job, {**snap, **procs.started_by(d.proc.pid, d.state_dir)})


@pytest.mark.timeout(60)
def test_kill9_of_a_busy_worker_takes_its_setup_and_nothing_else(make_daemon, workdir):
    d = make_daemon()
    rid, job = _busy(d, workdir)
    snap = _snapshot(d)
    worker = _worker_of(d, rid)
    group = [p for p in snap.values() if p.pid == worker or "sleep 301" in p.cmd]
    assert len(group) >= 2, procs.describe(list(snap.values()))
    procs.kill([p for p in group if p.pid == worker])
    rec = d.wait_request(rid, 15)
    assert rec.status is protocol.Status.FAILED and "worker process died" in (rec.error or ""), rec
    left = procs.wait_gone({p.pid: p for p in group}, 10)
    assert left == [], procs.describe(left)
    # everything else goes on: the jobs, and the next long request
    assert _jobs_of(snap) == {"keep", "managed"}
    d.skyctl("launch", "-c", "next", "echo next", check=True, timeout=60)
    _clean_end(d, job, {**snap, **procs.started_by(d.proc.pid, d.state_dir)})


@pytest.mark.timeout(60)
def test_kill9_of_the_forkserver_leaves_nothing_behind(make_daemon, workdir):
    """Its workers go with it (the busy one's setup too); the daemon goes on and, stopped,
    leaves nothing of either forkserver's tree."""
    d = make_daemon()
    rid, job = _busy(d, workdir)
    snap = _snapshot(d)
    forkserver = [p for p in snap.values() if "multiprocessing.forkserver" in p.cmd
                  and p.ppid == d.proc.pid]
    assert len(forkserver) == 1, procs.describe(list(snap.values()))
    procs.kill(forkserver)
    assert d.wait_request(rid, 15).status is protocol.Status.FAILED
    setup = [p for p in snap.values() if "sleep 301" in p.cmd]
    assert procs.wait_gone({p.pid: p for p in setup}, 10) == []
    assert d.proc.poll() is None and d.call(protocol.ApiInfo()).pid == d.proc.pid
    _clean_end(d, job, {**snap, **procs.started_by(d.proc.pid, d.state_dir)})


# ---- ssh: masters and the commands through them -------------------------------------------

@pytest.fixture
def ssh_daemon(make_daemon, ssh_hosts, workdir):  # noqa: F811
    pools = workdir / "pools.yaml"
    pools.write_text(ssh_hosts.pool_yaml("p", hosts=ssh_hosts.hosts[:1]))
    return make_daemon("--node-pools", str(pools), "--ssh-known-hosts", str(ssh_hosts.known_hosts))


@pytest.fixture
def own_ssh_daemon(make_daemon, workdir, people):
    """A root daemon with pool `own` (no shared login) on one sshd host where alice logs in
    as herself with her own key: her ssh masters run as alice, not as root."""
    import users
    alice = people[0]
    r = alice.sh("set -e; umask 077; mkdir -p ~/.ssh; "
                 "[ -f ~/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
                 "k=$(cat ~/.ssh/id_ed25519.pub); touch ~/.ssh/authorized_keys; "
                 "grep -qxF \"$k\" ~/.ssh/authorized_keys || echo \"$k\" >> ~/.ssh/authorized_keys")
    assert r.returncode == 0, r.stderr
    base = Path(tempfile.mkdtemp(prefix="skyd-ssh-", dir="/tmp"))
    hosts = SshHosts(base, count=1, first_ip=9, logins=(alice.name,))
    try:
        start_or_skip(hosts)
        os.chmod(workdir, 0o755)
        pools = workdir / "pools.yaml"
        pools.write_text(hosts.pool_yaml("own", shared_login=False))
        yield make_daemon("--socket-group", users.GROUP, "--node-pools", str(pools),
                          "--ssh-known-hosts", str(hosts.known_hosts))
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


def _remote_job() -> list[psutil.Process]:
    """The job's `sleep 303` (the sshd hosts share this machine's processes)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] == ["sleep", "303"]:
            found.append(p)
    return found


def _masters_end_and_the_job_goes_on(d, how: str, snap: dict[int, procs.Proc],
                                     owner: int) -> None:
    masters = [p for p in snap.values() if p.cmd.endswith("[mux]")]
    assert masters, procs.describe(list(snap.values()))
    assert {psutil.Process(p.pid).uids().real for p in masters} == {owner}
    [job] = _remote_job()
    if how == "sigterm":
        d.stop(signal.SIGTERM)
    else:
        d.kill9()
        d.start()
    left = procs.wait_gone(snap, 4)
    try:
        assert left == [], procs.describe(left)
        assert job.is_running(), "the job died with the ssh masters"
    finally:
        procs.kill(left)
    if how == "sigterm":
        d.start()
    else:
        assert re.search(r"closed [1-9]\d* ssh masters left by the previous run", d.log())
    assert "Traceback" not in d.log() and "did not answer" not in d.log()   # each asked to exit


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_ssh_masters_do_not_outlive_the_daemon(ssh_daemon, how):
    """Stopped, the daemon closes its ssh masters (and its workers'); killed, the next start
    finds and ends them before anything else, as it does with a crashed run's workers. The
    commands through them (job watchers, log tails) end with them; the job goes on."""
    d = ssh_daemon
    task = Task(run="echo started; sleep 303", resources=Resources(infra="ssh/p"))
    rid = d.submit_async(protocol.Launch(task=task, cluster="remote"))
    assert d.wait_request(rid, 60).status is protocol.Status.SUCCEEDED
    assert wait_until(lambda: _job_status(d, "remote", 1) == "RUNNING", 20)
    follower = d.connect(timeout=30)          # a client following the job's output
    frames = follower.submit(protocol.JobLogs(cluster="remote", job_id=1, follow=True))
    assert isinstance(next(frames), protocol.Chunk)
    try:
        _masters_end_and_the_job_goes_on(d, how, procs.started_by(d.proc.pid, d.state_dir), 0)
    finally:
        follower.close()
    assert _job_status(d, "remote", 1) == "RUNNING"
    d.call(protocol.CancelJobs(cluster="remote", all=True))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_ssh_masters_run_as_the_cluster_owner_do_not_outlive_the_daemon(own_ssh_daemon, people,
                                                                        how):
    """On a per-user pool the masters (the worker's and the daemon's, both as the owner) run
    as the cluster's owner; they are closed all the same."""
    d, alice = own_ssh_daemon, people[0]
    p = alice.skyctl(d, "launch", "-c", "mine", "-d", "--infra", "ssh/own", "echo started; sleep 303")
    assert p.returncode == 0, p.stdout + p.stderr
    follower = alice.popen(d, "logs", "mine", "1")     # the daemon tails it as alice
    try:
        assert follower.stdout is not None and "started" in follower.stdout.readline()
        _masters_end_and_the_job_goes_on(d, how, procs.started_by(d.proc.pid, d.state_dir),
                                         alice.uid)
    finally:
        follower.kill()
        follower.wait()
    p = alice.skyctl(d, "cancel", "mine", "1")
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("frozen", [False, True])
def test_a_cancelled_setup_ends_on_the_ssh_host_that_runs_it(ssh_daemon, frozen):
    """A launch cancelled while its setup runs on an ssh host that still answers: the
    setup's processes there end with it, also a setup that is stopped (SIGSTOP: no hang-up
    or broken pipe reaches it), and the cluster takes the next launch."""
    d = ssh_daemon
    mark = f"sleep 30{os.getpid() % 1000}{int(frozen)}"
    setup = f"echo started; {'kill -STOP $$; ' if frozen else ''}{mark}; echo never"
    task = Task(setup=setup, run="true", resources=Resources(infra="ssh/p"))
    rid = d.submit_async(protocol.Launch(task=task, cluster="cut"))
    # The ssh hosts share this machine's processes.
    assert wait_until(lambda: processes_mentioning(mark), 60), "the setup did not start on the host"
    try:
        d.call(protocol.ApiCancel(request_ids=[rid]))
        assert d.wait_request(rid, 30).status is protocol.Status.CANCELLED
        assert wait_until(lambda: not processes_mentioning(mark), 20), \
            f"still running there: pids {processes_mentioning(mark)}"
    finally:
        for pid in processes_mentioning(mark):     # what this test's setup left, by pid
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    again = d.submit_async(protocol.Launch(task=Task(run="echo again", resources=Resources(
        infra="ssh/p")), cluster="cut"))
    assert d.wait_request(again, 60).status is protocol.Status.SUCCEEDED
