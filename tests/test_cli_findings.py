"""Issue 17's findings, one test each, through the real skyctl against a real daemon:
what a SkyPilot user typed first, the exit codes that disagreed, the output contract, and
the messages that misled."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, write_task
from skyd import protocol


def jobs_of(d, cluster: str) -> list[tuple[int, str]]:
    return [(j.job_id, j.status) for j in d.call(protocol.JobQueue(cluster=cluster))]


def clusters(d) -> dict[str, str]:
    return {c.name: c.status for c in d.call(protocol.ClusterStatus(all_users=True))}


def requests(d) -> list[protocol.RequestRecord]:
    """Every request that did something (not the listings the test itself asks for)."""
    return [r for r in d.call(protocol.ApiStatus(all_statuses=True, all_users=True, limit=1000))
            if r.queue is not protocol.Queue.SHORT and r.queue is not protocol.Queue.INLINE]


# ---- the first commands of a SkyPilot user --------------------------------------------------

def test_exec_takes_the_cluster_as_its_first_word(daemon, workdir):
    daemon.skyctl("launch", "-c", "dev", "-d", "true", check=True)
    task = write_task(workdir, "task.yaml", "run: echo from-the-yaml\n")
    p = daemon.skyctl("exec", "dev", str(task), check=True)
    assert p.stdout == "from-the-yaml\n"
    p = daemon.skyctl("exec", "dev", "echo", "unquoted", "words", check=True)
    assert p.stdout == "unquoted words\n"
    assert jobs_of(daemon, "dev") == [(3, "SUCCEEDED"), (2, "SUCCEEDED"), (1, "SUCCEEDED")]


def test_launch_takes_an_unquoted_command_after_the_options(daemon):
    p = daemon.skyctl("launch", "-c", "dev", "echo", "hi", check=True)
    assert p.stdout == "hi\n"
    # Words skyctl does not know are the command's, after its first word...
    p = daemon.skyctl("launch", "-c", "dev", "echo", "--not-ours", "x", check=True)
    assert p.stdout == "--not-ours x\n"
    # ...or anything after --; before the first word, an unknown option is a mistake.
    p = daemon.skyctl("launch", "-c", "dev", "--", "echo", "x", "-n", "5", check=True)
    assert p.stdout == "x -n 5\n"
    p = daemon.skyctl("launch", "-c", "dev", "--not-ours", "echo")
    assert p.returncode == 2 and "unrecognized arguments: --not-ours" in p.stderr
    assert jobs_of(daemon, "dev") == [(3, "SUCCEEDED"), (2, "SUCCEEDED"), (1, "SUCCEEDED")]


def test_down_stop_and_start_take_all_and_glob_patterns(daemon):
    for name in ("dev-1", "dev-2", "other"):
        daemon.skyctl("launch", "-c", name, "-d", "true", check=True)
    daemon.skyctl("stop", "dev-*", check=True)
    assert clusters(daemon) == {"dev-1": "STOPPED", "dev-2": "STOPPED", "other": "UP"}
    daemon.skyctl("start", "-a", check=True)
    assert set(clusters(daemon).values()) == {"UP"}
    p = daemon.skyctl("down", "nomatch-*")
    assert p.returncode == 2 and "no cluster matches 'nomatch-*'" in p.stderr
    p = daemon.skyctl("down")
    assert p.returncode == 2 and "-a/--all" in p.stderr
    daemon.skyctl("down", "-a", "-y", check=True)
    assert clusters(daemon) == {}


def test_queue_without_a_cluster_lists_every_clusters_jobs(daemon):
    daemon.skyctl("launch", "-c", "one", "echo", "1", check=True)
    daemon.skyctl("launch", "-c", "two", "-d", "sleep 30", check=True)
    p = daemon.skyctl("queue", check=True)
    assert "Job queue of cluster one" in p.stdout and "Job queue of cluster two" in p.stdout
    rows = json.loads(daemon.skyctl("queue", "--json", check=True).stdout)
    assert sorted((j["cluster"], j["job_id"]) for j in rows) == [("one", 1), ("two", 1)]
    rows = json.loads(daemon.skyctl("queue", "-s", "--json", check=True).stdout)
    assert [(j["cluster"], j["status"]) for j in rows] == [("two", "RUNNING")]
    rows = json.loads(daemon.skyctl("queue", "-u", "--json", check=True).stdout)
    assert len(rows) == 2


def test_a_missing_workdir_or_mount_source_is_refused_before_anything_is_queued(daemon, workdir):
    before = len(requests(daemon))
    p = daemon.skyctl("launch", "-c", "wd", "--workdir", str(workdir / "nowhere"), "echo never")
    assert p.returncode == 2 and f"workdir {workdir / 'nowhere'} does not exist" in p.stderr
    task = write_task(workdir, "mounts.yaml", f"file_mounts:\n  /data: {workdir}/absent\n"
                                              "run: echo never\n")
    p = daemon.skyctl("launch", "-c", "wd", str(task))
    assert p.returncode == 2 and f"the source {workdir}/absent does not exist" in p.stderr
    p = daemon.skyctl("jobs", "launch", "--workdir", str(task), "echo never")   # a file
    assert p.returncode == 2 and "is not a directory" in p.stderr
    assert len(requests(daemon)) == before and clusters(daemon) == {}     # nothing queued, no INIT


# ---- exit codes -----------------------------------------------------------------------------

def test_cancelling_what_already_ended_exits_0_everywhere(daemon, workdir):
    daemon.skyctl("launch", "-c", "dev", "-d", "sleep 30", check=True)
    daemon.skyctl("cancel", "dev", "1", check=True)
    daemon.wait_job("dev", 1)
    p = daemon.skyctl("cancel", "dev", "1")                       # already cancelled
    assert p.returncode == 0 and "already finished (CANCELLED)" in p.stderr and p.stdout == ""
    p = daemon.skyctl("cancel", "dev")                            # nothing unfinished
    assert p.returncode == 0 and "No running or pending job to cancel" in p.stderr
    daemon.skyctl("jobs", "launch", "echo managed", check=True)
    p = daemon.skyctl("jobs", "cancel", "1")                      # a finished managed job
    assert p.returncode == 0 and "already finished (SUCCEEDED)" in p.stderr
    [req] = [r for r in requests(daemon) if r.cluster == "dev" and r.name == "launch"]
    p = daemon.skyctl("api", "cancel", req.id)                    # a finished request
    assert p.returncode == 0 and "already finished (SUCCEEDED)" in p.stderr
    daemon.skyctl("stop", "dev", check=True)
    p = daemon.skyctl("stop", "dev")                              # a stopped cluster
    assert p.returncode == 0 and "already STOPPED" in p.stderr
    assert not [r for r in requests(daemon) if r.name == "stop" and r.status != "succeeded"]


def test_logs_of_a_failed_job_exits_1_followed_or_not(daemon):
    p = daemon.skyctl("launch", "-c", "dev", "echo before-failing; exit 7")
    assert p.returncode == 1 and p.stdout == "before-failing\n"
    for args in ((), ("--no-follow",), ("1",), ("1", "--no-follow")):
        p = daemon.skyctl("logs", "dev", *args)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stdout == "before-failing\n" and "FAILED (exit status 7)" in p.stderr
    p = daemon.skyctl("logs", "dev", "1", "--status")
    assert (p.returncode, p.stdout) == (1, "Job 1: FAILED\n")
    daemon.skyctl("exec", "dev", "-d", "sleep 30", check=True)
    p = daemon.skyctl("logs", "dev", "2", "--status")
    assert (p.returncode, p.stdout) == (6, "Job 2: RUNNING\n")       # not finished yet
    assert daemon.skyctl("logs", "dev", "2", "--no-follow").returncode == 0


def test_permission_denied_on_the_socket_exits_5(daemon, workdir, people):
    alice = people[0]
    os.chmod(workdir, 0o755)              # she reaches the socket; its mode (0600) stops her
    p = alice.skyctl(daemon, "status")
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert "permission denied on" in p.stderr


# ---- the output contract --------------------------------------------------------------------

def test_stdout_holds_the_jobs_output_and_nothing_else(daemon, workdir):
    daemon.skyctl("launch", "-c", "dev", "-d", "true", check=True)
    out = workdir / "out.txt"
    with open(out, "wb") as f:
        p = subprocess.run([sys.executable, "-m", "skyctl", "exec", "dev", "printf 'a\\nb'"],
                           stdout=f, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env=dict(os.environ, SKYD_HOST=daemon.host, NO_COLOR="1",
                                    PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == b"a\nb"
    assert "[skyd] request succeeded" in p.stderr and "accepted" in p.stderr


def test_statuses_are_in_one_case_everywhere(daemon):
    daemon.skyctl("launch", "-c", "dev", "true", check=True)
    reqs = json.loads(daemon.skyctl("api", "status", "-a", "--json", check=True).stdout)
    assert reqs and {r["status"] for r in reqs} <= {"SUCCEEDED", "RUNNING", "PENDING"}
    [job] = json.loads(daemon.skyctl("queue", "dev", "--json", check=True).stdout)
    assert job["status"] == "SUCCEEDED"
    table = daemon.skyctl("api", "status", "-a", check=True).stdout
    assert "SUCCEEDED" in table and "succeeded" not in table


@pytest.mark.parametrize("args, key", [
    (("launch", "-c", "j", "echo to-stderr"), "job_id"),
    (("exec", "j", "echo to-stderr"), "job_id"),
    (("stop", "j"), 0),
    (("start", "j"), 0),
    (("down", "j"), 0),
])
def test_lifecycle_commands_take_json(daemon, args, key):
    if args[0] != "launch":
        daemon.skyctl("launch", "-c", "j", "-d", "true", check=True)
    if args[0] == "start":
        daemon.skyctl("stop", "j", check=True)
    p = daemon.skyctl(*args, "--json", check=True)
    doc = json.loads(p.stdout)                      # one document, nothing else
    assert doc[key] is not None
    if key == "job_id":
        assert doc["job"]["status"] == "SUCCEEDED" and "to-stderr" in p.stderr
    else:
        assert doc[0]["cluster"] == "j" and doc[0]["status"] == "SUCCEEDED"


def test_yaml_errors_name_the_file_and_line(daemon, workdir):
    task = write_task(workdir, "broken.yaml", "name: x\nrun: [echo,\nsetup: a: b\n")
    p = daemon.skyctl("launch", str(task))
    assert p.returncode == 2
    assert f"{task} is not valid YAML: line 3" in p.stderr and "<unicode string>" not in p.stderr
    task = write_task(workdir, "field.yaml", "name: x\nresources:\n  gpus: 1\nrun: echo\n")
    p = daemon.skyctl("launch", str(task))
    assert p.returncode == 2 and f"{task}, line 3: unsupported field `resources.gpus`" in p.stderr


# ---- messages -------------------------------------------------------------------------------

def test_bare_skyctl_prints_the_commands_by_group():
    p = subprocess.run([sys.executable, "-m", "skyctl"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stderr == ""
    groups = re.findall(r"^(\w[\w ()]*):$", p.stdout, re.M)
    assert groups == ["Clusters", "Jobs on a cluster", "Managed jobs", "Infrastructure",
                      "Requests (API server)", "Interactive"]
    for word in ("launch", "exec", "status", "queue", "logs", "cancel", "stop", "start", "down",
                 "autostop", "jobs launch|queue|logs|cancel", "check (infra)", "api", "shell"):
        assert re.search(rf"^  {re.escape(word)}(\s|$)", p.stdout, re.M), word


def test_an_empty_host_is_an_error(daemon):
    for args in (("--host", "", "status"), ("status", "--host", ""), ("status", "--host=")):
        p = daemon.skyctl(*args)
        assert p.returncode == 2 and "--host is empty" in p.stderr, (args, p.stderr)


def test_the_default_endpoint_is_named_plainly(workdir):
    env = {k: v for k, v in os.environ.items() if k != "SKYD_HOST"}
    env.update(XDG_STATE_HOME=str(workdir), XDG_CONFIG_HOME=str(workdir), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "skyctl", "status"], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert p.returncode == 4
    assert f"no skyd socket at {workdir}/skyd/skyd.sock (the per-user default)" in p.stderr
    assert "(default (" not in p.stderr


def test_check_names_the_pools_file_the_daemon_reads(make_daemon, workdir):
    pools = workdir / "my-pools.yaml"
    d = make_daemon("--node-pools", str(pools))
    for args in (("check",), ("infra",)):
        p = d.skyctl(*args, check=True)
        assert p.stdout == "" and f"the daemon reads them from {pools}." in p.stderr
    assert "<state-dir>" not in p.stderr


def test_autostop_shows_in_the_status_table(daemon):
    daemon.skyctl("launch", "-c", "auto", "-i", "30", "--down", "-d", "true", check=True)
    daemon.skyctl("launch", "-c", "never", "-d", "true", check=True)
    lines = daemon.skyctl("status", check=True).stdout.splitlines()
    head = lines[0].split()
    assert "AUTOSTOP" in head
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "30m (down)" in rows["auto"] and " - " in rows["never"]


def test_the_shell_and_the_cli_do_not_import_each_other():
    out = subprocess.run([sys.executable, "-c", "import sys, skyctl.shell; "
                          "print('skyctl.cli' in sys.modules)"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"
    out = subprocess.run([sys.executable, "-c", "import sys, skyctl.cli; "
                          "print('skyctl.shell' in sys.modules)"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "False"
