"""Clusters on existing machines: the `ssh` infra against real sshd servers on loopback
addresses (127.0.0.2-4), through a real daemon and the real skyctl."""

from __future__ import annotations

import time

import pytest

from conftest import wait_until, write_task
from sshd import ssh_hosts  # noqa: F401 - the fixture
from skyd import protocol


@pytest.fixture
def pooled(make_daemon, ssh_hosts, workdir):  # noqa: F811
    """A daemon whose node pool `p` holds the three loopback hosts, reached with one shared
    login (root runs these requests; per-user logins: test_ssh_logins.py)."""
    pools = workdir / "pools.yaml"
    pools.write_text(ssh_hosts.pool_yaml("p", shared_login=True))
    d = make_daemon("--node-pools", str(pools), "--ssh-known-hosts", str(ssh_hosts.known_hosts))
    d.hosts = ssh_hosts
    d.pools_file = pools
    return d


def test_launch_exec_logs_down_on_one_host(pooled, workdir):
    src = workdir / "src"
    src.mkdir()
    (src / "hello.txt").write_text("from-workdir\n")
    task = write_task(workdir, "t.yaml", f"""
workdir: {src}
resources:
  infra: ssh/p
envs:
  WHO: remote
setup: echo "setup on $(hostname) as $WHO"
run: |
  echo "rank=$SKYPILOT_NODE_RANK ips=$SKYPILOT_NODE_IPS via=${{SSH_CONNECTION##* }}"
  cat hello.txt
""")
    p = pooled.skyctl("launch", "-c", "s1", str(task))
    assert p.returncode == 0, p.stderr
    host = pooled.hosts[0]
    assert "setup on" in p.stdout and "as remote" in p.stdout
    assert f"rank=0 ips={host.ip}" in p.stdout
    assert "from-workdir" in p.stdout
    [c] = pooled.call(protocol.ClusterStatus())
    assert (c.infra, c.status, [n.ip for n in c.nodes]) == ("ssh/p", "UP", [host.ip])
    e = pooled.skyctl("exec", "-c", "s1", "echo exec-ran; cat hello.txt")
    assert e.returncode == 0, e.stderr
    assert "exec-ran" in e.stdout and "from-workdir" in e.stdout
    logs = pooled.skyctl("logs", "s1", "1", "--no-follow")
    assert "from-workdir" in logs.stdout
    pooled.skyctl("down", "s1", check=True)
    assert pooled.call(protocol.ClusterStatus()) == []


def test_two_node_job_ranks_ips_and_prefixed_logs(pooled, workdir):
    task = write_task(workdir, "mn.yaml", """
num_nodes: 2
resources:
  infra: ssh/p
run: echo "I am $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES; ips=$(echo $SKYPILOT_NODE_IPS)"
""")
    p = pooled.skyctl("launch", "-c", "mn", str(task))
    assert p.returncode == 0, p.stderr
    ips = f"{pooled.hosts[0].ip} {pooled.hosts[1].ip}"
    assert f"(node-0) I am 0 of 2; ips={ips}" in p.stdout
    assert f"(node-1) I am 1 of 2; ips={ips}" in p.stdout
    # the job fails when any node's part fails
    f = pooled.skyctl("exec", "-c", "mn", '[ "$SKYPILOT_NODE_RANK" = 1 ] && exit 5; sleep 30')
    assert f.returncode == 1
    assert "FAILED (exit status 5)" in f.stderr


def test_a_host_belongs_to_one_cluster_at_a_time(pooled, workdir):
    two = write_task(workdir, "two.yaml", "num_nodes: 2\nresources:\n  infra: ssh/p\nrun: 'true'\n")
    pooled.skyctl("launch", "-c", "a", "-d", str(two), check=True)
    # It waits (holding no slot), saying why, and starts once the hosts are free.
    rid = pooled.skyctl("launch", "--async", "-c", "b", str(two), check=True).stdout.split()[-1]
    assert wait_until(lambda: pooled.request(rid).waiting ==
                      "waiting for 2 whole hosts: 1 of 3 hosts free"), pooled.request(rid)
    pooled.skyctl("down", "a", check=True)
    assert pooled.wait_request(rid).status == "succeeded"


def test_cancel_and_job_surviving_a_daemon_restart(pooled, workdir):
    task = write_task(workdir, "t.yaml", "resources:\n  infra: ssh/p\nrun: sleep 2; echo late\n")
    pooled.skyctl("launch", "-c", "r", "-d", str(task), check=True)
    pooled.restart()
    job = pooled.wait_job("r", 1, 30)
    assert job.status == "SUCCEEDED"
    assert pooled.skyctl("logs", "r", "1", "--no-follow").stdout.strip().endswith("late")
    pooled.skyctl("exec", "-c", "r", "-d", "sleep 300", check=True)
    assert wait_until(lambda: pooled.call(protocol.JobQueue(cluster="r"))[0].status == "RUNNING")
    pooled.skyctl("cancel", "r", "2", check=True)
    assert pooled.wait_job("r", 2, 20).status == "CANCELLED"


def test_unknown_pool_and_too_many_nodes_are_refused_at_submission(pooled, workdir):
    p = pooled.skyctl("launch", "-c", "x", "--infra", "ssh/nope", "true")
    assert p.returncode == 2 and "no ssh node pool 'nope'" in p.stderr and "pools: p" in p.stderr
    p = pooled.skyctl("launch", "-c", "x", "--infra", "ssh/p", "--num-nodes", "4", "true")
    assert p.returncode == 2 and "has 3 host(s)" in p.stderr
    assert pooled.call(protocol.ClusterStatus()) == []


def test_unreachable_host_fails_the_launch_naming_it_and_down_cleans_up(pooled, workdir):
    host = pooled.hosts[0]
    host.kill()
    p = pooled.skyctl("launch", "-c", "dead", "--infra", "ssh/p", "true")
    assert p.returncode == 1
    assert f"cannot reach node 0 (root@{host.ip}:{host.port})" in p.stderr.replace(
        f"{host.user}@", "root@")
    [c] = pooled.call(protocol.ClusterStatus())
    assert c.status == "INIT"                 # truthfully not up
    pooled.skyctl("down", "dead", check=True)  # and down still cleans it up
    assert pooled.call(protocol.ClusterStatus()) == []


def test_setup_failure_says_where(pooled, workdir):
    task = write_task(workdir, "t.yaml", "resources:\n  infra: ssh/p\n"
                                         "setup: echo broken-here; exit 9\nrun: 'true'\n")
    p = pooled.skyctl("launch", "-c", "sf", str(task))
    assert p.returncode == 1
    assert "setup failed on node 0" in p.stderr and "exit status 9" in p.stderr
    assert "broken-here" in p.stderr


def test_node_loss_mid_job_fails_it_and_marks_the_cluster(pooled, workdir):
    task = write_task(workdir, "t.yaml", "resources:\n  infra: ssh/p\nrun: sleep 300\n")
    pooled.skyctl("launch", "-c", "lost", "-d", str(task), check=True)
    assert wait_until(lambda: pooled.call(protocol.JobQueue(cluster="lost"))[0].status == "RUNNING")
    time.sleep(0.5)
    pooled.hosts[0].kill()                    # the machine is gone, its processes with it
    assert wait_until(lambda: pooled.call(protocol.ClusterStatus())[0].status == "UNHEALTHY", 30)
    [c] = pooled.call(protocol.ClusterStatus())
    assert "does not answer" in c.status_reason
    pooled.hosts[0].restart()
    job = pooled.wait_job("lost", 1, 40)
    assert job.status == "FAILED"
    assert wait_until(lambda: pooled.call(protocol.ClusterStatus())[0].status == "UP", 20)


def test_infra_lists_pools_with_reachability(pooled):
    import json
    p = pooled.skyctl("infra", "--json")
    assert p.returncode == 0, p.stderr
    hosts = json.loads(p.stdout)
    assert [(h["pool"], h["ip"], h["reachable"]) for h in hosts] == \
        [("p", h.ip, True) for h in pooled.hosts]
    assert all(h["cpus"] >= 1 and h["memory_bytes"] > 0 for h in hosts)
    pooled.hosts[2].kill()
    p = pooled.skyctl("infra")
    assert p.returncode == 1
    assert f"{pooled.hosts[2].ip}:{pooled.hosts[2].port}" in p.stdout and "no:" in p.stdout


def test_wrong_key_and_changed_host_key_are_explained(pooled, workdir):
    import subprocess
    bad_key = workdir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad_key)], check=True)
    text = pooled.pools_file.read_text().replace(str(pooled.hosts.identity_file), str(bad_key))
    pooled.pools_file.write_text(text)         # re-read on the next launch, no restart
    p = pooled.skyctl("launch", "-c", "k", "--infra", "ssh/p", "true")
    assert p.returncode == 1
    assert "Permission denied" in p.stderr and "identity_file" in p.stderr
    pooled.skyctl("down", "k", check=True)
    text = text.replace(str(bad_key), str(pooled.hosts.identity_file))
    pooled.pools_file.write_text(text)
    kh = pooled.hosts.known_hosts
    first = pooled.hosts[0]
    wrong = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(workdir / "fake_host")], check=True)
    assert wrong.returncode == 0
    fake = (workdir / "fake_host.pub").read_text().split()[:2]
    lines = [ln for ln in kh.read_text().splitlines() if not ln.startswith(f"[{first.ip}]")]
    kh.write_text("\n".join(lines + [f"[{first.ip}]:{first.port} {' '.join(fake)}"]) + "\n")
    p = pooled.skyctl("launch", "-c", "hk", "--infra", "ssh/p", "true")
    assert p.returncode == 1
    assert "key" in p.stderr and "known_hosts" in p.stderr


def test_stop_kills_jobs_keeps_hosts_and_start_brings_it_back(pooled, workdir):
    task = write_task(workdir, "t.yaml", "resources:\n  infra: ssh/p\nrun: sleep 300\n")
    pooled.skyctl("launch", "-c", "st", "-d", str(task), check=True)
    assert wait_until(lambda: pooled.call(protocol.JobQueue(cluster="st"))[0].status == "RUNNING")
    pooled.skyctl("stop", "st", check=True)
    [c] = pooled.call(protocol.ClusterStatus())
    assert c.status == "STOPPED"
    assert pooled.wait_job("st", 1, 20).status == "CANCELLED"
    # a stopped cluster keeps its host: the pool has one less free host
    two = write_task(workdir, "two.yaml", "num_nodes: 3\nresources:\n  infra: ssh/p\nrun: 'true'\n")
    rid = pooled.skyctl("launch", "--async", "-c", "other", str(two), check=True).stdout.split()[-1]
    assert wait_until(lambda: pooled.request(rid).waiting ==
                      "waiting for 3 whole hosts: 2 of 3 hosts free"), pooled.request(rid)
    pooled.skyctl("api", "cancel", rid, check=True)
    assert [c.name for c in pooled.call(protocol.ClusterStatus())] == ["st"]   # none created
    assert pooled.skyctl("exec", "-c", "st", "true").returncode == 1     # not UP
    pooled.skyctl("start", "st", check=True)
    p = pooled.skyctl("exec", "-c", "st", "echo back")
    assert p.returncode == 0 and "back" in p.stdout


def test_a_task_bigger_than_the_hosts_fails_naming_the_host(pooled):
    p = pooled.skyctl("launch", "-c", "big", "--infra", "ssh/p", "--cpus", "4096", "true")
    assert p.returncode == 2
    # The host is known once provisioned: the error names it, and the cluster is left
    # truthfully not up, holding that host until `down`.
    [c] = pooled.call(protocol.ClusterStatus())
    [host] = [h for h in pooled.hosts if h.ip == c.nodes[0].ip]
    assert f"node 0 ({host.user}@{host.ip}:{host.port}) has " in p.stderr, p.stderr
    assert "CPUs; the task asks for 4096" in p.stderr
    assert (c.name, c.status) == ("big", "INIT")
    assert [h.cluster for h in pooled.call(protocol.InfraStatus()) if h.ip == host.ip] == ["big"]
    pooled.skyctl("down", "big", check=True)                  # and down cleans up
    assert pooled.call(protocol.ClusterStatus()) == []
    assert [h.cluster for h in pooled.call(protocol.InfraStatus())] == [None] * 3


def test_a_node_lost_while_the_daemon_was_down_shows_at_start(pooled, workdir):
    pooled.skyctl("launch", "-c", "idle", "--infra", "ssh/p", "true", check=True)
    pooled.stop()
    pooled.hosts[0].kill()
    pooled.start()
    assert wait_until(lambda: pooled.call(protocol.ClusterStatus())[0].status == "UNHEALTHY", 30)
    pooled.hosts[0].restart()
    pooled.restart()
    assert wait_until(lambda: pooled.call(protocol.ClusterStatus())[0].status == "UP", 30)


def test_sync_launch_reports_the_jobs_failure_on_ssh(pooled):
    p = pooled.skyctl("launch", "-c", "fail", "--infra", "ssh/p", "echo bye; exit 3")
    assert p.returncode == 1
    assert "bye" in p.stdout and "FAILED (exit status 3)" in p.stderr


def test_following_a_job_that_already_ended_gives_its_whole_log(pooled, workdir):
    """A follower that comes after the job's end (or a synchronous launch whose fast job
    ended before its first read) reads the stored log, not nothing."""
    pooled.skyctl("launch", "-c", "done", "--infra", "ssh/p", "-d", "seq 1 5; echo last-line",
                  check=True)
    assert pooled.wait_job("done", 1).status == "SUCCEEDED"
    logs = pooled.skyctl("logs", "done", "1")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["1", "2", "3", "4", "5", "last-line"], logs.stdout
    frames = pooled.frames(protocol.JobLogs(cluster="done", job_id=1, follow=True))
    out = b"".join(f.data for f in frames if isinstance(f, protocol.Chunk))
    assert out.decode().splitlines() == ["1", "2", "3", "4", "5", "last-line"], frames
    pooled.skyctl("down", "done", check=True)
