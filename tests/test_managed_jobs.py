"""Managed jobs through a real daemon: their own cluster, recovery, restarts on errors,
cancel, teardown, many at once, and a daemon killed in the middle."""

from __future__ import annotations

import json
import os
import random
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
    p = daemon.skyctl("jobs", "logs", "--controller", "1")    # skyd's [skyd] lines: on stderr
    ctl = p.stdout + p.stderr
    assert "PENDING -> STARTING" in p.stdout and "setting-up" in ctl and "Cluster managed-1 is down" in ctl
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
    p = daemon.skyctl("jobs", "logs", "1", "--no-follow")     # skyd's lines: on stderr
    assert p.stdout.count("try") == 2 and "--- attempt 2 (the task exited with status 3" in p.stderr
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
    p = daemon.skyctl("jobs", "logs", str(job_id), "--no-follow")     # skyd's lines: on stderr
    assert "first" in p.stdout and "second" in p.stdout and "processes were killed" in p.stderr
    assert clusters(daemon) == []


def test_cancel_a_queued_job_and_a_running_one(make_daemon, workdir):
    d = make_daemon("--jobs-parallelism", "1")
    slow = submit(d, Task(setup="sleep 2", run="sleep 300"))    # holds the only launch slot
    queued = submit(d, Task(run="echo never"))
    assert jobs(d)[queued].status == "PENDING"
    p = d.skyctl("jobs", "cancel", str(queued))
    assert p.returncode == 0 and f"Cancelling managed job(s) {queued}" in p.stderr
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
    assert again.returncode == 0 and "already finished (CANCELLED)" in again.stderr   # said, not failed


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


def test_jobs_queue_all_users_and_skip_finished(team, people):
    alice, _ = people
    d = team
    done = submit(d, Task(name="done", run="true"))
    wait_job(d, done, 20)
    mine = submit(d, Task(name="mine", run="sleep 60"))
    p = alice.skyctl(d, "jobs", "launch", "--async", "-n", "hers", "sleep 60")
    assert p.returncode == 0, p.stderr
    hers = max(jobs(d))
    for j in (mine, hers):
        wait_job(d, j, 20, until=lambda r: r.status == "RUNNING")

    def listed(person, *args: str) -> list[tuple[int, str]]:
        p = (person.skyctl(d, *args) if person else d.skyctl(*args))
        assert p.returncode == 0, p.stderr
        return [(j["job_id"], j["user"]) for j in json.loads(p.stdout)]
    assert listed(None, "jobs", "queue", "--json") == [(mine, "root"), (done, "root")]
    assert listed(None, "jobs", "queue", "-u", "--json") == \
        [(hers, alice.name), (mine, "root"), (done, "root")]
    assert listed(None, "jobs", "queue", "-s", "--json") == [(mine, "root")]
    assert listed(None, "jobs", "queue", "-u", "-s", "--json") == [(hers, alice.name),
                                                                   (mine, "root")]
    table = d.skyctl("jobs", "queue", "-u").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "USER"]
    assert [ln.split()[:3] for ln in table[1:]] == [[str(hers), "hers", alice.name],
                                                     [str(mine), "mine", "root"],
                                                     [str(done), "done", "root"]]
    # -u is for admins; alice sees her own.
    p = alice.skyctl(d, "jobs", "queue", "-u")
    assert p.returncode == 5 and "admins only" in p.stderr
    assert listed(alice, "jobs", "queue", "--json") == [(hers, alice.name)]
    assert listed(alice, "jobs", "queue", "-s", "--json") == [(hers, alice.name)]
    d.call(protocol.JobsCancel(all_users=True))
    for j in (mine, hers):
        assert wait_job(d, j, 20).status == "CANCELLED"


def test_a_task_that_cannot_be_prepared_fails_its_prechecks_once(daemon, workdir):
    missing = workdir / "no-such-dir"
    job_id = submit(daemon, Task(workdir=str(missing), run="echo never"))
    job = wait_job(daemon, job_id, 30)
    assert (job.status, job.attempt, job.launch_failures, job.recoveries) == \
        ("FAILED_PRECHECKS", 1, 0, 0), job
    assert f"workdir {missing} does not exist" in job.reason
    assert clusters(daemon) == []
    p = daemon.skyctl("jobs", "queue", "-a")
    assert "FAILED_PRECHECKS" in p.stdout and "does not exist" in p.stdout


def test_three_failed_launches_in_a_row_are_failed_no_resource(make_daemon, workdir):
    import socket
    with socket.socket() as s:          # a port where nothing listens: ssh is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pools = workdir / "pools.yaml"
    pools.write_text(f"dead:\n  hosts:\n    - ip: 127.0.0.1\n      port: {port}\n")
    d = make_daemon("--node-pools", str(pools))
    job_id = submit(d, Task(run="echo never", resources=Resources(infra="ssh/dead")))
    job = wait_job(d, job_id, 60)           # two back-offs: 2 s, then 4 s
    assert (job.status, job.attempt, job.launch_failures) == ("FAILED_NO_RESOURCE", 3, 2), job
    assert job.reason.startswith("launch failed 3 times; last: ") and "cannot reach" in \
        job.reason, job.reason
    ctl = d.skyctl("jobs", "logs", "--controller", str(job_id)).stdout
    assert ctl.count("STARTING -> RECOVERING") == 2 and "-> FAILED_NO_RESOURCE" in ctl, ctl
    assert clusters(d) == []
    assert [h.cluster for h in d.call(protocol.InfraStatus())] == [None]   # its host is free


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


KILL_POINTS = 6     # kill -9 of the daemon at this many random moments in one run


@pytest.mark.timeout(150)
def test_killing_the_daemon_loses_no_job_and_runs_none_twice(make_daemon, workdir):
    """kill -9 of the daemon while jobs are running, then at random moments while more are
    submitted, queued, launched, started, ending and torn down: after the restarts every
    job succeeds with its task run exactly once, none judged lost. The seed and the kill
    times are in the message of a failure; SKYD_TEST_SEED=N runs one again."""
    seed = int(os.environ.get("SKYD_TEST_SEED") or random.randrange(1 << 30))
    rnd = random.Random(seed)
    d = make_daemon("--jobs-parallelism", "3")
    runs = workdir / "runs"
    runs.mkdir()

    def job() -> Task:
        return Task(run=f"echo x >> {runs}/$SKYPILOT_CLUSTER_NAME; "
                        f"sleep {rnd.choice((0, 0.2, 0.5, 1))}")
    ids = [submit(d, job()) for _ in range(24)]
    # The first kill: some jobs done, some running, the rest launching or queued.
    assert wait_until(lambda: sum(j.status == "SUCCEEDED" for j in jobs(d).values()) >= 3, 30)
    d.kill9()
    d.start()
    kills = ["3 done"]
    for _ in range(KILL_POINTS - 1):
        ids += [submit(d, job()) for _ in range(4)]
        delay = rnd.uniform(0.05, 1.5)
        time.sleep(delay)
        d.kill9()
        d.start()
        kills.append(f"{delay:.2f}s")
    # ~7 s in all here; its waits (30 s, the kills' sleeps, 60 s, 20 s) end before the timeout.
    deadline = time.monotonic() + 60                # for all 44 jobs together
    final = {job_id: wait_job(d, job_id, max(1.0, deadline - time.monotonic())) for job_id in ids}
    assert wait_until(lambda: clusters(d) == [], 20)
    counts = {f.name: f.read_text().count("x") for f in runs.iterdir()}
    why = [ln for ln in d.log().splitlines()
           if "without an exit status" in ln or "before it started" in ln]
    where = f"seed {seed}, kills at {kills}; daemon said: {why}"
    assert [j.job_id for j in final.values() if j.status != "SUCCEEDED"] == [], where
    assert set(counts) == {f"managed-{i}" for i in ids}, where   # every job ran: none lost
    twice = sorted(name for name, n in counts.items() if n != 1)
    assert twice == [], f"ran more than once after kill -9: {twice}; {where}"
    lost = {i: j.reason for i, j in final.items() if j.recoveries}
    assert lost == {}, f"judged lost though nothing but the daemon was killed: {lost}; {where}"


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
    # ~4 s here; its waits (30, 15 and 60 s) end before the default timeout (120 s).
    wait_job(pooled, 1, 30, until=lambda j: j.status == "RUNNING")
    assert wait_until(lambda: f"on {first}" in pooled.skyctl("jobs", "logs", "1",
                                                              "--no-follow").stdout, 15)
    pooled.hosts[0].kill()
    job = wait_job(pooled, 1, 60)
    assert (job.status, job.recoveries) == ("SUCCEEDED", 1), pooled.skyctl("jobs", "logs", "--controller", "1").stdout
    out = pooled.skyctl("jobs", "logs", "1", "--no-follow").stdout
    assert f"on {pooled.hosts[1].ip}" in out
    assert "does not answer" in pooled.skyctl("jobs", "logs", "--controller", "1").stdout
    # Its cluster is gone and no host is left assigned to it.
    assert clusters(pooled) == []
    assert all(h.cluster is None for h in pooled.call(protocol.InfraStatus()))


def test_a_task_bigger_than_its_pool_hosts_fails_prechecks_once_and_frees_the_host(pooled):
    """README: FAILED_PRECHECKS, the task cannot fit its nodes. A pool host's size is known
    once it is provisioned: the job fails there, once (not relaunched), naming the host,
    and its cluster is torn down."""
    job_id = submit(pooled, Task(run="echo never", resources=Resources(infra="ssh/p", cpus="4096")))
    job = wait_job(pooled, job_id, 30)
    assert (job.status, job.attempt, job.launch_failures, job.recoveries) == \
        ("FAILED_PRECHECKS", 1, 0, 0), job
    # Naming the host it was placed on: the first one, unless its probe was slow under load.
    assert "CPUs; the task asks for 4096" in job.reason, job.reason
    assert any(f"@{h.ip}:" in job.reason for h in pooled.hosts), job.reason
    assert clusters(pooled) == []
    assert all(h.cluster is None for h in pooled.call(protocol.InfraStatus()))


def test_jobs_on_a_pool_wait_for_free_hosts_in_order(pooled, workdir):
    task = Task(run="sleep 1", resources=Resources(infra="ssh/p"))
    ids = [submit(pooled, task) for _ in range(5)]
    most = 0
    deadline = time.monotonic() + 60        # ~3 s here
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
