"""GPU isolation enforced on the daemon's own host by the cgroup v1 devices controller,
through a real daemon and the real skyctl: a fake nvidia-smi reports 4× H100, and fake
device nodes (char 195:N, as /dev/nvidiaN; the cgroup checks the numbers, not the path)
stand for the GPUs. With no driver behind them opening one fails with ENXIO; a job fenced
off a GPU gets EPERM instead. Each job can open exactly the GPUs it holds (and nvidiactl),
from its first instruction; its cgroup goes when it ends, survives a daemon kill -9 while
it runs, and empty ones left behind go at the daemon's start.

Skipped where the host has no usable devices controller (not root, cgroup v2 alone);
under CI=1 (CI runs on hosts that have it) that is a failure instead."""

from __future__ import annotations

import os
import re
import stat

import msgspec
import pytest

from conftest import wait_until
from gpufakes import FakeGpus
from skyd import protocol
from skyd.infra.local import devicefence

INDICES = (0, 1, 2, 3)
CTL = 255                 # /dev/nvidiactl: every job may open it

PROBE = """\
import errno, os, sys
opened = []
for i in [int(a) for a in sys.argv[2:]]:
    try:
        os.close(os.open(os.path.join(sys.argv[1], f"nvidia{i}"), os.O_RDWR))
        opened.append(f"{i}:ok")
    except OSError as e:
        opened.append(f"{i}:{errno.errorcode[e.errno]}")
group = [line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")
         if "devices" in line.split(":")[1].split(",")]
print(f"CVD=[{os.environ.get('CUDA_VISIBLE_DEVICES')}] ORDER={os.environ.get('CUDA_DEVICE_ORDER')} "
      f"GROUP={group[0]} OPEN={' '.join(opened)}", flush=True)
"""


@pytest.fixture
def fence() -> devicefence.DeviceFence:
    found = devicefence.detect()
    if found is None:
        why = "no usable cgroup v1 devices controller here (or not root)"
        if os.environ.get("CI"):
            pytest.fail(f"CI hosts have the devices controller: {why}")
        pytest.skip(why)
    return found


@pytest.fixture
def box(fence, make_daemon, workdir, monkeypatch):
    """A daemon on a host with 4× H100, and the GPUs' fake device nodes in workdir/dev."""
    return start_box(make_daemon, workdir, monkeypatch)


@pytest.fixture
def shared_box(fence, make_daemon, workdir, monkeypatch, people):
    """The same, open to alice and bob (real accounts: tests/users.py)."""
    import users
    os.chmod(workdir, 0o755)          # let them reach the socket, the probe and the nodes
    return start_box(make_daemon, workdir, monkeypatch, "--socket-group", users.GROUP)


def start_box(make_daemon, workdir, monkeypatch, *args: str):
    fake = FakeGpus(workdir / "bin", [("H100", len(INDICES))])
    monkeypatch.setenv("PATH", f"{fake.bin}:{os.environ['PATH']}")
    dev = workdir / "dev"
    dev.mkdir()
    for i in (*INDICES, CTL):
        node = dev / f"nvidia{i}"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(devicefence.NVIDIA_MAJOR, i))
        os.chmod(node, 0o666)
    (workdir / "probe.py").write_text(PROBE)
    os.chmod(workdir / "probe.py", 0o644)
    d = make_daemon(*args)
    assert wait_until(lambda: len(local(d).gpus) == len(INDICES), 20), local(d)
    d.workdir = workdir
    return d


def local(d) -> protocol.GpuHost:
    [host] = [h for h in d.call(protocol.GpuStatus()) if h.host == "local"]
    return host


def probe_run(d, wait_for: str = "") -> str:
    """A job's run: the probe, then (with `wait_for`) it waits until that file exists."""
    run = (f"python3 {d.workdir}/probe.py {d.workdir}/dev "
           f"{' '.join(map(str, (*INDICES, CTL)))}")
    if wait_for:
        run += f"; while [ ! -e {wait_for} ]; do sleep 0.05; done"
    return run


def probed(d, cluster: str, job: int, person=None) -> tuple[list[int], str, dict[int, str]]:
    """What a job printed: its CUDA_VISIBLE_DEVICES, its devices cgroup, and per device
    index how opening it went (ok, or the errno's name). `person`: whose job (root's)."""
    seen: dict[str, str] = {}

    def printed() -> bool:
        args = ("logs", cluster, str(job), "--no-follow")
        seen["text"] = (person.skyctl(d, *args) if person else d.skyctl(*args)).stdout
        return "OPEN=" in seen["text"]
    assert wait_until(printed, 30), seen
    m = re.search(r"CVD=\[([0-9,]*)\] ORDER=(\S+) GROUP=(\S+) OPEN=(.*)", seen["text"])
    assert m, seen["text"]
    opened = dict(item.split(":") for item in m.group(4).split())
    if m.group(1):     # its numbers are nvidia-smi's (PCI order), as the fence's are
        assert m.group(2) == "PCI_BUS_ID", seen["text"]
    return ([int(i) for i in m.group(1).split(",") if i], m.group(3),
            {int(i): how for i, how in opened.items()})


def assert_fenced_to(opened: dict[int, str], held: list[int]) -> None:
    """Its own GPUs (and nvidiactl) reach the missing driver; the others are refused."""
    for i in INDICES:
        if i in held:
            assert opened[i] in ("ENXIO", "ENODEV"), (i, held, opened)
        else:
            assert opened[i] == "EPERM", (i, held, opened)
    assert opened[CTL] in ("ENXIO", "ENODEV"), opened


def test_each_job_opens_only_its_own_gpus_and_its_cgroup_goes_when_it_ends(box, fence, workdir):
    go = workdir / "go"
    for name in ("fence-a", "fence-b"):
        box.skyctl("launch", "-c", name, "-d", "--gpus", "H100:1", probe_run(box, str(go)),
                   check=True)
    a_gpus, a_group, a_open = probed(box, "fence-a", 1)
    b_gpus, b_group, b_open = probed(box, "fence-b", 1)
    assert len(a_gpus) == len(b_gpus) == 1 and a_gpus != b_gpus
    assert_fenced_to(a_open, a_gpus)
    assert_fenced_to(b_open, b_gpus)
    # Each in a cgroup of its own, there from the job's first instruction, under skyd's.
    assert a_group.endswith("/fence-a.1.node-0") and b_group.endswith("/fence-b.1.node-0")
    a_dir = fence.on_disk(a_group)
    assert a_dir.parent.parent == fence.base and a_dir.is_dir()
    assert (a_dir / "tasks").read_text().split(), "the runner is in it"
    # The listings say it is enforced.
    p = box.skyctl("gpus", check=True)
    assert "GPU isolation on local is enforced by the devices cgroup" in p.stderr, p.stderr
    assert "environment only" not in p.stderr
    [host] = msgspec.json.decode(box.skyctl("gpus", "--json", check=True).stdout,
                                 type=list[protocol.GpuHost])
    assert host.isolation == "devices-cgroup"
    # A job that holds none of the host's GPUs opens none.
    box.skyctl("exec", "fence-a", "-d", probe_run(box), check=True)
    none_gpus, none_group, none_open = probed(box, "fence-a", 2)
    assert none_gpus == [] and none_group.endswith("/fence-a.2.node-0")
    assert_fenced_to(none_open, [])
    assert box.wait_job("fence-a", 2).status == "SUCCEEDED"
    # The jobs end: their cgroups go.
    go.touch()
    for name in ("fence-a", "fence-b"):
        assert box.wait_job(name, 1).status == "SUCCEEDED"
    assert wait_until(lambda: not a_dir.exists() and not fence.on_disk(b_group).exists()
                      and not fence.on_disk(none_group).exists(), 10)


def test_a_running_jobs_cgroup_outlives_a_kill_9_and_leftovers_go_at_start(box, fence, workdir):
    go = workdir / "go"
    box.skyctl("launch", "-c", "fence-k", "-d", "--gpus", "H100:2", probe_run(box, str(go)),
               check=True)
    gpus, group, opened = probed(box, "fence-k", 1)
    assert len(gpus) == 2
    assert_fenced_to(opened, gpus)
    group_dir = fence.on_disk(group)
    # Empty cgroups left behind by an earlier daemon (this one's and another's).
    mine = group_dir.parent / "fence-k.9.node-0"
    other = fence.base / "0123456789ab" / "x.1.node-0"
    for leftover in (mine, other):
        leftover.mkdir(parents=True)
    box.kill9()
    box.start()
    assert not mine.exists() and not other.exists() and not other.parent.exists()
    # The job still runs in its own (it holds a process: it stayed).
    assert group_dir.is_dir() and (group_dir / "tasks").read_text().split()
    assert local(box).isolation == "devices-cgroup"
    go.touch()
    assert box.wait_job("fence-k", 1).status == "SUCCEEDED"
    assert wait_until(lambda: not group_dir.exists(), 10)
    # A name taken by a cgroup that still holds a process (one left behind by an earlier
    # cluster of this name): the next job gets a cgroup of another name.
    taken = group_dir.parent / "fence-k.2.node-0"
    taken.mkdir()
    (taken / "tasks").write_text(str(os.getpid()))
    try:
        box.skyctl("exec", "fence-k", "-d", "--gpus", "H100:1", probe_run(box), check=True)
        second_gpus, second, second_open = probed(box, "fence-k", 2)
        assert second.endswith("/fence-k.2.node-0.1")
        assert_fenced_to(second_open, second_gpus)
    finally:
        (fence.base.parent / "tasks").write_text(str(os.getpid()))   # back home
        taken.rmdir()


def test_someone_elses_job_is_fenced_and_cannot_leave_its_cgroup(shared_box, fence, people):
    alice, _ = people
    home = fence.base.parent / "tasks"      # the daemon's own devices cgroup
    run = (probe_run(shared_box) + f"; if echo $$ > {home}; then echo LEFT; "
           "else echo STAYED; fi; grep devices /proc/self/cgroup")
    p = alice.skyctl(shared_box, "launch", "-c", "fence-p", "-d", "--gpus", "H100:1", run)
    assert p.returncode == 0, p.stderr
    gpus, group, opened = probed(shared_box, "fence-p", 1, alice)
    assert len(gpus) == 1 and group.endswith("/fence-p.1.node-0")
    assert_fenced_to(opened, gpus)
    assert shared_box.wait_job("fence-p", 1).status == "SUCCEEDED"
    text = alice.skyctl(shared_box, "logs", "fence-p", "1", "--no-follow").stdout
    assert "STAYED" in text and "LEFT" not in text, text
    assert text.rstrip().endswith(group), text
