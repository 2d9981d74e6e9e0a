"""The daemon's loop first (issue 13): work — the forkserver and its workers (with the
setups they run) and local jobs — runs in a cpu cgroup marked idle (`cpu.idle = 1`,
Linux 5.15+) beside one that holds the daemon. On a wake-up the daemon's threads then
preempt work at once; with nice alone a job keeps its CPU to the end of its slice (up to
a scheduler tick, 4 ms here) whenever an interrupt wakes the daemon, whatever its nice
(BENCHMARKS.md, "Acceptance under a running burst").

Idle against the daemon only, not against the host: the pair sits in a parent of its own,
and that parent competes with everything else on the host as before:

    <the daemon's own cpu cgroup>/skyd-<hash of the state dir>/daemon   the daemon
                                                              /work     cpu.idle = 1

One parent per state directory (several daemons share a host in tests); a restarted
daemon takes the same one, where the jobs of its previous run still are. Empty ones left
by a daemon killed with -9 are removed at a start.

A process is in `work` before its first instruction: local jobs' runners and the
forkserver are started by one thread of the daemon that lives in `work` (`tasks` takes a
thread id). It is moved there once: a move takes the kernel's cgroup lock (milliseconds,
and every fork on the host waits for it), so no thread goes back and forth per start.

`work_cpu: background` trades fairness for the daemon's latency: the parent is the idle
one, the daemon stays where it started, and work yields to everything on the host — the
kernel's own threads too, such as the journal's that completes the daemon's fsync, which a
pair competing as one group at the top does not preempt at once. Any busy process then
takes the CPU from jobs, not only the daemon.

Only cgroup v1's cpu hierarchy, writable by root, is used. Elsewhere — cgroup v2 (a
domain cgroup takes whole processes only, and enabling its cpu controller needs a
delegated subtree), no cpu.idle, not root — work yields by nice alone (privilege.WORK_NICE)
and the reason is logged at the start."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from skyd.sizing import cgroupv1

log = logging.getLogger("skyd.sizing.cpugroups")

PREFIX = "skyd-"
TRIES = 3
T = TypeVar("T")


class CpuGroups:
    """`parent`: this daemon's directory in the cpu hierarchy; `home`: the cgroup the
    daemon was started in (and goes back to at its stop). `host_wide` (work_cpu
    background): work yields to everything beside `home`, not only to the daemon: the
    parent is the idle one and the daemon stays where it started."""

    def __init__(self, parent: Path, home: Path, host_wide: bool = False) -> None:
        self.parent = parent
        self.home = home
        self.host_wide = host_wide
        self.daemon = parent / "daemon"
        self.work = parent / "work"
        self._starter: ThreadPoolExecutor | None = None
        self._making = threading.Lock()    # the pool's threads and the loop may ask first

    def enter(self) -> None:
        """Make the pair (or take the existing one) and move the whole daemon into
        `daemon`: its threads, and so what it starts later outside `work`. Host-wide,
        only the parent (idle) and `work`: the daemon stays where it is."""
        for attempt in range(TRIES):
            try:
                groups = (self.parent, self.work) if self.host_wide else \
                    (self.parent, self.daemon, self.work)
                for group in groups:
                    with contextlib.suppress(FileExistsError):
                        group.mkdir()
                cgroupv1.write(self.parent / "cpu.idle", "1" if self.host_wide else "0")
                cgroupv1.write(self.work / "cpu.idle", "0" if self.host_wide else "1")
                if not self.host_wide:
                    cgroupv1.write(self.daemon / "cgroup.procs", str(os.getpid()))
                return
            except FileNotFoundError:
                # Removed while still empty by another daemon's sweep (its start): again.
                if attempt == TRIES - 1:
                    raise

    def leave(self) -> None:
        """Back to where the daemon started; the pair goes once empty (jobs still running
        keep `work`, and so the parent, until they end: the next start takes them)."""
        if self._starter is not None:
            self._starter.shutdown(wait=True)
        with contextlib.suppress(OSError):
            cgroupv1.write(self.home / "cgroup.procs", str(os.getpid()))
        remove_if_empty(self.parent)

    async def start_in_work(self, start: Callable[..., T], *args: Any) -> T:
        """Run `start` (blocking: forks and execs) on the daemon's thread in `work`."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread(), functools.partial(start, *args))

    def start_in_work_blocking(self, start: Callable[[], T]) -> T:
        """The same, from a thread other than the loop's, waiting for it."""
        return self._thread().submit(start).result()

    def _thread(self) -> ThreadPoolExecutor:
        with self._making:
            if self._starter is None:
                self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyd-work",
                                                   initializer=self._thread_into_work)
            return self._starter

    def _thread_into_work(self) -> None:
        try:
            cgroupv1.write(self.work / "tasks", str(threading.get_native_id()))
        except OSError as e:       # it starts from the daemon's cgroup then: logged, not fatal
            log.error("the thread that starts local jobs could not enter %s: %s", self.work, e)


def remove_if_empty(parent: Path) -> bool:
    """Remove a pair and its parent if no process is left in them."""
    try:
        for child in ("daemon", "work"):
            with contextlib.suppress(FileNotFoundError):
                (parent / child).rmdir()
        parent.rmdir()
        return True
    except OSError:             # EBUSY: a process is still in it
        return False


def detect(state_dir: Path, host_wide: bool = False) -> tuple[CpuGroups | None, str]:
    """This daemon's pair of cpu cgroups, not yet entered; or None and why not."""
    if os.geteuid() != 0:
        return None, "the daemon does not run as root"
    try:
        mount = cgroupv1.mount_of("cpu", Path("/proc/self/mountinfo").read_text())
        if mount is None:
            return None, "no cgroup v1 cpu controller is mounted (cgroup v2: not used yet)"
        where, mount_root = mount
        path = cgroupv1.group_of("cpu", Path("/proc/self/cgroup").read_text())
        if path is None:
            return None, "the daemon's cpu cgroup is not known"
        home = cgroupv1.on_disk(where, mount_root, path)
        if not (home / "cpu.idle").exists():
            return None, "this kernel has no cpu.idle (Linux 5.15+)"
        if home.name == "daemon" and home.parent.name.startswith(PREFIX):
            home = home.parent.parent      # started from inside a pair (a daemon's child)
        tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
        sweep(home, keep=PREFIX + tag)
        return CpuGroups(home / (PREFIX + tag), home, host_wide), ""
    except OSError as e:
        return None, f"the cpu cgroup cannot be used: {e}"


def sweep(home: Path, keep: str) -> None:
    """Remove the empty pairs other daemons left (killed with -9); busy ones stay."""
    for d in cgroupv1.subdirs(home):
        if d.name.startswith(PREFIX) and d.name != keep:
            remove_if_empty(d)
