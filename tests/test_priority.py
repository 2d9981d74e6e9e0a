"""The daemon's loop comes first: a worker running a request (and its setup commands) and
a local job (its runner and all it starts) run at a lower CPU priority than the daemon."""

from __future__ import annotations

from pathlib import Path

from conftest import processes_mentioning, wait_until
from skyd import protocol
from skyd.taskspec import Task
from skyd.worker import WORK_NICE


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
