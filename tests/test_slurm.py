"""The `slurm` infra on a real Slurm cluster (tests/slurm.py: munged, slurmctld and slurmd
on loopback), through a real daemon and the real skyctl: a cluster is an allocation,
setup and jobs are srun steps in it, work runs as the user who asked."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import wait_until, write_task
from slurm import counting_bin, slurm_cluster  # noqa: F401 - the fixture
from skyd import protocol

TASK = """
resources:
  infra: slurm
  cpus: 1
  memory: 0.25
"""


def slurm_config(workdir: Path, cluster, name: str = "config.yaml", **settings) -> tuple[Path, str]:
    """A daemon config whose `slurm:` section points at the test cluster, and the directory
    (under each user's home) of its clusters' files: one of its own per config."""
    files_dir = f".skyd/slurm-test-{secrets.token_hex(3)}"
    body = {"slurm_conf": str(cluster.conf), "files_dir": files_dir, "watch_interval": 0.5,
            **settings}
    path = workdir / name
    path.write_text("slurm:\n" + "".join(f"  {k}: {v}\n" for k, v in body.items()))
    return path, files_dir


def _forget_files(files_dir: str) -> None:
    for home in ("/root", "/home/skyd-alice", "/home/skyd-bob"):
        shutil.rmtree(Path(home) / files_dir, ignore_errors=True)


@pytest.fixture
def on_slurm(make_daemon, slurm_cluster, workdir):  # noqa: F811
    """A daemon (root) with the slurm infra on the test cluster."""
    config, files_dir = slurm_config(workdir, slurm_cluster)
    d = make_daemon("--config", str(config))
    d.slurm = slurm_cluster
    d.files_dir = files_dir
    yield d
    slurm_cluster.cancel_all()
    _forget_files(d.files_dir)


def cluster(d, name: str) -> protocol.ClusterRecord:
    [c] = [c for c in d.call(protocol.ClusterStatus(all_users=True)) if c.name == name]
    return c


def allocation_state(slurm, job_id: str) -> str:
    return next((j["state"] for j in slurm.jobs() if j["id"] == job_id), "")


def steps(slurm, job_id: str) -> list[str]:
    """The step names of an allocation (its batch step aside)."""
    out = slurm.run(["squeue", "-h", "-s", "-j", job_id, "-o", "%j"], check=False).stdout
    return [s for s in out.split() if s != "batch"]


# ---- a cluster's life ---------------------------------------------------------------------

def test_launch_exec_logs_cancel_down(on_slurm, workdir):
    src = workdir / "src"
    src.mkdir()
    (src / "data.txt").write_text("from-workdir\n")
    task = write_task(workdir, "t.yaml", TASK + f"""
workdir: {src}
envs:
  GREETING: hi
setup: echo "setup rank=$SKYPILOT_SETUP_NODE_RANK of $SKYPILOT_SETUP_NUM_NODES"
run: |
  echo "$GREETING rank=$SKYPILOT_NODE_RANK nodes=$SKYPILOT_NUM_NODES ips=$SKYPILOT_NODE_IPS"
  echo "alloc=$SLURM_JOB_ID step=$SLURM_JOB_NAME cpus=$SLURM_CPUS_ON_NODE"
  cat data.txt
""")
    p = on_slurm.skyctl("launch", "-c", "s1", str(task))
    assert p.returncode == 0, p.stderr + p.stdout
    c = cluster(on_slurm, "s1")
    alloc = c.nodes[0].allocation
    assert (c.infra, c.status, c.nodes[0].host, c.nodes[0].ip, c.nodes[0].cpus) == \
        ("slurm", "UP", "node1", "127.0.0.1", 1.0)
    assert "setup rank=0 of 1" in p.stdout
    assert "hi rank=0 nodes=1 ips=127.0.0.1" in p.stdout
    assert f"alloc={alloc} step=skyd-job-1 cpus=1" in p.stdout
    assert "from-workdir" in p.stdout
    [job] = [j for j in on_slurm.slurm.jobs() if j["id"] == alloc]
    assert (job["name"], job["user"], job["state"]) == ("skyd-s1", "root", "RUNNING")

    e = on_slurm.skyctl("exec", "s1", "echo exec-step $SLURM_JOB_NAME; exit 7")
    assert "exec-step skyd-job-2" in e.stdout
    assert on_slurm.wait_job("s1", 2).exit_code == 7
    assert "exec-step skyd-job-2" in on_slurm.skyctl("logs", "s1", "2", "--no-follow").stdout

    # cancel: the job's step ends on the node; the allocation holds on
    rid = on_slurm.skyctl("exec", "s1", "--async", "sleep 300").stdout.strip()
    on_slurm.wait_request(rid)
    assert wait_until(lambda: steps(on_slurm.slurm, alloc) == ["skyd-job-3"], 10)
    assert on_slurm.skyctl("cancel", "s1", "3", "-y").returncode == 0
    assert on_slurm.wait_job("s1", 3).status == "CANCELLED"
    assert wait_until(lambda: steps(on_slurm.slurm, alloc) == [], 10)
    assert allocation_state(on_slurm.slurm, alloc) == "RUNNING"

    files = Path("/root") / on_slurm.files_dir / "s1"
    assert (files / "sky_workdir" / "data.txt").exists()
    d = on_slurm.skyctl("down", "s1", "-y")
    assert d.returncode == 0, d.stderr
    assert wait_until(lambda: allocation_state(on_slurm.slurm, alloc) == "CANCELLED", 10)
    assert not files.exists()
    assert on_slurm.call(protocol.ClusterStatus()) == []


def test_stop_is_refused_and_an_allocation_slurm_ended_shows_why(on_slurm, workdir):
    task = write_task(workdir, "t.yaml", TASK + "run: echo up\n")
    assert on_slurm.skyctl("launch", "-c", "s2", str(task)).returncode == 0
    p = on_slurm.skyctl("stop", "s2", "-y")
    assert p.returncode != 0 and "Slurm cannot stop it" in p.stderr
    assert cluster(on_slurm, "s2").status == "UP"

    # Slurm ends the allocation under a running job (here: an admin's scancel)
    rid = on_slurm.skyctl("exec", "s2", "--async", "sleep 300").stdout.strip()
    on_slurm.wait_request(rid)
    alloc = cluster(on_slurm, "s2").nodes[0].allocation
    assert wait_until(lambda: steps(on_slurm.slurm, alloc) == ["skyd-job-2"], 10)
    on_slurm.slurm.run(["scancel", alloc])
    job = on_slurm.wait_job("s2", 2)
    assert (job.status, job.exit_code) == ("FAILED", None)       # lost, not the task's failure
    ended = f"its allocation ended: Slurm job {alloc} CANCELLED"
    assert wait_until(lambda: cluster(on_slurm, "s2").status_reason == ended, 10)
    assert cluster(on_slurm, "s2").status == "STOPPED"
    assert f"Slurm job {alloc} CANCELLED" in on_slurm.skyctl("status").stderr     # "Why:"
    p = on_slurm.skyctl("exec", "s2", "true")
    assert p.returncode != 0 and "STOPPED" in p.stderr

    # start asks Slurm for a new allocation, shaped as the launch asked; one that Slurm
    # then preempts and requeues has lost its nodes: the cluster is STOPPED again
    s = on_slurm.skyctl("start", "s2", "-y")
    assert s.returncode == 0, s.stderr
    c = cluster(on_slurm, "s2")
    assert c.status == "UP" and c.nodes[0].allocation not in ("", alloc)
    e = on_slurm.skyctl("exec", "s2", "echo again on $SLURM_JOB_ID with $SLURM_CPUS_ON_NODE")
    assert f"again on {c.nodes[0].allocation} with 1" in e.stdout
    on_slurm.slurm.run(["scontrol", "requeuehold", c.nodes[0].allocation])
    assert wait_until(lambda: cluster(on_slurm, "s2").status_reason.startswith(
        "Slurm requeued its allocation"), 10), cluster(on_slurm, "s2")
    assert cluster(on_slurm, "s2").status == "STOPPED"
    assert on_slurm.skyctl("down", "s2", "-y").returncode == 0
    assert not [j for j in on_slurm.slurm.jobs() if j["name"] == "skyd-s2"
                and j["state"] not in ("CANCELLED", "COMPLETED")]


def test_autostop_tears_a_slurm_cluster_down(on_slurm, workdir):
    task = write_task(workdir, "t.yaml", TASK + "run: echo up\n")
    assert on_slurm.skyctl("launch", "-c", "a1", str(task)).returncode == 0
    alloc = cluster(on_slurm, "a1").nodes[0].allocation
    assert on_slurm.skyctl("autostop", "a1", "-i", "0.02", "-y").returncode == 0   # stop, not down
    assert wait_until(lambda: on_slurm.call(protocol.ClusterStatus()) == [], 30)
    assert wait_until(lambda: allocation_state(on_slurm.slurm, alloc) == "CANCELLED", 10)


def test_a_pending_allocation_shows_slurms_reason_and_its_launch_can_be_cancelled(on_slurm, workdir):
    slurm = on_slurm.slurm
    hog = slurm.run(["sbatch", "--parsable", f"--cpus-per-task={slurm.cpus}", "--mem=100",
                     "--output=/dev/null", "--wrap", "sleep 300"]).stdout.strip()
    assert wait_until(lambda: allocation_state(slurm, hog) == "RUNNING", 15)
    task = write_task(workdir, "t.yaml", TASK + "run: echo never\n")
    rid = on_slurm.skyctl("launch", "-c", "s3", "--async", "-y", str(task)).stdout.strip()
    assert wait_until(lambda: "PENDING (Resources)" in cluster(on_slurm, "s3").status_reason, 20)
    c = cluster(on_slurm, "s3")
    assert c.status == "INIT" and c.status_reason.startswith("waiting for Slurm: Slurm job ")
    assert "PENDING (Resources)" in on_slurm.skyctl("status").stderr
    log = on_slurm.skyctl("api", "logs", rid, "--no-follow").stdout + \
        on_slurm.skyctl("api", "logs", rid, "--no-follow").stderr
    assert "Waiting for Slurm: Slurm job" in log and "(Resources)" in log
    [pending] = [j for j in slurm.jobs() if j["name"] == "skyd-s3"]

    assert on_slurm.skyctl("api", "cancel", rid, "-y").returncode == 0
    assert on_slurm.wait_request(rid).status == "cancelled"
    assert wait_until(lambda: allocation_state(slurm, pending["id"]) == "CANCELLED", 10)
    assert on_slurm.skyctl("down", "s3", "-y").returncode == 0


def test_waiting_launches_ask_slurm_nothing_the_daemon_asks_once_per_interval(
        make_daemon, slurm_cluster, workdir):  # noqa: F811
    bin_dir, calls = counting_bin(workdir / "bin")
    config, files_dir = slurm_config(workdir, slurm_cluster, bin_dir=bin_dir, watch_interval=1.0)
    d = make_daemon("--config", str(config))
    try:
        hog = slurm_cluster.run(["sbatch", "--parsable", f"--cpus-per-task={slurm_cluster.cpus}",
                                 "--mem=100", "--output=/dev/null", "--wrap", "sleep 300"])
        assert wait_until(lambda: allocation_state(slurm_cluster, hog.stdout.strip()) == "RUNNING", 15)
        task = write_task(workdir, "t.yaml", TASK + "run: echo never\n")
        names = [f"w{i}" for i in range(4)]
        rids = [d.skyctl("launch", "-c", n, "--async", "-y", str(task)).stdout.strip() for n in names]
        assert wait_until(lambda: all("PENDING (" in cluster(d, n).status_reason for n in names), 30)
        time.sleep(2.5)                             # every launch reads the daemon's board now
        seen = len(calls.read_text().splitlines())
        time.sleep(6)
        window = [line.split() for line in calls.read_text().splitlines()[seen:]]
        from_daemon = [cmd for ppid, cmd, _ in window if ppid == str(d.proc.pid)]
        assert [cmd for ppid, cmd, _ in window if ppid != str(d.proc.pid)] == []
        assert set(from_daemon) == {"squeue"} and 3 <= len(from_daemon) <= 8, from_daemon
        for rid in rids:
            d.skyctl("api", "cancel", rid, "-y")
        for n in names:
            assert d.skyctl("down", n, "-y").returncode == 0
        assert not [j for j in slurm_cluster.jobs() if j["name"].startswith("skyd-w")
                    and j["state"] == "PENDING"]
    finally:
        slurm_cluster.cancel_all()
        _forget_files(files_dir)


def test_a_first_launch_asks_slurm_only_to_submit_and_for_addresses_ahead(
        make_daemon, slurm_cluster, workdir):  # noqa: F811
    """No squeue before its sbatch (nothing can be there yet) and, once its allocation
    runs, no command at all: its nodes from the marker, their addresses from the sinfo
    it made while Slurm started the allocation."""
    bin_dir, calls = counting_bin(workdir / "bin")
    config, files_dir = slurm_config(workdir, slurm_cluster, bin_dir=bin_dir)
    d = make_daemon("--config", str(config))
    try:
        task = write_task(workdir, "t.yaml", TASK + "run: echo ips=$SKYPILOT_NODE_IPS\n")
        p = d.skyctl("launch", "-c", "f1", str(task), "-y")
        assert p.returncode == 0 and "ips=127.0.0.1" in p.stdout, p.stderr
        by_launch = [cmd for ppid, cmd, _ in (line.split() for line in calls.read_text().splitlines())
                     if ppid != str(d.proc.pid) and cmd != "srun"]     # the job's step aside
        assert by_launch == ["sbatch", "sinfo"]
        assert d.skyctl("down", "f1", "-y").returncode == 0
    finally:
        slurm_cluster.cancel_all()
        _forget_files(files_dir)


def test_gpus_are_slurm_gres_and_cuda_visible_devices_is_slurms(on_slurm, workdir):
    task = write_task(workdir, "g.yaml", """
resources:
  infra: slurm
  cpus: 1
  memory: 0.25
  accelerators: [H100:1, FAKE:2]
run: echo "gpus=$SKYPILOT_NUM_GPUS_PER_NODE cuda=$CUDA_VISIBLE_DEVICES"
""")
    p = on_slurm.skyctl("launch", "-c", "g1", str(task), "-y")
    assert p.returncode == 0, p.stderr
    assert "gpus=2 cuda=0,1" in p.stdout
    assert "Slurm refused gpu:H100:1" in p.stderr and "Slurm refused gpu:FAKE:2" in p.stderr
    alloc = cluster(on_slurm, "g1").nodes[0].allocation
    out = on_slurm.slurm.run(["scontrol", "show", "job", alloc]).stdout
    assert "gres:gpu:fake:2" in out or "gres/gpu:fake=2" in out, out
    e = on_slurm.skyctl("exec", "g1", "echo step sees $CUDA_VISIBLE_DEVICES")
    assert "step sees 0,1" in e.stdout
    for i, (gpus, expected) in enumerate([
            ("H100:1", "Slurm refused every GPU option of the task (gpu:H100:1, gpu:h100:1)"),
            ("fake:3", "no node of the default partition offers what the task asks for "
                       "(--gres=gpu:fake:3)"),
            ("[A100:2, fake:3]", "Slurm refused every GPU option of the task (gpu:A100:2, "
                                 "gpu:a100:2, gpu:fake:3)")]):
        bad = write_task(workdir, f"b{i}.yaml", f"resources:\n  infra: slurm\n  accelerators: {gpus}\n"
                                                "run: echo never\n")
        p = on_slurm.skyctl("launch", "-c", f"gb{i}", str(bad), "-y")
        assert p.returncode != 0 and expected in p.stderr, p.stderr
        on_slurm.skyctl("down", f"gb{i}", "-y")
    assert on_slurm.skyctl("down", "g1", "-y").returncode == 0


# ---- people -------------------------------------------------------------------------------

def test_two_users_each_submit_as_themselves(make_daemon, workdir, people, slurm_cluster):  # noqa: F811
    import users
    os.chmod(workdir, 0o755)
    config, files_dir = slurm_config(workdir, slurm_cluster)
    d = make_daemon("--socket-group", users.GROUP, "--config", str(config))
    try:
        task = write_task(workdir, "t.yaml", TASK + "run: echo \"I am $(id -un) in $HOME\"\n")
        os.chmod(task, 0o644)
        for person in people:
            p = person.skyctl(d, "launch", "-c", f"c-{person.name}", str(task), "-y")
            assert p.returncode == 0, p.stderr
            assert f"I am {person.name} in {person.home}" in p.stdout
        names = {j["name"]: j["user"] for j in slurm_cluster.jobs() if j["state"] == "RUNNING"}
        assert names == {f"skyd-c-{p.name}": p.name for p in people}
        alice, bob = people
        files = Path(alice.home) / files_dir / f"c-{alice.name}"
        assert files.stat().st_uid == alice.uid and (files.stat().st_mode & 0o077) == 0
        # bob sees and reaches only his own
        p = bob.skyctl(d, "status")
        assert f"c-{bob.name}" in p.stdout and f"c-{alice.name}" not in p.stdout
        p = bob.skyctl(d, "down", f"c-{alice.name}", "-y")
        assert p.returncode != 0 and "does not exist" in p.stderr
        for person in people:
            assert person.skyctl(d, "down", f"c-{person.name}", "-y").returncode == 0
        assert not files.exists()
        assert not [j for j in slurm_cluster.jobs() if j["state"] == "RUNNING"]
    finally:
        slurm_cluster.cancel_all()
        _forget_files(files_dir)


# ---- managed jobs -------------------------------------------------------------------------

def wait_managed(d, job_id: int, until, timeout: float = 90.0) -> protocol.ManagedJobRecord:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = {j.job_id: j for j in d.call(protocol.JobsQueue(all_users=True))}.get(job_id)
        if job is not None and until(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"managed job {job_id}: {job}")


def test_managed_jobs_succeed_and_recover_from_an_allocation_cancelled_outside(on_slurm, workdir):
    task = write_task(workdir, "ok.yaml", TASK + "run: echo managed on $SLURM_JOB_ID\n")
    p = on_slurm.skyctl("jobs", "launch", "-y", str(task))
    assert p.returncode == 0, p.stderr
    assert "managed on " in p.stdout
    job = wait_managed(on_slurm, 1, lambda j: j.status == "SUCCEEDED" and not j.teardown_pending)
    assert (job.infra, job.recoveries) == ("slurm", 0)
    assert not [j for j in on_slurm.slurm.jobs() if j["state"] == "RUNNING"]

    marker = workdir / "first-attempt"
    task = write_task(workdir, "lost.yaml", TASK + f"""
run: |
  if [ -e {marker} ]; then echo second attempt; exit 0; fi
  touch {marker}; sleep 300
""")
    assert on_slurm.skyctl("jobs", "launch", "--async", "-y", str(task)).returncode == 0
    wait_managed(on_slurm, 2, lambda j: j.status == "RUNNING")
    assert wait_until(marker.exists, 20)
    alloc = cluster(on_slurm, "managed-2").nodes[0].allocation
    on_slurm.slurm.run(["scancel", alloc])
    job = wait_managed(on_slurm, 2, lambda j: j.status not in ("PENDING", "STARTING", "RUNNING",
                                                              "RECOVERING") and not j.teardown_pending)
    assert (job.status, job.recoveries, job.restarts_on_errors) == ("SUCCEEDED", 1, 0)
    assert "second attempt" in on_slurm.skyctl("jobs", "logs", "2", "--no-follow").stdout
    assert wait_until(lambda: allocation_state(on_slurm.slurm, alloc) == "CANCELLED", 10)


# ---- restarts and faults ------------------------------------------------------------------

def test_after_a_restart_the_daemon_learns_what_slurm_did_meanwhile(on_slurm, workdir):
    task = write_task(workdir, "t.yaml", TASK + "run: echo up\n")
    for name in ("r1", "r2"):
        assert on_slurm.skyctl("launch", "-c", name, str(task)).returncode == 0
    rid = on_slurm.skyctl("exec", "r1", "--async", "sleep 2; echo finished-while-down").stdout.strip()
    on_slurm.wait_request(rid)
    rid = on_slurm.skyctl("exec", "r2", "--async", "sleep 300").stdout.strip()
    on_slurm.wait_request(rid)
    alloc = cluster(on_slurm, "r2").nodes[0].allocation
    assert wait_until(lambda: steps(on_slurm.slurm, alloc) == ["skyd-job-2"], 10)
    on_slurm.stop(signal.SIGTERM)
    on_slurm.slurm.run(["scancel", alloc])
    time.sleep(2.5)
    on_slurm.start()
    assert on_slurm.wait_job("r1", 2).status == "SUCCEEDED"
    assert "finished-while-down" in on_slurm.skyctl("logs", "r1", "2", "--no-follow").stdout
    assert (on_slurm.wait_job("r2", 2).status, cluster(on_slurm, "r1").status) == ("FAILED", "UP")
    assert wait_until(lambda: "CANCELLED" in cluster(on_slurm, "r2").status_reason, 10)
    assert cluster(on_slurm, "r2").status == "STOPPED"


def test_a_launch_rerun_after_a_crash_adopts_the_allocation_it_submitted(on_slurm, workdir):
    """A first launch submits without looking for an allocation (an squeue off its path);
    one re-run after the daemon was killed between its sbatch and the allocation's start
    must find the one it submitted, not submit a second."""
    slurm = on_slurm.slurm
    hog = slurm.run(["sbatch", "--parsable", f"--cpus-per-task={slurm.cpus}", "--mem=100",
                     "--output=/dev/null", "--wrap", "sleep 300"]).stdout.strip()
    assert wait_until(lambda: allocation_state(slurm, hog) == "RUNNING", 15)
    task = write_task(workdir, "t.yaml", TASK + "run: echo adopted on $SLURM_JOB_ID\n")
    rid = on_slurm.skyctl("launch", "-c", "s5", "--async", "-y", str(task)).stdout.strip()
    assert wait_until(lambda: "PENDING (Resources)" in cluster(on_slurm, "s5").status_reason, 20)
    [submitted] = [j for j in slurm.jobs() if j["name"] == "skyd-s5"]
    on_slurm.stop(signal.SIGKILL)                   # its worker dies with it
    on_slurm.start()                                # the launch runs again

    def log() -> str:
        p = on_slurm.skyctl("api", "logs", rid, "--no-follow")
        return p.stdout + p.stderr
    assert wait_until(lambda: f"Using this cluster's allocation: Slurm job {submitted['id']} "
                      "PENDING" in log(), 20), log()
    slurm.run(["scancel", hog])
    assert on_slurm.wait_request(rid, timeout=60).status == "succeeded"
    assert cluster(on_slurm, "s5").nodes[0].allocation == submitted["id"]
    assert [j["id"] for j in slurm.jobs() if j["name"] == "skyd-s5"] == [submitted["id"]]
    assert on_slurm.wait_job("s5", 1).status == "SUCCEEDED"
    assert f"adopted on {submitted['id']}" in on_slurm.skyctl("logs", "s5", "1", "--no-follow").stdout
    assert on_slurm.skyctl("down", "s5", "-y").returncode == 0


def test_requests_slurm_can_never_satisfy_fail_clearly_and_leave_nothing(on_slurm, workdir):
    cases = [  # (top-level fields, resources, what the error says)
        ("", "  infra: slurm/nope\n", "Slurm has no partition 'nope'"),
        ("", "  infra: slurm\n  cpus: 64\n", "Slurm will never start this allocation"),
        ("", "  infra: slurm\n  memory: 4096\n", "offers what the task asks for (--mem=4194304M)"),
        ("num_nodes: 3\n", "  infra: slurm\n", "Slurm will never start this allocation"),
    ]
    for i, (top, resources, expected) in enumerate(cases):
        task = write_task(workdir, f"bad{i}.yaml", f"{top}resources:\n{resources}run: echo never\n")
        p = on_slurm.skyctl("launch", "-c", f"bad{i}", str(task), "-y")
        assert p.returncode != 0 and expected in p.stderr, (resources, p.stderr)
    time.sleep(0.5)
    assert not [j for j in on_slurm.slurm.jobs() if j["state"] in ("PENDING", "RUNNING")]
    for i in range(len(cases)):
        assert on_slurm.skyctl("down", f"bad{i}", "-y").returncode == 0


def test_no_slurm_config_or_commands_or_munge_is_a_clear_error(make_daemon, workdir,
                                                               slurm_cluster):  # noqa: F811
    task = write_task(workdir, "t.yaml", TASK + "run: echo never\n")
    plain = make_daemon(name="plain")
    p = plain.skyctl("launch", "-c", "x", str(task), "-y")
    assert p.returncode != 0 and "this server has no Slurm configured" in p.stderr

    nobin = make_daemon("--config", str(slurm_config(workdir, slurm_cluster, "nobin.yaml",
                                                      bin_dir="/nonexistent/bin")[0]), name="nobin")
    p = nobin.skyctl("launch", "-c", "x", str(task), "-y")
    assert p.returncode != 0 and "Slurm's commands are not installed on the server" in p.stderr

    # munge not running: a slurm.conf that points at a munge socket nobody serves
    conf = workdir / "nomunge.conf"
    conf.write_text(slurm_cluster.conf.read_text().replace(
        f"AuthInfo=socket={slurm_cluster.munge_socket}", f"AuthInfo=socket={workdir}/none.sock"))
    config, files_dir = slurm_config(workdir, slurm_cluster, "nomunge.yaml", slurm_conf=conf)
    nomunge = make_daemon("--config", str(config), name="nomunge")
    started = time.monotonic()
    p = nomunge.skyctl("launch", "-c", "x", str(task), "-y", timeout=60)
    assert p.returncode != 0 and "Slurm cannot authenticate this server" in p.stderr
    assert "munged" in p.stderr and time.monotonic() - started < 45
    assert nomunge.skyctl("down", "x", "-y").returncode != 0      # Slurm unreachable: kept
    assert [c.name for c in nomunge.call(protocol.ClusterStatus())] == ["x"]
    _forget_files(files_dir)


def test_a_launch_rides_out_a_controller_restart_and_down_waits_for_it(on_slurm, workdir):
    slurm = on_slurm.slurm
    task = write_task(workdir, "t.yaml", TASK + "run: echo survived\n")
    slurm.stop_controller()
    try:
        rid = on_slurm.skyctl("launch", "-c", "s4", "--async", "-y", str(task)).stdout.strip()
        assert wait_until(lambda: "does not answer" in on_slurm.skyctl(
            "api", "logs", rid, "--no-follow").stdout + on_slurm.skyctl(
            "api", "logs", rid, "--no-follow").stderr, 30)
    finally:
        slurm.start_controller()
    assert on_slurm.wait_request(rid, timeout=90).status == "succeeded", \
        on_slurm.skyctl("api", "logs", rid, "--no-follow").stderr
    assert on_slurm.wait_job("s4", 1).status == "SUCCEEDED"
    slurm.stop_controller()
    try:
        p = on_slurm.skyctl("down", "s4", "-y", timeout=90)
        assert p.returncode != 0 and "the cluster stays" in p.stderr
        assert cluster(on_slurm, "s4").name == "s4"
    finally:
        slurm.start_controller()
    assert on_slurm.skyctl("down", "s4", "-y").returncode == 0
    assert on_slurm.call(protocol.ClusterStatus()) == []


def test_the_slurm_section_is_checked(workdir, monkeypatch):
    from skyd.server import config
    bad = {"partition: -x": "is not a Slurm name", "time_limit: soon": "is not a Slurm time",
           "bin_dir: relative": "must be an absolute path", "colour: red": "unknown setting",
           "files_dir: /abs": "relative to each user's home"}
    for line, expected in bad.items():
        path = workdir / "c.yaml"
        path.write_text(f"slurm:\n  {line}\n")
        with pytest.raises(config.ConfigError, match=expected):
            config.load({}, env={}, config_file=path)
    path.write_text("slurm:\n")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/x.conf")      # the daemon's own: passed on
    cfg = config.load({}, env={}, config_file=path)
    assert cfg.slurm is not None and cfg.slurm.slurm_conf == "/etc/slurm/x.conf"
    path.write_text("log_level: INFO\n")
    assert config.load({}, env={}, config_file=path).slurm is None      # off unless configured
