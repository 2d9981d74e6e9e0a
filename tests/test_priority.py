"""The daemon's loop comes first: a worker running a request (and its setup commands) and
a local job (its runner and all it starts) run at a lower CPU priority than the daemon."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from conftest import processes_mentioning, wait_until
from skyd import protocol
from skyd.server import config
from skyd.sizing import cgroupv1, cpugroups
from skyd.taskspec import Task
from skyd.privilege import WORK_NICE


def start_job(daemon) -> Path:
    """A job that runs (`sleep 60`) on cluster "runs": its job dir, once its runner and
    run.sh are up."""
    daemon.submit_async(protocol.Launch(task=Task(run="sleep 60"), cluster="runs"))
    job_dir = daemon.state_dir / "clusters" / "runs"
    assert wait_until(lambda: len(processes_mentioning(job_dir)) >= 2, 30)   # runner, run.sh
    return job_dir


def start_setup(daemon, workdir: Path) -> int:
    """A launch on cluster "setup" whose setup is still going: the setup command's pid
    (its parent is the worker running the launch)."""
    marker = f"{workdir}/setup-marker"
    daemon.submit_async(protocol.Launch(task=Task(setup=f"sleep 60; echo {marker}", run="true"),
                                        cluster="setup"))
    assert wait_until(lambda: processes_mentioning(Path(marker)), 30)
    return processes_mentioning(Path(marker))[0]


def nice_of(pid: int) -> int:
    """Field 19 of /proc/PID/stat (the fields after the command name start at field 3)."""
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[16])


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def test_workers_and_jobs_run_nicer_than_the_daemon(daemon, workdir):
    assert daemon.proc is not None
    base = nice_of(daemon.proc.pid)
    job_dir = start_job(daemon)             # a job that runs, on one cluster
    setup = start_setup(daemon, workdir)    # a launch whose setup is still going, on another
    worker = parent_of(setup)
    niced = {pid: nice_of(pid) for pid in [*processes_mentioning(job_dir), setup, worker]}
    assert all(n >= min(19, base + WORK_NICE) for n in niced.values()), (base, niced)
    assert all(n > base for n in niced.values()), (base, niced)
    assert nice_of(daemon.proc.pid) == base       # the daemon's loop itself is not lowered
    # A job's runner leads a session of its own, so with autogroups on (and no cpu cgroup)
    # it is also a scheduling group of its own: that group must be nicer too.
    if autogroups():
        runner = next(p for p in processes_mentioning(job_dir) if session_of(p) == p)
        assert autogroup_nice(runner) > autogroup_nice(daemon.proc.pid), \
            (Path(f"/proc/{runner}/autogroup").read_text(),
             Path(f"/proc/{daemon.proc.pid}/autogroup").read_text())


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[3])


def autogroups() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1" \
            and Path("/proc/self/autogroup").exists()
    except OSError:
        return False


def autogroup_nice(pid: int) -> int:
    """/proc/PID/autogroup reads '/autogroup-N nice V'."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


# ---- the idle cpu cgroup ---------------------------------------------------------------

def cpu_group_of(pid: int) -> str:
    return cgroupv1.group_of("cpu", Path(f"/proc/{pid}/cgroup").read_text()) or ""


def cpu_dir(group: str) -> Path:
    """The directory of a cpu cgroup named as /proc/<pid>/cgroup names it."""
    mount = cgroupv1.mount_of("cpu", Path("/proc/self/mountinfo").read_text())
    assert mount is not None
    return cgroupv1.on_disk(*mount, group)


@pytest.fixture
def cpu_cgroups() -> None:
    """Skipped where work yields by nice alone (cgroup v2, no cpu.idle, not root); under
    CI=1 (CI runs on hosts with cgroup v1's cpu hierarchy) that is a failure instead."""
    groups, why = cpugroups.detect(Path("/nonexistent-probe"))
    if groups is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI hosts have cgroup v1's cpu controller with cpu.idle: {why}")
        pytest.skip(why)


def daemon_threads_are_placed(pid: int, daemon_group: str, work_group: str) -> None:
    """Every thread of the daemon is in `daemon` (its loop, the store's writer…) but one:
    the thread that starts the forkserver and local jobs lives in `work`."""
    threads = [cgroupv1.group_of("cpu", Path(f"/proc/{pid}/task/{tid}/cgroup").read_text())
               for tid in os.listdir(f"/proc/{pid}/task")]
    assert threads.count(work_group) == 1, threads
    assert set(threads) == {daemon_group, work_group}, threads


def test_work_runs_in_an_idle_cpu_cgroup_beside_the_daemon(cpu_cgroups, make_daemon, workdir):
    """The daemon in <its cgroup>/skyd-<tag>/daemon; the forkserver, each worker (and the
    setup it runs) and each local job (its runner and what it starts) in …/work, which
    has cpu.idle = 1; the pair goes when the daemon stops and nothing is left in it."""
    daemon = make_daemon()
    assert daemon.proc is not None
    home = cpu_group_of(os.getpid())
    dgroup = cpu_group_of(daemon.proc.pid)
    parent = dgroup.removesuffix("/daemon")
    assert dgroup.endswith("/daemon") and Path(parent).name.startswith("skyd-"), dgroup
    assert Path(parent).parent == Path(home), (parent, home)
    on_disk = cpu_dir(parent)
    assert (on_disk / "work" / "cpu.idle").read_text().strip() == "1"
    assert (on_disk / "daemon" / "cpu.idle").read_text().strip() == "0"
    daemon_threads_are_placed(daemon.proc.pid, dgroup, parent + "/work")

    job_dir = start_job(daemon)
    setup = start_setup(daemon, workdir)
    worker = parent_of(setup)
    forkserver = parent_of(worker)
    work = {pid: cpu_group_of(pid)
            for pid in [*processes_mentioning(job_dir), setup, worker, forkserver]}
    assert set(work.values()) == {parent + "/work"}, work
    daemon_threads_are_placed(daemon.proc.pid, dgroup, parent + "/work")

    # The work ends, then the daemon stops: its pair goes with it, or, when a helper of it
    # (the resource tracker, a spare saving coverage data) was still exiting then, at the
    # next daemon's start.
    for pid in [*processes_mentioning(job_dir), setup]:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)     # a runner leads its job's process group
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    daemon.stop(signal.SIGTERM)
    assert wait_until(lambda: not any(procs_in(on_disk / g) for g in ("daemon", "work")), 15)
    if on_disk.exists():
        make_daemon(name="next")
    assert not on_disk.exists(), sorted(on_disk.rglob("*"))


def procs_in(group: Path) -> str:
    """The pids in a cgroup ("" once it is gone: any daemon's start on this host sweeps
    the empty pairs, other tests' too)."""
    try:
        return (group / "cgroup.procs").read_text().strip()
    except FileNotFoundError:
        return ""


def test_a_pair_left_by_a_daemon_killed_with_9_goes_at_another_start(cpu_cgroups, make_daemon):
    first = make_daemon(name="first")
    assert first.proc is not None
    left = cpu_dir(cpu_group_of(first.proc.pid)).parent
    first.stop(signal.SIGKILL)
    assert left.is_dir()                    # nothing ran to remove it
    # Its forkserver and spares end moments after it (they see its end of their pipes).
    assert wait_until(lambda: not any(procs_in(left / g) for g in ("daemon", "work")), 10)
    second = make_daemon(name="second")     # another state dir: another pair, and a sweep
    assert second.proc is not None
    assert not left.exists()
    assert cpu_group_of(second.proc.pid).endswith("/daemon")


def test_work_cpu_nice_keeps_everything_where_the_daemon_started(cpu_cgroups, make_daemon,
                                                                 workdir):
    daemon = make_daemon("--work-cpu", "nice")
    assert daemon.proc is not None
    home = cpu_group_of(os.getpid())
    setup = start_setup(daemon, workdir)
    groups = {pid: cpu_group_of(pid) for pid in (daemon.proc.pid, setup, parent_of(setup))}
    assert set(groups.values()) == {home}, groups
    assert "work yields the CPU to the daemon by nice only: work_cpu is nice" in daemon.log()


def test_work_cpu_takes_only_its_three_values(tmp_path):
    assert config.load({"state_dir": str(tmp_path)}, env={}).work_cpu == "idle"
    assert config.load({"state_dir": str(tmp_path)}, env={"SKYD_WORK_CPU": "nice"}).work_cpu == "nice"
    with pytest.raises(config.ConfigError,
                       match="work_cpu: invalid value 'low' .one of idle, background, nice"):
        config.load({"state_dir": str(tmp_path)}, env={"SKYD_WORK_CPU": "low"})


def test_work_cpu_background_yields_to_the_whole_host(cpu_cgroups, make_daemon, workdir):
    """The daemon stays where it started; work is under a parent that is idle against
    everything beside it."""
    daemon = make_daemon("--work-cpu", "background")
    assert daemon.proc is not None
    home = cpu_group_of(os.getpid())
    assert cpu_group_of(daemon.proc.pid) == home
    setup = start_setup(daemon, workdir)
    groups = {cpu_group_of(pid) for pid in (setup, parent_of(setup), parent_of(parent_of(setup)))}
    assert len(groups) == 1 and groups.pop().endswith("/work"), groups
    work = cpu_dir(cpu_group_of(setup))
    assert (work.parent / "cpu.idle").read_text().strip() == "1"
    assert work.parent.parent == cpu_dir(home)
    assert "work yields the CPU to everything on the host in an idle cpu cgroup" in daemon.log()
