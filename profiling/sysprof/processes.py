"""The daemon's process tree by kind: which process is the daemon, its forkserver, a worker
running a request, a spare, a job runner... from its position in the tree and its command
line (see the package's docstring), never from guessing."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DAEMON, FORKSERVER, TRACKER = "daemon", "forkserver", "resource_tracker"
LONG_WORKER, SPARE_WORKER, WORKER_CHILD = "long worker", "spare worker", "worker child"
JOB_RUNNER, OTHER, MACHINE = "job runner", "other", "machine"
KINDS = (DAEMON, FORKSERVER, TRACKER, LONG_WORKER, SPARE_WORKER, WORKER_CHILD, JOB_RUNNER, OTHER)

WORKER_LINE = re.compile(rb"\[skyd\] running \w+ in worker process (\d+)")


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    sid: int
    cpu_ticks: int
    start: int          # clock ticks after boot: (pid, start) names one process


def scan_proc() -> dict[int, ProcStat]:
    """Every live process (zombies excluded) from /proc/<pid>/stat."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] in (b"Z", b"X"):
            continue
        out[int(name)] = ProcStat(int(fields[1]), int(fields[3]),
                                  int(fields[11]) + int(fields[12]), int(fields[19]))
    return out


def is_runner(cmdline: list[str], clusters_roots: tuple[str, ...]) -> bool:
    """A job runner: `sh <state>/clusters/<cluster>/.../runner.sh <jobdir>`."""
    return any(arg.endswith("/runner.sh") and arg.startswith(clusters_roots) for arg in cmdline)


def classify(procs: dict[int, ProcStat], daemon_pid: int, cmdline, clusters_roots: tuple[str, ...],
             logged_workers: set[int]) -> dict[int, str]:
    """pid -> kind for the daemon's tree and its job runners (see the module docstring).
    `cmdline(pid)` returns a process's argv (cached by the caller)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, st in procs.items():
        children[st.ppid].append(pid)

    def descendants(pid: int) -> list[int]:
        out, stack = [], list(children[pid])
        while stack and len(out) < 100_000:
            p = stack.pop()
            out.append(p)
            stack.extend(children[p])
        return out

    kinds: dict[int, str] = {}
    sids = {st.sid for st in procs.values()}
    runner_sids = {s for s in sids if s in procs and is_runner(cmdline(s), clusters_roots)}
    for pid, st in procs.items():
        if st.sid in runner_sids:
            kinds[pid] = JOB_RUNNER
    if daemon_pid not in procs:
        return kinds
    kinds[daemon_pid] = DAEMON
    for child in children[daemon_pid]:
        if child in kinds:
            continue
        cmd = " ".join(cmdline(child))
        if "multiprocessing.forkserver" in cmd:
            kinds[child] = FORKSERVER
            for w in children[child]:
                busy = w in logged_workers or bool(children[w])
                kinds.setdefault(w, LONG_WORKER if busy else SPARE_WORKER)
                for d in descendants(w):
                    kinds.setdefault(d, WORKER_CHILD)
            continue
        kinds[child] = TRACKER if "multiprocessing.resource_tracker" in cmd else OTHER
        for d in descendants(child):
            kinds.setdefault(d, OTHER)
    return kinds


class LogIndex:
    """Worker pids named by request logs ("[skyd] running <op> in worker process <pid>").

    Reads a log's head once it has the line; the directory is listed again only when its
    mtime changes (a new request started). Logs older than the daemon are skipped."""

    def __init__(self, logs_dir: Path, since: float):
        self.dir = logs_dir
        self.since = since
        self.pids: set[int] = set()
        self._dir_mtime: int | None = None
        self._seen: set[str] = set()
        self._pending: dict[str, int] = {}     # name -> size when last read without a match

    def refresh(self) -> set[int]:
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except OSError:
            return self.pids
        if mtime != self._dir_mtime:
            self._dir_mtime = mtime
            try:
                entries = list(os.scandir(self.dir))
            except OSError:
                entries = []
            for e in entries:
                if e.name in self._seen or not e.name.endswith(".log"):
                    continue
                self._seen.add(e.name)
                try:
                    if e.stat().st_mtime >= self.since:
                        self._pending[e.name] = -1
                except OSError:
                    pass
        for name, size in list(self._pending.items()):
            path = self.dir / name
            try:
                now = path.stat().st_size
                if now == size:
                    continue
                with open(path, "rb") as f:
                    head = f.read(4096)
                m = WORKER_LINE.search(head)
            except OSError:
                self._pending.pop(name, None)
                continue
            if m:      # all of them: a request re-run after a restart names two
                self.pids.update(int(x) for x in WORKER_LINE.findall(head))
                del self._pending[name]
            elif now >= 4096:
                del self._pending[name]        # the line comes first: it never will
            else:
                self._pending[name] = now
        return self.pids
