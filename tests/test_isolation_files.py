"""The root daemon never follows a path a user controls (DESIGN §3, issue 11 findings 1-4
and 8): each attack below is what a user of the socket could try against a root daemon,
run by two real accounts (alice and bob, tests/users.py) against a real daemon as root."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from conftest import wait_until, write_task
from skyd import protocol
from skyd.sizing import hardware

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


def _ok(p) -> None:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)


def _node(d, cluster: str) -> Path:
    [c] = d.call(protocol.ClusterStatus(clusters=[cluster], all_users=True))
    return Path(c.nodes[0].path)


def _root_only_file(workdir: Path, text: str) -> Path:
    """A file only root may read, in a directory only root may enter."""
    secret_dir = workdir / "root-only"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "secret.txt"
    secret.write_text(text)
    os.chmod(secret, 0o600)
    return secret


def _answers_quickly(d, within: float = 5.0) -> bool:
    start = time.monotonic()
    d.call(protocol.ApiInfo())
    return time.monotonic() - start < within


@pytest.mark.timeout(150)   # its four waits: 30 s each
def test_a_symlinked_log_never_makes_root_read_or_write_elsewhere(team, people, workdir):
    alice, _ = people
    secret = _root_only_file(workdir, "root-only-secret-line\n")
    target = secret.parent / "planted-by-alice"
    # Job 1 takes every CPU of the node for a while; job 2 waits for room (PENDING with its
    # files prepared), which is when alice swaps them for links.
    cpus = hardware.detect().cpus          # a local node is this host
    busy = write_task(workdir, "busy.yaml",
                      f"resources:\n  cpus: {cpus:g}\nrun: sleep 4; echo first-done\n")
    _ok(alice.skyctl(team, "launch", "--async", "-c", "dev", str(busy)))
    wait_until(lambda: team.call(protocol.JobQueue(cluster="dev")) and
               team.call(protocol.JobQueue(cluster="dev"))[-1].status == "RUNNING", 30)
    second = write_task(workdir, "second.yaml",
                        f"resources:\n  cpus: {cpus:g}\nrun: echo second-job-output\n")
    p = alice.skyctl(team, "exec", "-c", "dev", str(second))
    _ok(p)
    jobdir = _node(team, "dev") / "jobs" / "2"
    r = alice.sh(f"cd {jobdir} && for f in run.log exit_code cancelled; do rm -f $f; done && "
                 f"ln -s {target} run.log && ln -s {secret} exit_code && "
                 f"ln -s {secret.parent}/touched cancelled")
    assert r.returncode == 0, r.stderr
    # Reading job 1's log through its own path: swap it for a link to the secret.
    r = alice.sh(f"cd {jobdir.parent}/1 && rm -f run.log && ln -s {secret} run.log")
    assert r.returncode == 0, r.stderr
    job2 = team.wait_job("dev", 2, 30)
    assert job2.status == "SUCCEEDED", job2
    for job in ("1", "2"):
        out = alice.skyctl(team, "logs", "dev", job, "--no-follow")
        assert "root-only-secret-line" not in out.stdout + out.stderr
    assert "second-job-output" in alice.skyctl(team, "logs", "dev", "2", "--no-follow").stdout
    assert "first-done" in alice.skyctl(team, "logs", "dev", "1", "--no-follow").stdout
    # Cancel job 3 while it runs: its `cancelled` marker is a link too.
    long = write_task(workdir, "long.yaml", "run: sleep 30\n")
    _ok(alice.skyctl(team, "exec", "--async", "-c", "dev", str(long)))
    wait_until(lambda: any(j.job_id == 3 and j.status == "RUNNING"
                           for j in team.call(protocol.JobQueue(cluster="dev"))), 30)
    alice.sh(f"cd {jobdir.parent}/3 && rm -f cancelled && ln -s {secret.parent}/cancel-touched "
             f"cancelled")
    _ok(alice.skyctl(team, "cancel", "dev", "3"))
    assert team.wait_job("dev", 3, 30).status == "CANCELLED"
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.txt"]
    assert secret.read_text() == "root-only-secret-line\n"


def test_a_fifo_in_place_of_a_jobs_files_freezes_nothing(team, people, workdir):
    alice, _ = people
    task = write_task(workdir, "fifo.yaml", """
run: |
  d=../jobs/$SKYPILOT_JOB_ID
  for f in run.log exit_code cancelled; do rm -f $d/$f; mkfifo $d/$f; done
  echo made-fifos
""")
    _ok(alice.skyctl(team, "launch", "-c", "ff", str(task)))
    job = team.wait_job("ff", 1, 30)
    assert job.status == "SUCCEEDED", job
    assert _answers_quickly(team)
    p = alice.skyctl(team, "logs", "ff", "1", "--no-follow", timeout=20)
    assert "made-fifos" in p.stdout, (p.stdout, p.stderr)
    # Start-up after kill -9 reconciles the job's files: it must not block on them.
    _ok(alice.skyctl(team, "exec", "--async", "-c", "ff", str(task)))
    wait_until(lambda: any(j.job_id == 2 and j.status != "PENDING"
                           for j in team.call(protocol.JobQueue(cluster="ff"))), 30)
    team.restart(sig=signal.SIGKILL)          # waits for the handshake (or fails)
    assert _answers_quickly(team)
    assert team.wait_job("ff", 2, 30).status == "SUCCEEDED"


def test_a_name_given_back_by_down_carries_nothing_to_its_next_owner(team, people, workdir):
    alice, bob = people
    task = write_task(workdir, "a.yaml", "run: echo alice-was-here > planted.txt\n")
    _ok(alice.skyctl(team, "launch", "-c", "dev", str(task)))
    assert team.wait_job("dev", 1, 30).status == "SUCCEEDED"
    cluster_dir = _node(team, "dev").parent
    _ok(alice.skyctl(team, "down", "-y", "dev"))
    # Alice tries to keep a foothold where the next "dev" will live.
    alice.sh(f"mkdir -p {cluster_dir}/node-0/sky_workdir && "
             f"echo squat > {cluster_dir}/node-0/sky_workdir/planted.txt && "
             f"chmod -R 777 {cluster_dir}")
    task_b = write_task(workdir, "b.yaml",
                        "secrets:\n  TOKEN: bobs-secret-4242\nrun: ls; sleep 2\n")
    p = bob.skyctl(team, "launch", "-c", "dev", str(task_b))
    _ok(p)
    assert "planted.txt" not in p.stdout
    node = _node(team, "dev")
    for path in (node.parent, node, node / "sky_workdir"):
        st = os.lstat(path)
        assert st.st_uid == bob.uid, (path, st.st_uid)
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0 or path == node / "sky_workdir", path
    r = alice.sh(f"ls {node}; cat {node}/jobs/1/env.sh; touch {node}/x")
    assert r.returncode != 0 and "bobs-secret" not in r.stdout


def test_down_that_cannot_finish_says_so_and_keeps_the_cluster(team, people, workdir):
    alice, _ = people
    # A file only root can remove, inside alice's cluster (root put it there): her teardown
    # as herself cannot finish, and down must say so instead of forgetting the cluster.
    task = write_task(workdir, "t.yaml", "run: mkdir -p keep\n")
    _ok(alice.skyctl(team, "launch", "-c", "stuck", str(task)))
    assert team.wait_job("stuck", 1, 30).status == "SUCCEEDED"
    keep = _node(team, "stuck") / "sky_workdir" / "keep"
    os.chown(keep, 0, 0)
    os.chmod(keep, 0o755)
    (keep / "roots-file").write_text("x")
    p = alice.skyctl(team, "down", "-y", "stuck")
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "did not finish" in p.stdout + p.stderr
    assert [c.name for c in team.call(protocol.ClusterStatus(all_users=True))] == ["stuck"]
    (keep / "roots-file").unlink()
    _ok(alice.skyctl(team, "down", "-y", "stuck"))
    assert team.call(protocol.ClusterStatus(all_users=True)) == []
    assert not keep.exists()


def test_an_admins_exec_on_someones_cluster_runs_as_that_someone(team, people, workdir):
    alice, _ = people
    task = write_task(workdir, "a.yaml", "run: echo alice-job\n")
    _ok(alice.skyctl(team, "launch", "-c", "ac", str(task)))
    who = write_task(workdir, "who.yaml", "setup: echo setup-uid=$(id -u)\n"
                                          "run: echo run-uid=$(id -u) home=$HOME\n")
    p = team.skyctl("exec", "-c", "ac", str(who))          # root: an admin
    _ok(p)
    assert f"run-uid={alice.uid} home={alice.home}" in p.stdout, p.stdout
    p = team.skyctl("launch", "-c", "ac", str(who))
    _ok(p)
    assert f"setup-uid={alice.uid}" in p.stdout and f"run-uid={alice.uid}" in p.stdout, p.stdout
    jobs = team.call(protocol.JobQueue(cluster="ac"))
    assert {j.uid for j in jobs} == {alice.uid}, jobs
    # Nothing in her cluster's directory was written by root.
    node = _node(team, "ac")
    owners = {os.lstat(os.path.join(dp, n)).st_uid for dp, ds, fs in os.walk(node)
              for n in ds + fs}
    assert owners == {alice.uid}, owners


def test_jobs_get_their_owners_clean_environment(make_daemon, workdir, people, monkeypatch):
    alice, _ = people
    monkeypatch.setenv("DAEMON_ONLY_MARKER", "leaked-from-the-daemon")
    os.chmod(workdir, 0o755)
    d = make_daemon("--socket-group", "skyd-users")
    task = write_task(workdir, "env.yaml", """
envs:
  MINE: task-env
secrets:
  TOKEN: s3cret-in-env-only
setup: |
  echo "setup-path=$PATH"
  env | grep DAEMON_ONLY_MARKER || echo no-marker
run: |
  echo "run-path=$PATH"
  echo "run-user=$USER home=$HOME shell=$SHELL mine=$MINE"
  env | grep DAEMON_ONLY_MARKER || echo no-marker
  ls ../jobs/$SKYPILOT_JOB_ID/
""")
    p = alice.skyctl(d, "launch", "-c", "env", str(task))
    _ok(p)
    std = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert f"setup-path={std}\n" in p.stdout and f"run-path={std}\n" in p.stdout, p.stdout
    assert "leaked-from-the-daemon" not in p.stdout
    assert p.stdout.count("no-marker\n") == 2, p.stdout
    assert f"run-user={alice.name} home={alice.home} shell=/bin/bash mine=task-env" in p.stdout
    # The secret lived in a file only until the job started.
    assert "env.sh" not in p.stdout, p.stdout
    assert not list(_node(d, "env").glob("jobs/*/env.sh"))


def test_a_jobs_output_is_capped_with_a_marker_and_the_job_goes_on(make_daemon, workdir):
    d = make_daemon("--job-log-bytes", "100000")
    assert d.call(protocol.ApiInfo()).limits.job_log_bytes == 100000
    task = write_task(workdir, "chatty.yaml",
                      "run: |\n  yes 0123456789 | head -c 3000000\n  echo finished-fine >&2\n"
                      "  exit 7\n")
    p = d.skyctl("launch", "-c", "chat", str(task))
    job = d.wait_job("chat", 1, 60)
    assert (job.status, job.exit_code) == ("FAILED", 7), job       # its own exit status
    p = d.skyctl("logs", "chat", "1", "--no-follow")
    out = p.stdout                                      # the output; skyd's lines: stderr
    assert out.startswith("0123456789\n"), out[:100]
    assert "[skyd] output truncated: the job log limit of 100000 bytes" in p.stderr
    assert "finished-fine" not in out + p.stderr
    assert 100000 <= len(out) < 100300, len(out)
    [ctl] = (d.state_dir / "jobs" / "chat" / "1").iterdir()
    assert (ctl / "run.log").stat().st_size < 100300
    assert p.returncode != 0
    small = write_task(workdir, "small.yaml", "run: echo just-this\n")
    d.skyctl("exec", "-c", "chat", str(small), check=True)
    assert "truncated" not in d.skyctl("logs", "chat", "2", "--no-follow").stdout
