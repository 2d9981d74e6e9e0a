"""What a crashed daemon left: its workers (each its own process group), the forkserver and
the resource tracker are recorded in <state_dir>/workers/ while they live (pid and start
time: a reused pid is never taken for one of them); the next daemon kills what survived
(reap_previous) before it re-runs anything."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[2]), int(fields[19])


def record_process(run_dir: Path, name: str, pid: int, group: bool) -> None:
    """Note a process (or, with `group`, the process group it leads) for reap_previous.
    Not fsync'd: it only has to outlive the daemon process, not the machine."""
    st = _stat(pid)
    if st is None:
        return
    fd = os.open(run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC |
                 os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{pid} {st[2]} {'group' if group else 'process'}\n".encode())
    finally:
        os.close(fd)


def _read_records(run_dir: Path, names: list[str]) -> list[tuple[int, int, bool]]:
    """(pid, start time, whether its group is meant) of each record record_process left."""
    records: list[tuple[int, int, bool]] = []
    for name in names:
        try:
            with open(run_dir / name) as f:
                pid, start, kind = f.read().split()
            records.append((int(pid), int(start), kind == "group"))
        except (OSError, ValueError):
            pass
    return records


def _survivors(records: list[tuple[int, int, bool]]) -> tuple[set[int], set[int]]:
    """The recorded processes still alive, and the process groups they led, with every
    live member of those groups (zombies and ourselves excluded)."""
    procs: set[int] = set()
    groups: dict[int, int] = {}            # group id -> its leader's start time
    for pid, start, group in records:
        st = _stat(pid)
        if st is not None and st[2] == start:
            if st[0] != "Z":
                procs.add(pid)
            if group:
                groups[pid] = start
        elif st is None and group:
            # The leader is gone; its pid was not handed out again, so a group with
            # its id is still its own (members started after it).
            groups[pid] = start
    if groups:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            st = _stat(int(entry.name))
            if st and st[0] != "Z" and st[1] in groups and st[2] >= groups[st[1]]:
                procs.add(int(entry.name))
    procs.discard(os.getpid())
    return procs, set(groups)


def reap_previous(run_dir: Path | None, timeout: float = 10.0) -> list[int]:
    """Kill what a previous daemon left behind (from the records in `run_dir`): each
    recorded worker's whole process group (setup commands included), the forkserver and
    the resource tracker; wait until every one of them is gone. Blocking. Returns the pids
    killed; raises RuntimeError naming those still alive after `timeout` seconds, since
    nothing may be re-run while any process of its first run is alive."""
    if run_dir is None:
        return []
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    records = _read_records(run_dir, names)
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        procs, groups = _survivors(records)
        if not procs:
            break
        if time.monotonic() >= deadline:
            raise RuntimeError(
                "processes of the previous run would not die, so nothing can be re-run "
                f"safely: pids {' '.join(map(str, sorted(procs)))}")
        for pg in groups:
            with contextlib.suppress(OSError):
                os.killpg(pg, signal.SIGKILL)
        for victim in procs:
            with contextlib.suppress(OSError):
                os.kill(victim, signal.SIGKILL)
        killed |= procs
        time.sleep(0.02)
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(run_dir / name)
    return sorted(killed)
