"""The request path end to end on the local infra: launch, exec, status, queue, logs,
cancel, down — through the real skyctl, synchronously and with --async."""

from __future__ import annotations

import json
import time

from conftest import pid_alive, wait_until, write_task
from skyd import protocol


def test_launch_sync_follows_setup_and_job_output(daemon, workdir):
    src = workdir / "src"
    src.mkdir()
    (src / "data.txt").write_text("payload\n")
    task = write_task(workdir, "t.yaml", f"""
name: hello
workdir: {src}
envs:
  GREETING: hi
  NUMBER: 3
secrets:
  TOKEN: s3cret
setup: echo "setup sees $GREETING"
run: |
  echo "rank=$SKYPILOT_NODE_RANK nodes=$SKYPILOT_NUM_NODES ips=$SKYPILOT_NODE_IPS"
  echo "task=$SKYPILOT_TASK_ID number=$NUMBER token=$TOKEN"
  cat data.txt
""")
    p = daemon.skyctl("launch", str(task), "-c", "c1", "-y")
    assert p.returncode == 0, p.stderr
    assert "setup sees hi" in p.stdout
    assert "rank=0 nodes=1 ips=127.0.0.1" in p.stdout
    assert "_c1_1 number=3 token=s3cret" in p.stdout
    assert "payload" in p.stdout
    assert "SUCCEEDED" in p.stderr
    clusters = daemon.call(protocol.ClusterStatus())
    assert [(c.name, c.status, c.num_nodes) for c in clusters] == [("c1", "UP", 1)]
    jobs = daemon.call(protocol.JobQueue(cluster="c1"))
    assert [(j.job_id, j.name, j.status, j.exit_code) for j in jobs] == [(1, "hello", "SUCCEEDED", 0)]


def test_setup_sees_the_setup_variables_and_both_see_the_cluster_info(daemon, workdir):
    task = write_task(workdir, "vars.yaml", """
num_nodes: 2
setup: |
  echo "setup rank=$SKYPILOT_SETUP_NODE_RANK nodes=$SKYPILOT_SETUP_NUM_NODES" \
       "ips=$(echo $SKYPILOT_SETUP_NODE_IPS | tr ' ' ,) plain=${SKYPILOT_NODE_RANK-unset}"
  echo "setup-info $SKYPILOT_CLUSTER_INFO"
run: |
  echo "run rank=$SKYPILOT_NODE_RANK setup=${SKYPILOT_SETUP_NODE_RANK-unset}"
  echo "run-info $SKYPILOT_CLUSTER_INFO"
""")
    p = daemon.skyctl("launch", "-c", "vars", str(task))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for rank in (0, 1):
        assert (f"(node-{rank}) setup rank={rank} nodes=2 ips=127.0.0.1,127.0.0.1 "
                "plain=unset\n") in out, out
        assert f"(node-{rank}) run rank={rank} setup=unset\n" in out, out
    infos = [json.loads(line.split("-info ", 1)[1]) for line in out.splitlines()
             if "-info " in line]
    assert len(infos) == 4, out                     # setup and run, on both nodes
    assert all(i == {"cluster_name": "vars", "infra": "local", "num_nodes": 2} for i in infos)


def test_secrets_never_appear_in_reprs_or_logs(make_daemon, workdir):
    from skyd.taskspec import Task, normalise
    secret = "s3cret-in-repr-7"
    task = Task(name="s", envs={"SHOWN": "plain-value"}, secrets={"TOKEN": secret},
                run='echo "length ${#TOKEN}"')
    for text in (repr(task), str(task), f"{task}", repr(normalise(task)), repr([task]),
                 repr(protocol.Launch(task=task, cluster="c")),
                 repr(protocol.JobsLaunch(task=task))):
        assert secret not in text and "'TOKEN': '<redacted>'" in text and "plain-value" in text, text
    # A daemon that logs everything: the secret reaches the job, and no log.
    d = make_daemon("--log-level", "DEBUG")
    rid = d.submit_async(protocol.Launch(task=task, cluster="sec"))
    assert d.wait_request(rid).status is protocol.Status.SUCCEEDED
    assert d.wait_job("sec", 1).status == "SUCCEEDED"
    assert d.skyctl("logs", "sec", "1", "--no-follow").stdout == "length 16\n"
    request_log = (d.state_dir / "logs" / "requests" / f"{rid}.log").read_text()
    assert "Job 1 submitted" in request_log and secret not in request_log
    assert "listening on" in d.log() and secret not in d.log()


def test_async_prints_only_the_request_id(daemon, workdir):
    p = daemon.skyctl("launch", "--async", "-c", "c2", "echo from-async")
    assert p.returncode == 0, p.stderr
    rid = p.stdout.strip()
    assert len(rid) == 36 and rid.count("-") == 4, p.stdout
    rec = daemon.wait_request(rid)
    assert rec.status is protocol.Status.SUCCEEDED
    job = daemon.wait_job("c2", 1)
    assert job.status == "SUCCEEDED"
    logs = daemon.skyctl("logs", "c2", "1", "--no-follow")
    assert logs.stdout == "from-async\n"
    # the request's own log: following a finished request prints it and its result
    api_logs = daemon.skyctl("api", "logs", rid[:8])
    assert api_logs.returncode == 0
    assert "Job 1 submitted to cluster c2" in api_logs.stderr     # skyd's line: on stderr


def test_exec_reuses_cluster_without_setup_and_keeps_order(daemon, workdir):
    marker = workdir / "setup-runs"
    task = write_task(workdir, "t.yaml", f"""
setup: echo x >> {marker}; sleep 0.5
run: echo job-$SKYPILOT_JOB_ID
""")
    launch_id = daemon.skyctl("launch", "--async", "-c", "c3", str(task)).stdout.strip()
    # exec right away: it must wait for the cluster's launch, then run without setup
    exec_id = daemon.skyctl("exec", "--async", "-c", "c3", str(task)).stdout.strip()
    launch, exe = daemon.wait_request(launch_id), daemon.wait_request(exec_id)
    assert launch.status is exe.status is protocol.Status.SUCCEEDED
    assert exe.started_at >= launch.finished_at
    assert marker.read_text() == "x\n"          # setup ran once: exec skips it
    assert daemon.wait_job("c3", 2).status == "SUCCEEDED"
    out = daemon.skyctl("logs", "c3", "2", "--no-follow").stdout
    assert out == "job-2\n"


def test_failing_job_and_failing_setup(daemon, workdir):
    p = daemon.skyctl("launch", "-c", "c4", "echo about-to-fail; exit 7")
    assert p.returncode == 1
    assert "about-to-fail" in p.stdout
    assert "FAILED (exit status 7)" in p.stderr
    bad_setup = write_task(workdir, "s.yaml", "setup: echo broken-setup; exit 3\nrun: echo never\n")
    p = daemon.skyctl("launch", "-c", "c5", str(bad_setup))
    assert p.returncode == 1
    assert "setup failed on node 0" in p.stderr and "exit status 3" in p.stderr
    assert "broken-setup" in p.stderr      # the last lines travel with the error
    jobs = daemon.call(protocol.JobQueue(cluster="c5"))
    assert [j.status for j in jobs] == ["FAILED_SETUP"]


def test_status_queue_json_and_down(daemon, workdir):
    daemon.skyctl("launch", "-c", "c6", "-d", "sleep 30", check=True)
    status = json.loads(daemon.skyctl("status", "--json", check=True).stdout)
    assert status[0]["name"] == "c6" and status[0]["status"] == "UP"
    queue = json.loads(daemon.skyctl("queue", "c6", "--json", check=True).stdout)
    assert queue[0]["status"] == "RUNNING"
    cancel = daemon.skyctl("cancel", "c6", "1", check=True)
    assert "Cancelled job(s) 1" in cancel.stderr
    assert daemon.wait_job("c6", 1).status == "CANCELLED"
    daemon.skyctl("down", "c6", "-y", check=True)
    assert daemon.call(protocol.ClusterStatus()) == []
    assert not (daemon.state_dir / "clusters" / "c6").exists()


def test_down_kills_running_jobs(daemon, workdir):
    daemon.skyctl("launch", "-c", "c7", "-d", "echo $$ > pid; sleep 60", check=True)
    pid_file = daemon.state_dir / "clusters" / "c7" / "node-0" / "sky_workdir" / "pid"
    assert wait_until(pid_file.exists)
    assert wait_until(lambda: pid_file.read_text().strip() != "")
    pid = int(pid_file.read_text())
    assert pid_alive(pid)
    daemon.skyctl("down", "c7", check=True)
    assert wait_until(lambda: not pid_alive(pid), 5)


def test_multi_node_local_cluster(daemon, workdir):
    task = write_task(workdir, "mn.yaml", """
num_nodes: 2
run: echo "node $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES"
""")
    p = daemon.skyctl("launch", "-c", "mn", str(task))
    assert p.returncode == 0, p.stderr
    assert "(node-0) node 0 of 2" in p.stdout
    assert "(node-1) node 1 of 2" in p.stdout


def test_logs_follow_streams_while_running(daemon, workdir):
    import os
    import subprocess
    import sys
    daemon.skyctl("launch", "-c", "f1", "-d",
                  "for i in 1 2 3; do echo line-$i; sleep 1; done", check=True)
    env = dict(os.environ, SKYD_HOST=daemon.host, NO_COLOR="1")
    follower = subprocess.Popen([sys.executable, "-m", "skyctl", "logs", "f1", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = follower.stdout.readline()
        # The first line reaches the follower while the job still runs (2 s to go), not
        # once it has ended.
        [job] = daemon.call(protocol.JobQueue(cluster="f1"))
        assert (first, job.status) == ("line-1\n", "RUNNING")
        rest, err = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert first + rest == "line-1\nline-2\nline-3\n"


def test_request_log_reaches_a_follower_while_the_request_runs(daemon):
    """Followers are woken by each append, not by the request's end."""
    from skyd.taskspec import Task
    op = protocol.Launch(task=Task(setup="echo early-line; sleep 3"), cluster="live")
    with daemon.connect() as conn:
        rid = None
        for msg in conn.submit(op):
            if isinstance(msg, protocol.Accepted):
                rid = msg.request_id
            if isinstance(msg, protocol.Chunk) and b"early-line" in msg.data:
                # the request is still running when its first output arrives
                assert daemon.request(rid).status is protocol.Status.RUNNING
                break
        else:
            raise AssertionError("the setup's output never arrived")


def test_autostop_stops_or_tears_down_an_idle_cluster(daemon):
    daemon.skyctl("launch", "-c", "idle", "-d", "sleep 1", check=True)
    p = daemon.skyctl("autostop", "idle", "-i", "0.02", check=True)   # 1.2 s
    assert "stopped after 0.02 idle minute" in p.stderr
    # the running job keeps it busy; once done and idle, it is stopped by the server
    assert wait_until(lambda: daemon.call(protocol.ClusterStatus())[0].status == "STOPPED", 20)
    daemon.skyctl("start", "idle", check=True)
    daemon.skyctl("autostop", "idle", "--cancel", check=True)
    time.sleep(2.5)
    assert daemon.call(protocol.ClusterStatus())[0].status == "UP"
    # launch --down: torn down once its job is over
    daemon.skyctl("launch", "-c", "gone", "--down", "-d", "sleep 1", check=True)
    assert wait_until(lambda: [c.name for c in daemon.call(protocol.ClusterStatus())] == ["idle"],
                      20)
    reqs = daemon.call(protocol.ApiStatus(all_statuses=True))
    assert any(r.name == "down" and r.cluster == "gone" and r.user == "root" for r in reqs)


def test_autostop_down_tears_an_idle_cluster_down(daemon):
    daemon.skyctl("launch", "-c", "ad", "-d", "sleep 1", check=True)
    p = daemon.skyctl("autostop", "ad", "-i", "0.02", "--down", check=True)
    assert "ad will be torn down after 0.02 idle minute(s)." in p.stderr
    [c] = daemon.call(protocol.ClusterStatus())
    assert (c.name, c.status) == ("ad", "UP")            # its job keeps it busy
    # Once idle it is gone (not stopped), by a `down` in its owner's name.
    assert wait_until(lambda: daemon.call(protocol.ClusterStatus()) == [], 20)
    reqs = [(r.name, r.cluster, r.user) for r in daemon.call(protocol.ApiStatus(all_statuses=True))
            if r.queue is protocol.Queue.LONG]
    assert ("down", "ad", "root") in reqs and ("stop", "ad", "root") not in reqs
    assert not (daemon.state_dir / "clusters" / "ad").exists()


def test_jobs_wait_for_room_on_the_cluster_in_submission_order(daemon, workdir):
    from skyd.sizing import hardware
    cpus = str(int(hardware.detect().cpus))          # each job takes the whole node
    daemon.skyctl("launch", "-c", "q", "-d", "--cpus", cpus, "sleep 3", check=True)
    daemon.skyctl("exec", "-c", "q", "-d", "--cpus", cpus, "sleep 1", check=True)
    daemon.skyctl("exec", "-c", "q", "-d", "--cpus", cpus, "echo third", check=True)
    marker = workdir / "fourth-ran"
    daemon.skyctl("exec", "-c", "q", "-d", "--cpus", cpus, f"touch {marker}", check=True)
    jobs = {j.job_id: j.status for j in daemon.call(protocol.JobQueue(cluster="q"))}
    assert jobs == {1: "RUNNING", 2: "PENDING", 3: "PENDING", 4: "PENDING"}
    assert daemon.skyctl("cancel", "q", "4", check=True).returncode == 0
    done = [daemon.wait_job("q", i, 25) for i in (1, 2, 3)]       # 3 s, 1 s, 0 s of work
    assert [j.status for j in done] == ["SUCCEEDED"] * 3
    # Two jobs waited for the node at once; each started only when the one before it (in
    # submission order) had ended.
    assert done[1].started_at >= done[0].ended_at - 0.05
    assert done[2].started_at >= done[1].ended_at - 0.05
    assert daemon.wait_job("q", 4, 10).status == "CANCELLED"
    assert not marker.exists()
    # small jobs share a node: SkyPilot's default demand is half a CPU each
    daemon.skyctl("exec", "-c", "q", "-d", "sleep 5", check=True)
    daemon.skyctl("exec", "-c", "q", "-d", "sleep 5", check=True)
    assert wait_until(lambda: [j.status for j in daemon.call(protocol.JobQueue(cluster="q"))][:2]
                      == ["RUNNING", "RUNNING"], 5)


def test_a_task_bigger_than_this_host_is_refused_at_submission(daemon):
    p = daemon.skyctl("launch", "-c", "huge", "--cpus", "4096", "true")
    assert p.returncode == 2
    assert "a local node (this host) has" in p.stderr and "the task asks for 4096" in p.stderr
    p = daemon.skyctl("launch", "-c", "huge", "--memory", "100000", "true")
    assert p.returncode == 2 and "GiB of memory; the task asks for 100000 GiB" in p.stderr
    assert daemon.call(protocol.ClusterStatus()) == []
