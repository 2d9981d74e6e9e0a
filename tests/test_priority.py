"""The daemon's loop comes first: a worker running a request (and its setup commands) and
a local job (its runner and all it starts) run at a lower CPU priority than the daemon."""

from __future__ import annotations

from pathlib import Path

from conftest import processes_mentioning, wait_until
from skyd import protocol
from skyd.taskspec import Task
from skyd.privilege import WORK_NICE


def nice_of(pid: int) -> int:
    """Field 19 of /proc/PID/stat (the fields after the command name start at field 3)."""
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[16])


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def test_workers_and_jobs_run_nicer_than_the_daemon(daemon, workdir):
    assert daemon.proc is not None
    base = nice_of(daemon.proc.pid)
    # A job that runs, on one cluster.
    daemon.submit_async(protocol.Launch(task=Task(run="sleep 60"), cluster="runs"))
    job_dir = daemon.state_dir / "clusters" / "runs"
    assert wait_until(lambda: len(processes_mentioning(job_dir)) >= 2, 30)   # runner, run.sh
    # A launch whose setup is still going, on another: its worker and the setup command.
    marker = f"{workdir}/setup-marker"
    daemon.submit_async(protocol.Launch(task=Task(setup=f"sleep 60; echo {marker}", run="true"),
                                        cluster="setup"))
    assert wait_until(lambda: processes_mentioning(Path(marker)), 30)
    setup = processes_mentioning(Path(marker))[0]
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
