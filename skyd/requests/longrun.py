"""One long request's run, from dispatch to outcome: the workload prepares what it acts
on, the request is marked running (durable before any work starts), a worker process
runs it and reports changes as they happen (applied by the workload), and the outcome is
handed back. Cancel and the time limit stop the worker's whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from skyd import metrics
from skyd.identity import user_identity
from skyd.protocol import Error, ErrorCode, SkydError, Status
from skyd.requests.messages import Assignment, Done
from skyd.requests.pool import Worker, WorkerPool
from skyd.requests.request import Request, time_limit_error
from skyd.requests.workload import Workload
from skyd.store import Store
from skyd.streams import RequestLog

# Records how a request ended: (request, status, value, error).
Finish = Callable[[Request, Status, Any, Error | None], Awaitable[None]]


class LongRunner:
    def __init__(self, store: Store, pool: WorkerPool, workload: Workload, finish: Finish,
                 log_path: Callable[[str], Path], log_limit: int, long_timeout: float,
                 kill_grace: float):
        self.store = store
        self.pool = pool
        self.workload = workload
        self.finish = finish
        self.log_path = log_path
        self.log_limit = log_limit          # bytes kept per request log (0: all)
        self.long_timeout = long_timeout    # the default time limit, seconds (0: none)
        self.kill_grace = kill_grace        # SIGTERM, then SIGKILL this much later

    async def run(self, req: Request) -> None:
        rec = req.record
        req.log = RequestLog(self.log_path(rec.id), req.topic, self.log_limit)
        try:
            cluster, jobs = await self.workload.prepare(req.op, rec)
        except SkydError as e:
            await self.finish(req, Status.FAILED, None, e.to_wire())
            return
        started = time.time()
        await self.store.mark_running(rec.id, started)   # durable before any work starts
        rec.started_at, rec.status = started, Status.RUNNING
        metrics.status_changed(rec)
        req.topic.notify()
        limit = getattr(req.op, "timeout", None) or self.long_timeout
        if 0 < limit < float("inf"):
            req.timer = asyncio.get_running_loop().call_later(limit, self._time_up, req, limit)
        assert req.op_bytes is not None
        # On someone's cluster even an admin acts as its owner, never as root.
        uid = cluster.uid if cluster is not None else rec.uid
        user, gid, home = user_identity(uid)
        try:
            # A worker found dead on delivery (its forkserver killed) is replaced.
            worker = await self.pool.assign(Assignment(
                request_id=rec.id, op=req.op_bytes, uid=uid, gid=gid,
                user=user, home=home, state_dir=self.workload.state_dir,
                cluster=cluster, jobs=jobs, ssh_known_hosts=self.workload.ssh_known_hosts,
                slurm=self.workload.slurm),
                stopped=lambda: req.cancel_requested or req.timed_out is not None)
        except SkydError as e:
            await self.finish(req, Status.FAILED, None, e.to_wire())
            return
        if worker is None:          # cancelled or out of time before a worker had it
            if req.timed_out is not None:
                await self.finish(req, Status.FAILED, None, time_limit_error(req.timed_out))
            else:
                await self.finish(req, Status.CANCELLED, None, None)
            return
        req.worker = worker
        if req.cancel_requested or req.timed_out is not None:
            self.stop(req)          # it came while the assignment was being delivered
        req.log.line(f"running {rec.name} in worker process {worker.pid}")
        done, code = await self._serve(req, worker)
        await self._outcome(req, done, code)

    async def _serve(self, req: Request, worker: Worker) -> tuple[Done | None, int | None]:
        """Apply what the worker reports until it exits; its output goes to the log."""
        assert req.log is not None
        pump = asyncio.get_running_loop().create_task(self._pump(worker, req.log))
        done: Done | None = None
        try:
            async for msg in worker.messages():
                if isinstance(msg, Done):
                    done = msg
                else:
                    await self.workload.apply(msg, req.record)
            code = await worker.wait_exit()
        finally:
            worker.signal_group(signal.SIGKILL)   # anything it left in its group
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(pump, 1.0)
            pump.cancel()
            self.pool.release(worker)
        return done, code

    async def _outcome(self, req: Request, done: Done | None, code: int | None) -> None:
        if req.timed_out is not None and (done is None or done.error is not None):
            await self.finish(req, Status.FAILED, None, time_limit_error(req.timed_out))
        elif req.cancel_requested:
            await self.finish(req, Status.CANCELLED, None, None)
        elif done is None:
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            await self.finish(req, Status.FAILED, None, Error(
                ErrorCode.INTERNAL, f"the worker process died without a result ({why})"))
        elif done.error is not None:
            await self.finish(req, Status.FAILED, None, done.error)
        else:
            await self.finish(req, Status.SUCCEEDED, done.value, None)

    def stop(self, req: Request) -> None:
        """Stop its worker's process group: SIGTERM, then SIGKILL after the grace."""
        worker = req.worker
        if worker is not None:
            worker.signal_group(signal.SIGTERM)
            asyncio.get_running_loop().call_later(
                self.kill_grace, worker.signal_group, signal.SIGKILL)

    def _time_up(self, req: Request, limit: float) -> None:
        """Past its time limit: stop its worker's process group, as a cancel does."""
        if req.done.done() or req.cancel_requested or req.timed_out is not None:
            return
        req.timed_out = limit
        metrics.limit_hit("long_timeout")
        if req.log is not None:
            req.log.line(f"time limit of {limit:g} s exceeded: stopping the worker's "
                         "process group")
        self.stop(req)

    @staticmethod
    async def _pump(worker: Worker, out: RequestLog) -> None:
        reader = worker.log_reader
        assert reader is not None
        while True:
            data = await reader.read(65536)
            if not data:
                return
            out.append(data)
