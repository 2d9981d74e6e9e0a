"""Worker processes for long requests, started from a preloaded forkserver.

Starting a multiprocessing Process is a blocking round trip to the forkserver (~12 ms),
so it happens in a thread, ahead of need: a few idle spares wait for an assignment and
are refilled in the background. Handing a request to a spare is one socket write, which
keeps accepted -> running well under the 10 ms goal. Still one process per request.

Every worker (its own process group), the forkserver and the resource tracker are recorded
in <state_dir>/workers/ while they live (pid and start time: a reused pid is never taken
for one of them). A busy worker takes its whole group down when the daemon goes away; if
anything still survived a crash, the next daemon kills it from these records before it
re-runs anything (reap_previous).

The forkserver may die under the daemon (killed, OOM-killed): its spares die with it. They
are dropped as their exits are seen, take() never hands out one known dead, the next spawn
starts (and records) a new forkserver, and assign() moves a request whose worker turns out
dead on delivery to a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from multiprocessing.process import BaseProcess
import os
import signal
import socket
from collections import deque
from pathlib import Path
from typing import AsyncIterator, Callable

import msgspec

from skyd import protocol
from skyd.protocol import ErrorCode, SkydError

from skyd.requests import worker
from skyd.requests.reaping import record_process
from skyd.requests.messages import Assignment, WorkerMsg
from skyd.sizing.cpugroups import CpuGroups

log = logging.getLogger("skyd.requests.pool")

PRELOAD = ["skyd.requests.worker"]
ASSIGN_TRIES = 3        # workers tried for one request before it fails
_msg_dec = msgspec.msgpack.Decoder(WorkerMsg)


class Worker:
    """One worker process seen from the daemon: its control channel, log, and exit."""

    def __init__(self, proc: BaseProcess, ctrl: socket.socket, log_sock: socket.socket,
                 on_exit: Callable[[Worker], None] | None = None):
        self.proc = proc
        self._on_exit_cb = on_exit
        self.pid: int = proc.pid  # type: ignore[assignment]
        self._ctrl_sock, self._log_sock = ctrl, log_sock
        self._ctrl_r: asyncio.StreamReader | None = None
        self._ctrl_w: asyncio.StreamWriter | None = None
        self.log_reader: asyncio.StreamReader | None = None
        self._log_w: asyncio.StreamWriter | None = None
        self._exited: asyncio.Future | None = None

    async def attach(self) -> None:
        self._ctrl_r, self._ctrl_w = await asyncio.open_unix_connection(sock=self._ctrl_sock)
        self.log_reader, self._log_w = await asyncio.open_unix_connection(sock=self._log_sock)
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        loop.add_reader(self.proc.sentinel, self._on_exit)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.proc.sentinel)
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(self.proc.exitcode)
            if self._on_exit_cb is not None:
                self._on_exit_cb(self)

    @property
    def alive(self) -> bool:
        """Not known to have exited. Its sentinel says so at once, before the loop has run
        the exit callback: the forkserver writes the exit status there, or, dying itself,
        closes it."""
        return (self._exited is not None and not self._exited.done()
                and self.proc.exitcode is None)

    async def assign(self, a: Assignment) -> None:
        assert self._ctrl_w is not None
        self._ctrl_w.write(protocol.encode_frame(a))
        await self._ctrl_w.drain()

    async def messages(self) -> AsyncIterator[WorkerMsg]:
        assert self._ctrl_r is not None
        while True:
            try:
                head = await self._ctrl_r.readexactly(4)
                (size,) = protocol.HEADER.unpack(head)
                body = await self._ctrl_r.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            yield _msg_dec.decode(body)

    async def wait_exit(self) -> int | None:
        assert self._exited is not None
        return await self._exited

    def signal_group(self, sig: int) -> bool:
        """Signal the worker's whole process group; False when it is already gone."""
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def close(self) -> None:
        for w in (self._ctrl_w, self._log_w):
            if w is not None:
                w.close()
        if self._exited is not None and not self._exited.done():
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.proc.sentinel)
            self._exited.cancel()
        with contextlib.suppress(ValueError):     # closed already (a second close)
            if self.proc.exitcode is not None:
                self.proc.close()         # frees its sentinel fd


class WorkerPool:
    """Keeps `spares` idle workers ready; hands one out per long request."""

    def __init__(self, spares: int = 2, run_dir: Path | str | None = None,
                 handlers: list[str] | None = None, cpu: CpuGroups | None = None):
        # Modules that register the long handlers (skyd.requests.context): preloaded in
        # the forkserver, imported again by each worker (a no-op when preloaded).
        self.handlers = list(handlers or [])
        self.target_spares = max(1, spares)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.cpu = cpu          # where the forkserver, and so every worker, yields to the daemon
        self._ctx = multiprocessing.get_context("forkserver")
        self._spares: deque[Worker] = deque()
        self._waiters: deque[asyncio.Future] = deque()
        self._refill_wake = asyncio.Event()
        self._refiller: asyncio.Task | None = None
        self._closing = False
        self.busy: set[Worker] = set()
        self.started = 0
        self._recorded: dict[str, int] = {}      # helper process -> the pid recorded for it

    async def start(self) -> None:
        self._ctx.set_forkserver_preload(PRELOAD + self.handlers)
        await asyncio.to_thread(self._start_forkserver)
        self._refiller = asyncio.get_running_loop().create_task(self._refill_loop(),
                                                                name="worker-refill")
        self._refill_wake.set()

    def _start_forkserver(self) -> None:
        """Start the forkserver (and resource tracker), or start it again when it died:
        each one started is recorded for reap_previous. Blocking; cheap when it runs."""
        if self.cpu is not None:
            self.cpu.start_in_work_blocking(_ensure_forkserver)
        else:
            _ensure_forkserver()
        from multiprocessing import resource_tracker
        for name, pid in (("forkserver", self.forkserver_pid),
                          ("resource-tracker", getattr(resource_tracker._resource_tracker,
                                                       "_pid", None))):
            if not pid or self._recorded.get(name) == pid:
                continue
            if name in self._recorded:
                log.warning("the %s (pid %d) died: started a new one (pid %d)", name,
                            self._recorded[name], pid)
            self._recorded[name] = pid
            if self.run_dir is not None:
                self.run_dir.mkdir(mode=0o700, exist_ok=True)
                record_process(self.run_dir, name, pid, group=False)

    def _forget(self, name: str) -> None:
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.run_dir / name)

    @property
    def forkserver_pid(self) -> int | None:
        from multiprocessing import forkserver
        return getattr(forkserver._forkserver, "_forkserver_pid", None)

    async def _refill_loop(self) -> None:
        while not self._closing:
            await self._refill_wake.wait()
            self._refill_wake.clear()
            while not self._closing and len(self._spares) < self.target_spares + len(self._waiters):
                try:
                    w = await self._spawn()
                except Exception:  # noqa: BLE001 - retried, but never in a hot loop
                    log.exception("could not start a worker process")
                    await asyncio.sleep(0.5)
                    continue
                if self._closing:
                    self._retire(w)
                    return
                self._hand_over(w)

    def _hand_over(self, w: Worker) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(w)
                return
        self._spares.append(w)

    async def _spawn(self) -> Worker:
        ctrl_parent, ctrl_child = socket.socketpair()
        log_parent, log_child = socket.socketpair()
        proc = self._ctx.Process(target=worker.spare_main,
                                 args=(ctrl_child, log_child, self.handlers),
                                 name="skyd-worker", daemon=False)
        try:
            await asyncio.to_thread(self._start_worker, proc)
        finally:
            ctrl_child.close()
            log_child.close()
        w = Worker(proc, ctrl_parent, log_parent, on_exit=self._worker_exited)
        await w.attach()
        self.started += 1
        return w

    def _start_worker(self, proc: BaseProcess) -> None:
        self._start_forkserver()        # again, if it died since
        proc.start()
        assert proc.pid is not None
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                record_process(self.run_dir, str(proc.pid), proc.pid, group=True)

    def _worker_exited(self, w: Worker) -> None:
        """A worker exited: a spare is dropped and replaced (busy ones are their runner's)."""
        if w in self._spares:
            self._spares.remove(w)
            self._drop(w)
            self._refill_wake.set()

    async def take(self) -> Worker:
        """An idle worker, now: a live spare if one is ready, else the next one started."""
        if self._closing:
            raise RuntimeError("worker pool is closing")
        w = None
        while self._spares and w is None:
            w = self._spares.popleft()
            if not w.alive:             # its exit not handled yet (its forkserver died)
                self._drop(w)
                w = None
        if w is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            self._refill_wake.set()
            w = await fut
        self.busy.add(w)
        self._refill_wake.set()
        return w

    async def assign(self, a: Assignment, stopped: Callable[[], bool] = lambda: False,
                     tries: int = ASSIGN_TRIES) -> Worker | None:
        """Take an idle worker and hand it `a`; the worker that has it. One found dead on
        delivery (it died with its forkserver after take() looked) is replaced by a fresh
        one, `tries` times at most, then SkydError. None, with no worker left taken, when
        `stopped()` says the request no longer wants one (cancelled or out of time while
        it waited)."""
        why = ""
        for _ in range(tries):
            w = await self.take()
            if stopped():
                self.busy.discard(w)
                self._retire(w)
                return None
            try:
                await w.assign(a)
                return w
            except (OSError, RuntimeError) as e:   # its end is closed: the worker died
                why = f"{type(e).__name__}: {e}"
                log.warning("worker process %d died before it took request %s (%s): "
                            "handing it to a fresh one", w.pid, a.request_id, why)
                self.busy.discard(w)
                self._retire(w)
        raise SkydError(ErrorCode.UNAVAILABLE, f"no worker process could take the request: "
                        f"{tries} died before they took it (last: {why})",
                        "submit it again; if this recurs, see the daemon's log")

    def release(self, w: Worker) -> None:
        self.busy.discard(w)
        w.close()
        self._forget(str(w.pid))

    def _retire(self, w: Worker) -> None:
        w.signal_group(signal.SIGKILL)
        self._drop(w)

    def _drop(self, w: Worker) -> None:
        """Forget a worker that has exited (nothing to signal: its pid may be reused)."""
        w.close()
        self._forget(str(w.pid))

    async def shutdown(self, grace: float = 2.0) -> None:
        """Stop every worker, spare or busy, and the forkserver: no child left behind."""
        self._closing = True
        self._refill_wake.set()
        if self._refiller is not None:
            self._refiller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refiller
        for fut in self._waiters:
            fut.cancel()
        while self._spares:
            self._retire(self._spares.popleft())
        busy = list(self.busy)
        for w in busy:
            w.signal_group(signal.SIGTERM)
        if busy:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(w.wait_exit() for w in busy),
                                                      return_exceptions=True), grace)
        for w in busy:
            w.signal_group(signal.SIGKILL)
            w.close()
            self._forget(str(w.pid))
        await asyncio.to_thread(_stop_forkserver)
        self._forget("forkserver")
        self._forget("resource-tracker")


def _ensure_forkserver() -> None:
    from multiprocessing import forkserver
    forkserver.ensure_running()


def _stop_forkserver() -> None:
    from multiprocessing import forkserver
    fs = forkserver._forkserver
    pid = getattr(fs, "_forkserver_pid", None)
    stop = getattr(fs, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()
    elif pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
