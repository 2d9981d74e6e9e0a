"""Worker processes for long requests, started from a preloaded forkserver.

Starting a multiprocessing Process is a blocking round trip to the forkserver (~12 ms),
so it happens in a thread, ahead of need: a few idle spares wait for an assignment and
are refilled in the background. Handing a request to a spare is one socket write, which
keeps accepted -> running well under the 10 ms goal. Still one process per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections import deque
from typing import AsyncIterator

import msgspec

from skyd import protocol, worker
from skyd.workerproto import Assignment, WorkerMsg

log = logging.getLogger("skyd.workers")

PRELOAD = ["skyd.worker", "skyd.ops.clusters", "skyd.infra.local", "skyd.infra.ssh"]
_msg_dec = msgspec.msgpack.Decoder(WorkerMsg)


class Worker:
    """One worker process seen from the daemon: its control channel, log, and exit."""

    def __init__(self, proc: multiprocessing.Process, ctrl: socket.socket, log_sock: socket.socket):
        self.proc = proc
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
        if self.proc.exitcode is not None:
            with contextlib.suppress(ValueError):
                self.proc.close()         # frees its sentinel fd


class WorkerPool:
    """Keeps `spares` idle workers ready; hands one out per long request."""

    def __init__(self, spares: int = 2):
        self.target_spares = max(1, spares)
        self._ctx = multiprocessing.get_context("forkserver")
        self._spares: deque[Worker] = deque()
        self._waiters: deque[asyncio.Future] = deque()
        self._refill_wake = asyncio.Event()
        self._refiller: asyncio.Task | None = None
        self._closing = False
        self.busy: set[Worker] = set()
        self.started = 0

    async def start(self) -> None:
        self._ctx.set_forkserver_preload(PRELOAD)
        await asyncio.to_thread(_ensure_forkserver)
        self._refiller = asyncio.get_running_loop().create_task(self._refill_loop(),
                                                                name="worker-refill")
        self._refill_wake.set()

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
        proc = self._ctx.Process(target=worker.spare_main, args=(ctrl_child, log_child),
                                 name="skyd-worker", daemon=False)
        try:
            await asyncio.to_thread(proc.start)
        finally:
            ctrl_child.close()
            log_child.close()
        w = Worker(proc, ctrl_parent, log_parent)
        await w.attach()
        self.started += 1
        return w

    async def take(self) -> Worker:
        """An idle worker, now: a spare if one is ready, else the next one started."""
        if self._closing:
            raise RuntimeError("worker pool is closing")
        if self._spares:
            w = self._spares.popleft()
        else:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            self._refill_wake.set()
            w = await fut
        self.busy.add(w)
        self._refill_wake.set()
        return w

    def release(self, w: Worker) -> None:
        self.busy.discard(w)
        w.close()

    def _retire(self, w: Worker) -> None:
        w.signal_group(signal.SIGKILL)
        w.close()

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
        await asyncio.to_thread(_stop_forkserver)


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
