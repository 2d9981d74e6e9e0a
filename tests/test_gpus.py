"""GPUs on the daemon's own host (infra `local`), through a real daemon and the real skyctl:
a fake nvidia-smi (tests/gpufakes.py) first on the daemon's PATH reports the GPUs. Several
clusters share the host, each with its own GPUs; what does not fit waits with its reason
and starts when a slice frees; jobs within a cluster get disjoint CUDA_VISIBLE_DEVICES;
the ledger survives kill -9; a host that shrinks or whose nvidia-smi fails is reported."""

from __future__ import annotations

import os
import re
import shutil

import msgspec
import pytest

from conftest import wait_until, write_task
from gpufakes import FakeGpus
from skyd import protocol

SLEEPER = "echo CVD=[$CUDA_VISIBLE_DEVICES] N=$SKYPILOT_NUM_GPUS_PER_NODE; sleep 300"


def start_with_gpus(make_daemon, workdir, monkeypatch, gpus, *args, name="state"):
    fake = FakeGpus(workdir / f"{name}-bin", gpus)
    monkeypatch.setenv("PATH", f"{fake.bin}:{os.environ['PATH']}")
    d = make_daemon(*args, name=name)
    d.fake = fake
    total = sum(n for _, n in gpus)
    assert wait_until(lambda: len(local(d).gpus) == total, 20), local(d)
    return d


@pytest.fixture
def box(make_daemon, workdir, monkeypatch):
    """A daemon on a host with 4× H100."""
    return start_with_gpus(make_daemon, workdir, monkeypatch, [("H100", 4)])


def local(d, caller=None) -> protocol.GpuHost:
    [host] = [h for h in (caller or d).call(protocol.GpuStatus()) if h.host == "local"]
    return host


def held(d) -> dict[int, str]:
    """GPU index -> the cluster holding it."""
    return {g.index: g.cluster for g in local(d).gpus if g.user}


def launch(d, name: str, gpus: str | None, run: str = SLEEPER, *extra: str):
    args = ["launch", "-c", name, "-d", *(["--gpus", gpus] if gpus else []), *extra, run]
    return d.skyctl(*args, check=True)


def cvd(d, cluster: str, job: int) -> list[int]:
    """The GPU indices a job saw in CUDA_VISIBLE_DEVICES (once it printed them)."""
    out = {}

    def printed() -> bool:
        text = d.skyctl("logs", cluster, str(job), "--no-follow").stdout
        m = re.search(r"CVD=\[([0-9,]*)\] N=(\d+)", text)
        if m:
            out["gpus"] = [int(i) for i in m.group(1).split(",") if i]
        return m is not None
    assert wait_until(printed, 20), d.skyctl("logs", cluster, str(job), "--no-follow").stdout
    return out["gpus"]


def submit(d, command: str, *args: str) -> str:
    p = d.skyctl(command, "--async", *args, check=True)
    return p.stdout.strip().splitlines()[-1]


def test_clusters_share_the_host_each_with_its_own_gpus_and_a_late_one_waits(box):
    launch(box, "c1", "H100:2")
    launch(box, "c2", "H100:2")
    a, b = cvd(box, "c1", 1), cvd(box, "c2", 1)
    assert len(a) == len(b) == 2 and not set(a) & set(b)
    assert "N=2" in box.skyctl("logs", "c1", "1", "--no-follow").stdout
    assert held(box) == {a[0]: "c1", a[1]: "c1", b[0]: "c2", b[1]: "c2"}
    # Nothing free: it waits, in order, saying for what.
    rid = submit(box, "launch", "-c", "c3", "--gpus", "H100:1", "-d", SLEEPER)
    why = "waiting for 1× H100: 0 of 4 free on local"
    assert wait_until(lambda: box.request(rid).waiting == why), box.request(rid)
    assert box.request(rid).status == "pending"
    assert why in box.skyctl("api", "status").stdout
    logs = box.skyctl("api", "logs", rid, "--no-follow")
    assert why in logs.stdout + logs.stderr
    # A slice frees: it starts there.
    box.skyctl("down", "c1", check=True)
    assert box.wait_request(rid).status == "succeeded"
    assert set(cvd(box, "c3", 1)) < set(a)
    # The listings say who holds what.
    text = box.skyctl("gpus").stdout
    assert re.search(r"local\s+local\s+H100\s+4\s+1\s+root/c", text), text
    assert "root/c2 (" in text and "root/c3 (" in text
    assert "gpus=H100:1" in box.skyctl("status").stdout
    p = box.skyctl("gpus", "--json")
    [host] = msgspec.json.decode(p.stdout, type=list[protocol.GpuHost])
    assert sorted(g.cluster for g in host.gpus if g.user) == ["c2", "c2", "c3"]
    assert all(g.model == "H100" and g.memory_mib == 81559 for g in host.gpus)


def test_jobs_on_a_cluster_hold_disjoint_gpus_and_queue_for_them(box, workdir):
    launch(box, "c", "H100:4", "true")
    box.wait_job("c", 1)
    job = "echo CVD=[$CUDA_VISIBLE_DEVICES] N=$SKYPILOT_NUM_GPUS_PER_NODE; sleep 4"
    for _ in range(3):
        box.skyctl("exec", "c", "-d", "--gpus", "H100:2", job, check=True)
    two, three = cvd(box, "c", 2), cvd(box, "c", 3)
    assert len(two) == len(three) == 2 and not set(two) & set(three)
    # The third waits for GPUs (the cluster holds 4) while the first two run.
    jobs = {j.job_id: j.status for j in box.call(protocol.JobQueue(cluster="c"))}
    assert jobs[4] == "PENDING", jobs
    assert set(cvd(box, "c", 4)) in (set(two), set(three))
    # A job that asked for none sees none of the host's GPUs.
    box.skyctl("exec", "c", "-d", job.replace("sleep 4", "true"), check=True)
    assert cvd(box, "c", 5) == []
    assert "N=0" in box.skyctl("logs", "c", "5", "--no-follow").stdout
    # Setup sees what the node holds.
    box.skyctl("down", "c", check=True)
    task = write_task(workdir, "t.yaml", "resources:\n  accelerators: {H100: 1}\n"
                      "setup: echo SETUP=[$CUDA_VISIBLE_DEVICES] $SKYPILOT_NUM_GPUS_PER_NODE\n"
                      "run: 'true'\n")
    p = box.skyctl("launch", "-c", "s", str(task), check=True)
    assert re.search(r"SETUP=\[\d\] 1", p.stdout), p.stdout


def test_what_can_never_fit_is_refused_naming_what_exists(box, workdir):
    p = box.skyctl("launch", "-c", "x", "--gpus", "B200:1", "true")
    assert p.returncode == 2
    assert "can never give 1× B200: it has 4× H100 on local" in p.stderr, p.stderr
    p = box.skyctl("launch", "-c", "x", "--gpus", "H100:5", "true")
    assert p.returncode == 2 and "can never give 5× H100" in p.stderr
    p = box.skyctl("launch", "-c", "x", "--num-nodes", "2", "--gpus", "H100:3", "true")
    assert p.returncode == 2 and "to each of 2 nodes on one host" in p.stderr, p.stderr
    bad = write_task(workdir, "bad.yaml", "resources:\n  accelerators: H100:0.5\nrun: 'true'\n")
    p = box.skyctl("launch", "-c", "x", str(bad))
    assert p.returncode == 2 and "whole GPUs only" in p.stderr
    assert box.call(protocol.ClusterStatus()) == []
    # A job asks at most what its cluster holds, of its model.
    launch(box, "one", "H100:1", "true")
    launch(box, "cpu", None, "true")
    p = box.skyctl("exec", "one", "--gpus", "H100:2", "true")
    assert p.returncode == 2 and "has 1× H100 per node; the task asks for 2" in p.stderr
    p = box.skyctl("exec", "one", "--gpus", "A100:1", "true")
    assert p.returncode == 2 and "has H100 GPUs" in p.stderr
    p = box.skyctl("exec", "cpu", "--gpus", "H100:1", "true")
    assert p.returncode == 2 and "holds no GPUs" in p.stderr


def test_the_ledger_survives_kill_9_and_a_waiting_launch_keeps_its_place(box):
    launch(box, "c1", "H100:2")
    a = cvd(box, "c1", 1)
    rid = submit(box, "launch", "-c", "big", "--gpus", "H100:4", "-d", SLEEPER)
    assert wait_until(lambda: box.request(rid).waiting.startswith("waiting for 4× H100"))
    # Behind it, in order: a smaller one of the same person waits too, though it would fit.
    small = submit(box, "launch", "-c", "small", "--gpus", "H100:1", "-d", SLEEPER)
    assert wait_until(lambda: box.request(small).waiting != "")
    box.kill9()
    box.start()
    assert wait_until(lambda: held(box) == {a[0]: "c1", a[1]: "c1"}), held(box)
    assert box.call(protocol.JobQueue(cluster="c1"))[0].status == "RUNNING"
    assert wait_until(lambda: box.request(rid).waiting.startswith("waiting for 4× H100"))
    assert box.request(small).status == "pending"
    box.skyctl("down", "c1", check=True)
    assert box.wait_request(rid).status == "succeeded"
    assert sorted(cvd(box, "big", 1)) == [0, 1, 2, 3]
    box.skyctl("down", "big", check=True)
    assert box.wait_request(small).status == "succeeded"


def test_stop_gives_gpus_back_and_start_waits_for_them(box):
    launch(box, "c1", "H100:4", "true")
    box.skyctl("stop", "c1", check=True)
    assert held(box) == {}
    launch(box, "c2", "H100:2")
    rid = submit(box, "start", "c1")
    assert wait_until(lambda: box.request(rid).waiting == "waiting for 4× H100: 2 of 4 free on local")
    box.skyctl("down", "c2", check=True)
    assert box.wait_request(rid).status == "succeeded"
    assert set(held(box)) == {0, 1, 2, 3}
    [c] = box.call(protocol.ClusterStatus())
    assert c.status == "UP" and sorted(c.held[0].gpus) == [0, 1, 2, 3]


def test_a_host_that_shrank_or_fails_detection_is_reported(box):
    launch(box, "c1", "H100:2")
    launch(box, "c2", "H100:2")
    on_c2 = cvd(box, "c2", 1)
    box.fake.set([("H100", 2)])          # indices 2 and 3 are gone
    box.skyctl("infra", "--refresh")
    status = {c.name: c for c in box.call(protocol.ClusterStatus())}
    lost = "c2" if max(on_c2) >= 2 else "c1"
    assert status[lost].status == "UNHEALTHY"
    assert "GPUs gone: local now reports 2 GPU(s)" in status[lost].status_reason
    assert "reports fewer GPUs than held by" in box.skyctl("gpus").stderr
    box.fake.set([("H100", 4)])
    box.skyctl("infra", "--refresh")
    assert {c.status for c in box.call(protocol.ClusterStatus())} == {"UP"}
    # nvidia-smi fails: its last GPUs stay held and shown, with why; nothing new goes there.
    box.fake.fail()
    box.skyctl("infra", "--refresh")
    p = box.skyctl("gpus")
    assert "GPU detection failed: nvidia-smi failed (exit status 9)" in p.stderr
    assert len(local(box).gpus) == 4
    box.skyctl("down", "c1", check=True)
    rid = submit(box, "launch", "-c", "c3", "--gpus", "H100:1", "-d", SLEEPER)
    assert wait_until(lambda: "nvidia-smi failed" in box.request(rid).waiting), box.request(rid)
    box.fake.fail(False)
    box.skyctl("infra", "--refresh")
    assert box.wait_request(rid).status == "succeeded"


def test_no_nvidia_smi_means_no_gpus(make_daemon, monkeypatch):
    if shutil.which("nvidia-smi", path="/usr/local/bin:/usr/bin:/bin"):
        pytest.skip("this host has a real nvidia-smi")
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    d = make_daemon()
    assert wait_until(lambda: local(d).probed_at > 0)
    assert local(d).gpus == [] and local(d).error == ""
    p = d.skyctl("launch", "-c", "x", "--gpus", "H100:1", "true")
    assert p.returncode == 2 and "it has no GPUs" in p.stderr
    p = d.skyctl("launch", "-c", "ok", "true")      # without GPUs all is as before
    assert p.returncode == 0, p.stderr


def test_managed_jobs_wait_for_gpus_by_priority_within_their_owner(box):
    first = box.skyctl("jobs", "launch", "--async", "--gpus", "H100:4", "sleep 3", check=True)
    assert first.returncode == 0
    assert wait_until(lambda: len(held(box)) == 4, 20)
    low = box.skyctl("jobs", "launch", "--async", "--priority", "100", "--gpus", "H100:4", "true")
    high = box.skyctl("jobs", "launch", "--async", "--priority", "900", "--gpus", "H100:4", "true")
    assert low.returncode == high.returncode == 0
    jobs = {j.job_id: j for j in box.call(protocol.JobsQueue())}
    assert wait_until(lambda: all("waiting for 4× H100" in j.reason for j in box.call(
        protocol.JobsQueue()) if j.job_id in (2, 3)), 10), jobs

    def done() -> bool:
        jobs.update({j.job_id: j for j in box.call(protocol.JobsQueue())})
        return all(jobs[i].status == "SUCCEEDED" for i in (1, 2, 3))
    assert wait_until(done, 90), jobs
    assert jobs[3].started_at < jobs[2].started_at, jobs
    p = box.skyctl("jobs", "launch", "--priority", "2000", "true")
    assert p.returncode == 2 and "--priority must be between 0 and 1000" in p.stderr


def test_gpus_total_and_in_use_per_pool_in_metrics(make_daemon, workdir, monkeypatch):
    from http_side import free_port, scrape, value
    port = free_port()
    d = start_with_gpus(make_daemon, workdir, monkeypatch, [("H100", 4)], "--http",
                        f"127.0.0.1:{port}")
    launch(d, "c1", "H100:3")
    m = scrape(f"http://127.0.0.1:{port}")
    assert value(m, "skyd_gpus", pool="local", model="H100") == 4
    assert value(m, "skyd_gpus_in_use", pool="local", model="H100") == 3
