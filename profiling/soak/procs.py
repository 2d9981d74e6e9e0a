"""What a daemon started, as a snapshot of processes that can be compared after it stops.

A process is named by (pid, start time): a pid handed to a new process later is never taken
for the old one. The daemon is expected to lead a session of its own (DaemonProcess starts
it so), which its forkserver, workers and setups share; job runners and ssh masters leave
that session, so they are found by their command line, which names the state directory.

Kinds: a *job* (a runner, local `bash -c ... skyd-runner` or remote `runner.sh`, and every
process of its session) is meant to outlive the daemon; everything else (forkserver,
resource tracker, workers, their setups, ssh masters and clients, followers) is not.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

JOB, HELPER = "job", "helper"


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int          # clock ticks after boot
    sid: int
    ppid: int
    cmd: str
    kind: str = HELPER

    def alive(self) -> bool:
        st = _stat(self.pid)
        return st is not None and st[0] not in ("Z", "X") and st[4] == self.start


def _stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, pgid, sid, start) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_runner(cmd: str) -> bool:
    return " skyd-runner " in f" {cmd} " or "/runner.sh " in f"{cmd} "


def started_by(daemon_pid: int, state_dir: Path) -> dict[int, Proc]:
    """Every live process the daemon started: its descendants, its session, and those whose
    command line names its state directory (job runners, ssh masters) with their sessions.
    The daemon itself is left out."""
    table: dict[int, tuple[str, int, int, int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] not in ("Z", "X"):
                table[int(name)] = st
    needle = f"{state_dir}/"
    me = os.getpid()
    found: dict[int, Proc] = {}
    cmds: dict[int, str] = {}

    def cmd_of(pid: int) -> str:
        if pid not in cmds:
            cmds[pid] = _cmdline(pid)
        return cmds[pid]

    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st[1], []).append(pid)
    stack = list(children.get(daemon_pid, []))
    ours = set()
    while stack:
        pid = stack.pop()
        if pid not in ours:
            ours.add(pid)
            stack.extend(children.get(pid, []))
    ours |= {pid for pid, st in table.items() if st[3] == daemon_pid}
    ours |= {pid for pid in table if needle in cmd_of(pid) + " "}
    # what runs in the session of a process of ours that left the daemon's (a job's script)
    sessions = {table[pid][3] for pid in ours if pid in table and table[pid][3] == pid}
    ours |= {pid for pid, st in table.items() if st[3] in sessions}
    ours -= {daemon_pid, me}
    job_sessions = {table[pid][3] for pid in ours if is_runner(cmd_of(pid))}
    for pid in ours:
        st = table[pid]
        kind = JOB if st[3] in job_sessions or is_runner(cmd_of(pid)) else HELPER
        found[pid] = Proc(pid, st[4], st[3], st[1], cmd_of(pid), kind)
    return found


def survivors(snapshot: dict[int, Proc], kind: str | None = HELPER) -> list[Proc]:
    """The processes of `snapshot` (of `kind`, None: any) still alive."""
    return [p for p in snapshot.values() if (kind is None or p.kind == kind) and p.alive()]


def wait_gone(snapshot: dict[int, Proc], timeout: float, kind: str | None = HELPER) -> list[Proc]:
    """Wait (bounded) until none of them is alive; those that still are."""
    deadline = time.monotonic() + timeout
    while True:
        left = survivors(snapshot, kind)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill(procs: list[Proc]) -> None:
    """SIGKILL exactly these processes (pid and start time checked just before)."""
    for p in procs:
        if p.alive():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass


def describe(procs: list[Proc]) -> list[str]:
    return [f"{p.pid} [{p.kind}] {p.cmd[:120]}" for p in procs]
