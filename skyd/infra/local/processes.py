"""A local job's detached runners as processes: are they alive, how did the job end, and
signalling them (and whatever left their process group) — cheap /proc reads, used by the
daemon's loop and by a worker stopping jobs."""

from __future__ import annotations

import os
from pathlib import Path

from skyd import privilege
from skyd.infra.base import JobHandle, NodeProc, Outcome


def process_start(pid: int) -> int | None:
    """Start time of a live process in clock ticks, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def alive(np: NodeProc) -> bool:
    start = process_start(np.pid)
    return start is not None and (np.start == 0 or start == np.start)


def control_files(np: NodeProc) -> privilege.JobFiles | None:
    """The daemon's control files of a node's runner (None before it was started)."""
    return privilege.JobFiles(Path(np.ctl)) if np.ctl else None


def _exit_code(np: NodeProc) -> int | None:
    files = control_files(np)
    return files.exit_status() if files is not None else None


def job_outcome(handle: JobHandle) -> Outcome | None:
    """None while any node still runs; else how the job ended."""
    if any(alive(np) for np in handle.nodes):
        return None
    first = control_files(handle.nodes[0])
    if first is not None and first.is_cancelled():
        return Outcome("CANCELLED", None, "cancelled")
    codes = [(np, _exit_code(np)) for np in handle.nodes]
    for np, code in codes:
        if code is None:
            return Outcome("FAILED", None, f"the job's process on node {np.rank} was killed")
    for np, code in codes:
        if code != 0:
            return Outcome("FAILED", code, f"exit status {code} on node {np.rank}")
    return Outcome("SUCCEEDED", 0)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def signal_job(handle: JobHandle, sig: int) -> None:
    for np in handle.nodes:
        if not alive(np):
            continue
        try:
            os.killpg(np.pid, sig)
        except OSError:
            pass
        for pid in _session_members(np.pid):  # processes that left the group
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def mark_cancelled(handle: JobHandle) -> None:
    """The daemon's marker (in its control directory): the job ends CANCELLED."""
    for np in handle.nodes:
        files = control_files(np)
        if files is not None:
            files.mark_cancelled()
