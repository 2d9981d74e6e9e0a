"""The end of a test's daemons, overlapped with the next test: at the end of a test its
daemons get SIGTERM at once, and the wait for their exit (a coverage-measured daemon,
forkserver and workers take about half a second to save and go), the kill of what they
left (job runners) and the removal of the test's directory happen once they have exited,
while the next test runs. The work is done in order, so a directory goes only after the
daemons in it; at most a few daemons are left to exit at any time, and the session waits
for all of them (coverage data, clean /tmp) before it ends.

No threads: `pump()` is called where the tests' fixtures begin and end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from profiling._daemon import DaemonProcess

STOP_TIMEOUT = 30.0      # then SIGKILL of the daemon's session, as DaemonProcess.stop does
BACKLOG = 3              # daemons left exiting at most; past that, wait for the oldest


@dataclass
class _Work:
    daemons: list[DaemonProcess] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    deadline: float = 0.0

    def exited(self) -> bool:
        return all(d.proc is None or d.proc.poll() is not None for d in self.daemons)


class Reaper:
    def __init__(self, kill_leftovers: Callable[[Path], object]):
        self.kill_leftovers = kill_leftovers
        self.queue: deque[_Work] = deque()

    def stop_later(self, daemons: list[DaemonProcess]) -> None:
        """SIGTERM each running daemon now; reap it and kill its leftovers once it exited."""
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        self.queue.append(_Work(daemons=list(daemons),
                                deadline=time.monotonic() + STOP_TIMEOUT))
        self.pump()

    def remove_later(self, path: Path) -> None:
        """Kill what names `path` and remove it, after the daemons queued before it."""
        self.queue.append(_Work(paths=[path]))
        self.pump()

    def pump(self, block: bool = False) -> None:
        """Finish the work whose daemons have exited (all of it with block=True), in order."""
        while self.queue:
            work = self.queue[0]
            if not (block or work.exited() or time.monotonic() >= work.deadline
                    or self._exiting() > BACKLOG):
                return
            self.queue.popleft()
            self._finish(work)

    def _exiting(self) -> int:
        return sum(1 for w in self.queue for d in w.daemons
                   if d.proc is not None and d.proc.poll() is None)

    def _finish(self, work: _Work) -> None:
        for d in work.daemons:
            if d.proc is not None:
                try:
                    d.proc.wait(max(0.0, work.deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(d.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        d.proc.kill()
                    d.proc.wait(10)
                d.stop()                # it has exited: only closes its log
            self.kill_leftovers(d.state_dir)
        for path in work.paths:
            self.kill_leftovers(path)
            shutil.rmtree(path, ignore_errors=True)
