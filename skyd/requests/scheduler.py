"""Two FIFO queues, each behind its own bound, and the life of every request.

Long requests (launch, exec, stop, start, down) are durable before they are accepted,
wait their turn in the fair long queue (fairqueue.py), and each runs in its own worker
process (longrun.py). Short requests are coroutines in the loop, admitted in arrival
order by a FIFO semaphore; being read-only, they live in memory only (a bounded ring of
recent ones for `api status -a`). After a restart, recovery.py says what runs again.

What long requests act on is the Workload's (skyd.requests.workload; the clusters
package implements it): the scheduler admits, prepares, applies and ends through it and
knows nothing else of clusters. A request's `cluster` is, here, only its target: the
requests on one target run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Iterator

import msgspec

from skyd import metrics
from skyd.identity import Caller
from skyd.protocol import Error, ErrorCode, Op, Queue, RequestRecord, SkydError, Status
from skyd.requests import recovery
from skyd.requests.fairqueue import FairQueue
from skyd.requests.longrun import LongRunner
from skyd.requests.pool import WorkerPool
from skyd.requests.recovery import INTERRUPTED
from skyd.requests.request import Request, current_request, op_name, stored_error, uncapped_uids
from skyd.requests.slots import FifoSlots
from skyd.requests.workload import Workload
from skyd.store import Store
from skyd.streams import RequestLog

__all__ = ["INTERRUPTED", "Request", "Scheduler", "current_request", "op_name", "stored_error"]

log = logging.getLogger("skyd.requests.scheduler")
_enc = msgspec.msgpack.Encoder()

SHORT_RING = 1000


class Scheduler:
    def __init__(self, store: Store, pool: WorkerPool, workload: Workload, logs_dir: Path,
                 long_slots: int, short_slots: int, kill_grace: float = 3.0, *,
                 user_long_slots: int = 0, user_pending: int = 0, long_timeout: float = 0.0,
                 log_limit: int = 0):
        self.store = store
        self.pool = pool
        self.workload = workload
        self.logs_dir = logs_dir
        self.long_slots = long_slots
        self.short = FifoSlots(short_slots)
        # Fair shares (0: no cap; root has none): long slots one user may hold, long
        # requests one user may have waiting; the default time limit; bytes per log.
        self.user_long_slots = user_long_slots
        self.user_pending = user_pending
        self.long_timeout = long_timeout
        self.log_limit = log_limit
        self.uncapped = uncapped_uids()
        self.long_queue = FairQueue(user_long_slots, self.uncapped)
        self.long_pending = self.long_queue.pending      # insertion order is arrival order
        self.long_running = self.long_queue.running
        self.long_peak = 0
        self.runner = LongRunner(store, pool, workload, self._finish, self.log_path, log_limit,
                                 long_timeout, kill_grace)
        self.short_live: dict[str, Request] = {}
        # Ended, outcome being committed: still listed and found as it was until then.
        self.finishing: dict[str, Request] = {}
        self.short_ring: collections.deque[RequestRecord] = collections.deque(maxlen=SHORT_RING)
        self._tasks: set[asyncio.Task] = set()
        self.accepting = True
        self.counters: collections.Counter[str] = collections.Counter()

    # ---- lookup ------------------------------------------------------------------------

    def active(self, request_id: str) -> Request | None:
        return (self.long_running.get(request_id) or self.long_pending.get(request_id)
                or self.short_live.get(request_id) or self.finishing.get(request_id))

    def live(self) -> dict[str, Request]:
        """Every request not yet ended durably, by id: running, pending, short or finishing."""
        return {**self.finishing, **self.short_live, **self.long_pending, **self.long_running}

    def log_path(self, request_id: str) -> Path:
        return self.logs_dir / f"{request_id}.log"

    def target_busy(self, target: str) -> bool:
        """A long request on it is pending or running."""
        return self.long_queue.busy(target)

    def queued_on(self, target: str) -> Iterator[tuple[RequestRecord, Op]]:
        """The long requests on it, pending or running, in the order they run."""
        return ((r.record, r.op) for r in self.long_queue.on(target))

    # ---- long requests -------------------------------------------------------------------

    async def submit_long(self, op: Op, caller: Caller, internal: bool = False,
                          with_insert: Callable[[RequestRecord], Awaitable] | None = None
                          ) -> tuple[Request, int]:
        """Make the request durable, queue it, and say how many are ahead of it.
        `internal`: the daemon submits it on its owner's behalf. `with_insert(record)`
        issues writes that must commit in the same transaction as the request's row."""
        if not self.accepting:
            raise SkydError(ErrorCode.UNAVAILABLE, "the server is shutting down",
                            "retry in a few seconds")
        op = self.workload.admit(op, caller.uid, caller.admin, self.queued_on, internal)
        # The pending cap binds people, not the daemon's own submissions on their behalf
        # (the jobs controller bounds its launches itself; autostop is one per cluster).
        counted = bool(self.user_pending) and not internal and caller.uid not in self.uncapped
        if counted:
            waiting = self.long_queue.waiting(caller.uid)
            if waiting >= self.user_pending:
                metrics.limit_hit("user_pending")
                raise SkydError(ErrorCode.BUSY,
                                f"queue full for you: {waiting} of your long requests are "
                                f"waiting (limit {self.user_pending} per user)",
                                "wait for some to start, or cancel some: skyctl api status; "
                                "skyctl api cancel ID")
        record = RequestRecord(id=str(uuid.uuid4()), name=op_name(op),
                               queue=Queue.LONG, status=Status.PENDING, user=caller.user,
                               uid=caller.uid, created_at=time.time(),
                               cluster=op.target_cluster())
        op_bytes = _enc.encode(op)
        req = Request(record, op, op_bytes)
        # Durable before "accepted". No await between the writes: one group commit.
        # Through a store fault a person's submission is refused (they may retry); the
        # daemon's own waits for the store (it has nobody to retry it).
        writes: list[Awaitable[Any]] = [self.store.add_request(record, op_bytes,
                                                               patient=internal)]
        if with_insert is not None:
            writes.append(with_insert(record))
        if counted:
            self.long_queue.count(caller.uid)    # held across the commit
        try:
            await asyncio.gather(*writes)
        except BaseException:
            if counted:
                self.long_queue.uncount(caller.uid)
            raise
        req.counted = counted
        metrics.status_changed(record)      # accepted
        ahead = self.long_queue.ahead(self.long_slots)
        self.counters["long_accepted"] += 1
        free = record.cluster is None or not self.long_queue.busy(record.cluster)
        if self._queue(req) and free:
            self._dispatch()    # else it waits behind its target or is held: nothing new could start
        return req, ahead

    def _queue(self, req: Request) -> bool:
        """Into the long queue; held (no turns) while the workload says it must wait.
        True: it may take a turn now."""
        why = self.workload.hold(req.op, req.record, self._hold_changed)
        self.long_queue.add(req, held=bool(why))
        if why:
            self._note_waiting(req, why)
        return not why

    def _hold_changed(self, request_id: str, why: str) -> None:
        req = self.long_pending.get(request_id)
        if req is None:
            return
        if why:
            self._note_waiting(req, why)
        elif self.long_queue.release(request_id):
            req.record.waiting = ""
            self._dispatch()

    def _note_waiting(self, req: Request, why: str) -> None:
        """Why it waits: on its record (api status) and in its log (its followers)."""
        if why == req.record.waiting:
            return
        req.record.waiting = why
        note = RequestLog(self.log_path(req.record.id), req.topic)
        note.line(why)
        note.close()

    def _dispatch(self) -> None:
        if not self.accepting:      # shutting down: what waits stays pending
            return
        for req in self.long_queue.take(self.long_slots - len(self.long_running)):
            # The slot is taken before the task starts and given back in its
            # done-callback, so no exception or cancellation can leak it.
            self._spawn(self.runner.run(req), functools.partial(self._release_long, req))
        self.long_peak = max(self.long_peak, len(self.long_running))

    def _release_long(self, req: Request, task: asyncio.Task) -> None:
        self.long_queue.ended(req)
        if req.timer is not None:
            req.timer.cancel()
        if not req.done.done():
            if task.cancelled():
                # Shutting down: its row stays RUNNING; the next start re-runs or fails it.
                req.done.set_result(None)
            else:
                # The run died without an outcome (a bug): record one, so that neither the
                # row nor a waiter is left RUNNING for good.
                self._spawn(self._finish_crashed(req, task.exception()))
        self._dispatch()

    async def _finish_crashed(self, req: Request, exc: BaseException | None) -> None:
        log.error("request %s ended without an outcome", req.record.id, exc_info=exc)
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "no outcome"
        try:
            await self._finish(req, Status.FAILED, error=Error(
                ErrorCode.INTERNAL, f"the server failed while running it ({why})",
                "this is a bug in skyd; the server log has the details"))
        finally:
            if not req.done.done():
                req.done.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None],
               on_done: Callable[[asyncio.Task], None] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)

    async def _finish(self, req: Request, status: Status, value: Any = None,
                      error: Error | None = None) -> None:
        """Record the outcome, then publish it. Until the row is committed the request
        reads as it was (`api status`, a waiter, its log): what anyone is told has ended
        has ended durably, so a crash in between cannot re-run what a client saw end."""
        rec = req.record
        ended = time.time()
        final = msgspec.structs.replace(
            rec, status=status, finished_at=ended,
            error=error.message if error is not None else rec.error)
        blob = _enc.encode(error if error is not None else value)
        self.finishing[rec.id] = req
        try:
            if rec.queue is Queue.LONG:
                await self.workload.on_end(final)
                await self.store.finish_request(rec.id, status, ended, blob, final.error)
        finally:
            self.finishing.pop(rec.id, None)
        rec.status, rec.finished_at, rec.error = status, ended, final.error
        req.result = error if error is not None else blob
        if req.log is not None:
            req.log.line(f"request {status.value}" + (f": {rec.error}" if rec.error else ""))
            req.log.close()
        self.counters[f"{rec.queue.value}_{status.value}"] += 1
        metrics.request_finished(rec)
        req.topic.notify()
        if not req.done.done():
            req.done.set_result(None)

    # ---- cancel (out of band: never queued behind the work it cancels) -------------------

    async def cancel(self, req: Request) -> bool:
        rid = req.record.id
        if rid in self.long_pending:
            self.long_queue.remove(req)
            await self._finish(req, Status.CANCELLED)
            self._dispatch()
            return True
        if rid in self.long_running:
            if rid in self.finishing or req.record.status.finished:
                return False        # its outcome is recorded, or being recorded: too late
            if not req.cancel_requested:
                req.cancel_requested = True
                if req.log is not None:
                    req.log.line("cancel requested: stopping the worker's process group")
                self.runner.stop(req)
            # Durable before it is acknowledged: after a crash the restart finishes it as
            # cancelled instead of running it again.
            await self.store.mark_cancel_requested(rid)
            return True
        return False

    # ---- short requests -------------------------------------------------------------------

    def new_short(self, op: Op, caller: Caller) -> Request:
        record = RequestRecord(id=str(uuid.uuid4()), name=op_name(op),
                               queue=Queue.SHORT, status=Status.PENDING, user=caller.user,
                               uid=caller.uid, created_at=time.time(),
                               cluster=op.target_cluster())
        return Request(record, op)

    async def run_short(self, req: Request, handler: Callable[[], Awaitable[Any]],
                        stream: Callable[[Any], Awaitable[None]] | None = None) -> Any:
        """Run `handler` when a short slot is free, in arrival order. A streaming request
        (`stream`: send what the handler returned, e.g. follow a log) gives its slot back
        once the handler has returned — a follower waits, it does not work — but stays
        RUNNING until its stream has ended."""
        rid = req.record.id
        self.short_live[rid] = req
        try:
            await self.short.acquire()
            try:
                req.record.status = Status.RUNNING
                req.record.started_at = time.time()
                current_request.set(rid)
                value = await handler()
            finally:
                self.short.release()
            if stream is not None:
                await stream(value)
        except SkydError as e:
            await self._finish(req, Status.FAILED, error=e.to_wire())
            raise
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            await self._finish(req, Status.CANCELLED)     # or its client went away
            raise
        finally:
            self.short_live.pop(rid, None)
            self.short_ring.append(req.record)
        await self._finish(req, Status.SUCCEEDED)
        return value

    def spawn_short(self, req: Request, handler: Callable[[], Awaitable[Any]]) -> None:
        """--async for a short request: run it in the background."""
        async def run() -> None:
            with contextlib.suppress(SkydError):
                await self.run_short(req, handler)
        self._spawn(run())

    # ---- start-up and shutdown ---------------------------------------------------------

    async def recover(self) -> tuple[int, int, int]:
        """Queue again what was pending, in its original order; re-run what was running
        if that is safe, fail it otherwise. Returns (requeued, rerun, failed)."""
        got = await recovery.reload(self.store, self.log_path)
        for req in got.queue:
            self._queue(req)
        for req in got.cancelled:
            req.log = RequestLog(self.log_path(req.record.id), req.topic)
            req.log.line("the server restarted after this was cancelled; not running it again")
            await self._finish(req, Status.CANCELLED)
        for req in got.stale:
            req.log = RequestLog(self.log_path(req.record.id), req.topic)
            await self._finish(req, Status.FAILED, error=Error(
                ErrorCode.FAILED, INTERRUPTED, "it was not re-run because it is not idempotent; "
                "submit it again if needed"))
        self._dispatch()
        return got.requeued, got.rerun, len(got.stale)

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting; let running long requests finish for a while; then stop them.
        Their rows stay RUNNING, so the next start re-runs or fails them as it should."""
        self.accepting = False
        self.long_slots = len(self.long_running)   # start nothing new
        running = [r.done for r in self.long_running.values()]
        if running and drain_timeout > 0:
            await asyncio.wait(running, timeout=drain_timeout)
        for task in list(self._tasks):
            task.cancel()
        await self.pool.shutdown()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
