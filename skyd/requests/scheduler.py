"""Two FIFO queues, each behind its own bound, and the life of every request.

Long requests (launch, exec, stop, start, down) are durable before they are accepted,
wait in arrival order (a request on a cluster also waits for earlier ones on the same
cluster), and each runs in its own worker process. Short requests are coroutines in the
loop, admitted in arrival order by a FIFO semaphore; being read-only, they live in memory
only (a bounded ring of recent ones for `api status -a`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine

import msgspec

from skyd import protocol
from skyd.streams import RequestLog, Topic
from skyd.protocol import Error, ErrorCode, Op, Queue, RequestRecord, SkydError, Status
from skyd.requests.slots import FifoSlots
from skyd.requests.workload import Workload
from skyd.store import Store
from skyd.identity import Caller, user_identity
from skyd.requests.messages import Assignment, Done
from skyd.requests.pool import Worker, WorkerPool

log = logging.getLogger("skyd.requests.scheduler")
_enc = msgspec.msgpack.Encoder()
_op_dec = msgspec.msgpack.Decoder(protocol.AnyOp)

INTERRUPTED = "interrupted by server restart"
SHORT_RING = 1000
# The short request a handler is serving (so `api status` need not list itself).
current_request: contextvars.ContextVar[str] = contextvars.ContextVar("current_request", default="")


_blob_dec = msgspec.msgpack.Decoder()


def stored_error(status: Status, stored: Any) -> Error | None:
    """A finished request's error: an Error while it is in memory, msgpack once stored."""
    if isinstance(stored, Error):
        return stored
    if status is Status.FAILED and stored is not None:
        return msgspec.convert(_blob_dec.decode(stored), Error)
    return None


def uncapped_uids() -> frozenset[int]:
    """The host's operators, who have no per-user caps: root and the daemon's own user."""
    return frozenset({0, os.geteuid()})


def op_name(op: Op) -> str:
    """The op's wire tag (its name in listings)."""
    return str(op.__struct_config__.tag)


def _time_limit(limit: float) -> Error:
    return Error(ErrorCode.FAILED, f"time limit of {limit:g} s exceeded",
                 "give the request more time with --timeout SECONDS (launch, exec)")


class Request:
    """A request's runtime beside its persisted row: never stored itself."""

    __slots__ = ("record", "op", "op_bytes", "log", "topic", "result", "worker",
                 "cancel_requested", "done", "counted", "timed_out", "timer")

    def __init__(self, record: RequestRecord, op: Op, op_bytes: bytes | None = None):
        self.record = record
        self.op = op
        self.op_bytes = op_bytes
        self.log: RequestLog | None = None
        self.topic = Topic()
        self.result: Any = None            # msgpack bytes of the value, or an Error
        self.worker: Worker | None = None
        self.cancel_requested = False
        self.done = asyncio.get_running_loop().create_future()
        self.counted = False               # counts against its user's pending cap
        self.timed_out: float | None = None   # the time limit it ran past, seconds
        self.timer: asyncio.TimerHandle | None = None


class Scheduler:
    def __init__(self, store: Store, pool: WorkerPool, state: Workload, logs_dir: Path,
                 long_slots: int, short_slots: int, kill_grace: float = 3.0, *,
                 user_long_slots: int = 0, user_pending: int = 0, long_timeout: float = 0.0,
                 log_limit: int = 0):
        self.store = store
        self.pool = pool
        self.state = state
        self.logs_dir = logs_dir
        self.long_slots = long_slots
        self.short = FifoSlots(short_slots)
        self.kill_grace = kill_grace
        self.long_pending: dict[str, Request] = {}     # insertion order is FIFO order
        self.long_running: dict[str, Request] = {}
        self.long_peak = 0
        # Fair shares (0: no cap; root has none): long slots one user may hold, long
        # requests one user may have waiting; the default time limit; bytes per log.
        self.user_long_slots = user_long_slots
        self.user_pending = user_pending
        self.long_timeout = long_timeout
        self.log_limit = log_limit
        self.uncapped = uncapped_uids()
        # The long queue by user (FIFO each) and by cluster (acceptance order, so that a
        # request on a cluster waits for the earlier ones on it, whoever sent them).
        self._user_queues: dict[int, dict[str, Request]] = {}
        self._cluster_queues: dict[str, dict[str, None]] = {}
        self._user_running: collections.Counter[int] = collections.Counter()
        self._user_waiting: collections.Counter[int] = collections.Counter()  # counted ones
        self._served: dict[int, int] = {}     # uid -> when it last got a slot (a sequence)
        self._serve_seq = 0
        # Long requests pending or running, per cluster (None: no cluster): lets a
        # submission behind a busy cluster skip the dispatch scan altogether.
        self._cluster_load: collections.Counter[str | None] = collections.Counter()
        self.short_live: dict[str, Request] = {}
        self.short_ring: collections.deque[RequestRecord] = collections.deque(maxlen=SHORT_RING)
        self._tasks: set[asyncio.Task] = set()
        self.accepting = True
        self.counters: collections.Counter[str] = collections.Counter()

    # ---- lookup ------------------------------------------------------------------------

    def active(self, request_id: str) -> Request | None:
        return (self.long_running.get(request_id) or self.long_pending.get(request_id)
                or self.short_live.get(request_id))

    def log_path(self, request_id: str) -> Path:
        return self.logs_dir / f"{request_id}.log"

    def cluster_busy(self, cluster: str) -> bool:
        """A long request on it is pending or running."""
        return cluster in self._cluster_load

    def queued_launch_owner(self, cluster: str) -> int | None:
        """The uid whose queued (or running) launch will create `cluster`, if any."""
        for r in (*self.long_running.values(), *self.long_pending.values()):
            if isinstance(r.op, protocol.Launch) and r.record.cluster == cluster:
                return r.record.uid
        return None

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
        op = self.state.check_submit(op, caller.uid, caller.admin, self.queued_launch_owner,
                                     internal)
        # The pending cap binds people, not the daemon's own submissions on their behalf
        # (the jobs controller bounds its launches itself; autostop is one per cluster).
        counted = bool(self.user_pending) and not internal and caller.uid not in self.uncapped
        if counted:
            waiting = self._user_waiting[caller.uid]
            if waiting >= self.user_pending:
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
        writes: list[Awaitable[Any]] = [self.store.add_request(record, op_bytes)]
        if with_insert is not None:
            writes.append(with_insert(record))
        if counted:
            self._user_waiting[caller.uid] += 1    # held across the commit
        try:
            await asyncio.gather(*writes)
        except BaseException:
            if counted:
                self._uncount(caller.uid)
            raise
        req.counted = counted
        ahead = len(self.long_pending) + max(0, len(self.long_running) - self.long_slots + 1)
        self.counters["long_accepted"] += 1
        free = record.cluster is None or record.cluster not in self._cluster_load
        self._enqueue(req)
        if free:
            self._dispatch()    # else it waits behind its cluster: nothing new could start
        return req, ahead

    def _enqueue(self, req: Request) -> None:
        rec = req.record
        self.long_pending[rec.id] = req
        self._user_queues.setdefault(rec.uid, {})[rec.id] = req
        if rec.cluster is not None:
            self._cluster_queues.setdefault(rec.cluster, {})[rec.id] = None
        self._cluster_load[rec.cluster] += 1

    def _dequeue(self, req: Request) -> None:
        """It leaves the pending queue (to run, or cancelled)."""
        rec = req.record
        del self.long_pending[rec.id]
        mine = self._user_queues[rec.uid]
        del mine[rec.id]
        if not mine:
            del self._user_queues[rec.uid]
        if rec.cluster is not None:
            on_cluster = self._cluster_queues[rec.cluster]
            del on_cluster[rec.id]
            if not on_cluster:
                del self._cluster_queues[rec.cluster]
        if req.counted:
            req.counted = False
            self._uncount(rec.uid)

    def _uncount(self, uid: int) -> None:
        self._user_waiting[uid] -= 1
        if self._user_waiting[uid] <= 0:
            del self._user_waiting[uid]

    def _at_cap(self, uid: int) -> bool:
        cap = self.user_long_slots
        return bool(cap) and uid not in self.uncapped and self._user_running[uid] >= cap

    def _next_of(self, uid: int, busy: set[str]) -> Request | None:
        """The user's oldest request that may start now: not behind its cluster."""
        for req in self._user_queues[uid].values():
            cluster = req.record.cluster
            if cluster is None:
                return req
            if cluster not in busy and next(iter(self._cluster_queues[cluster])) == req.record.id:
                return req
        return None

    def _dispatch(self) -> None:
        if (len(self.long_running) >= self.long_slots or not self.long_pending
                or not self.accepting):     # shutting down: what waits stays pending
            return
        busy = {r.record.cluster for r in self.long_running.values() if r.record.cluster}
        if None not in self._cluster_load and len(busy) == len(self._cluster_load):
            return              # every pending request waits behind a busy cluster
        # Round robin across users, the one served least recently first; FIFO within a
        # user; a user at their share of slots waits.
        served = self._served
        turn = collections.deque(sorted(self._user_queues, key=lambda u: served.get(u, 0)))
        while turn and len(self.long_running) < self.long_slots:
            uid = turn.popleft()
            if self._at_cap(uid):
                continue
            req = self._next_of(uid, busy)
            if req is None:
                continue
            if req.record.cluster is not None:
                busy.add(req.record.cluster)      # later requests on it wait for this one
            self._dequeue(req)
            self._serve_seq += 1
            served[uid] = self._serve_seq
            self._user_running[uid] += 1
            # The slot is taken before the task starts and given back in its
            # done-callback, so no exception or cancellation can leak it.
            self.long_running[req.record.id] = req
            self.long_peak = max(self.long_peak, len(self.long_running))
            self._spawn(self._run_long(req), functools.partial(self._release_long_done, req))
            if uid in self._user_queues:
                turn.append(uid)

    def _release_long_done(self, req: Request, _task: asyncio.Task) -> None:
        self._release_long(req)

    def _release_long(self, req: Request) -> None:
        self.long_running.pop(req.record.id, None)
        uid = req.record.uid
        self._user_running[uid] -= 1
        if self._user_running[uid] <= 0:
            del self._user_running[uid]
        if req.timer is not None:
            req.timer.cancel()
        self._unload(req)
        if not req.done.done():
            # The task died without recording an outcome (a bug): never leave a waiter hanging.
            log.error("request %s ended without an outcome", req.record.id)
            req.done.set_result(None)
        self._dispatch()

    def _unload(self, req: Request) -> None:
        cluster = req.record.cluster
        self._cluster_load[cluster] -= 1
        if self._cluster_load[cluster] <= 0:
            del self._cluster_load[cluster]

    def _spawn(self, coro: Coroutine[Any, Any, None],
               on_done: Callable[[asyncio.Task], None] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_done is not None:
            task.add_done_callback(on_done)

    async def _run_long(self, req: Request) -> None:
        rec = req.record
        req.log = RequestLog(self.log_path(rec.id), req.topic, self.log_limit)
        try:
            cluster, jobs = await self.state.prepare(req.op, rec)
        except SkydError as e:
            await self._finish(req, Status.FAILED, error=e.to_wire())
            return
        started = time.time()
        await self.store.mark_running(rec.id, started)   # durable before any work starts
        rec.started_at, rec.status = started, Status.RUNNING
        req.topic.notify()
        limit = getattr(req.op, "timeout", None) or self.long_timeout
        if 0 < limit < float("inf"):
            req.timer = asyncio.get_running_loop().call_later(limit, self._time_up, req, limit)
        worker = await self.pool.take()
        req.worker = worker
        if req.cancel_requested or req.timed_out is not None:
            self.pool.release(worker)
            worker.signal_group(signal.SIGKILL)
            if req.timed_out is not None:
                await self._finish(req, Status.FAILED, error=_time_limit(req.timed_out))
            else:
                await self._finish(req, Status.CANCELLED)
            return
        req.log.line(f"running {rec.name} in worker process {worker.pid}")
        assert req.op_bytes is not None
        # On someone's cluster even an admin acts as its owner, never as root.
        uid = cluster.uid if cluster is not None else rec.uid
        user, gid, home = user_identity(uid)
        await worker.assign(Assignment(
            request_id=rec.id, op=req.op_bytes, uid=uid, gid=gid,
            user=user, home=home, state_dir=self.state.state_dir,
            cluster=cluster, jobs=jobs, ssh_known_hosts=self.state.ssh_known_hosts))
        pump = asyncio.get_running_loop().create_task(self._pump(worker, req.log))
        done: Done | None = None
        try:
            async for msg in worker.messages():
                if isinstance(msg, Done):
                    done = msg
                else:
                    await self.state.apply(msg, rec)
            code = await worker.wait_exit()
        finally:
            worker.signal_group(signal.SIGKILL)   # anything it left in its group
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(pump, 1.0)
            pump.cancel()
            self.pool.release(worker)
        if req.timed_out is not None and (done is None or done.error is not None):
            await self._finish(req, Status.FAILED, error=_time_limit(req.timed_out))
        elif req.cancel_requested:
            await self._finish(req, Status.CANCELLED)
        elif done is None:
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            await self._finish(req, Status.FAILED, error=Error(
                ErrorCode.INTERNAL, f"the worker process died without a result ({why})"))
        elif done.error is not None:
            await self._finish(req, Status.FAILED, error=done.error)
        else:
            await self._finish(req, Status.SUCCEEDED, value=done.value)

    def _time_up(self, req: Request, limit: float) -> None:
        """Past its time limit: stop its worker's process group, as a cancel does."""
        if req.done.done() or req.cancel_requested or req.timed_out is not None:
            return
        req.timed_out = limit
        if req.log is not None:
            req.log.line(f"time limit of {limit:g} s exceeded: stopping the worker's "
                         "process group")
        worker = req.worker
        if worker is not None:
            worker.signal_group(signal.SIGTERM)
            asyncio.get_running_loop().call_later(
                self.kill_grace, worker.signal_group, signal.SIGKILL)

    @staticmethod
    async def _pump(worker: Worker, out: RequestLog) -> None:
        reader = worker.log_reader
        assert reader is not None
        while True:
            data = await reader.read(65536)
            if not data:
                return
            out.append(data)

    async def _finish(self, req: Request, status: Status, value: Any = None,
                      error: Error | None = None) -> None:
        rec = req.record
        rec.status = status
        rec.finished_at = time.time()
        if error is not None:
            rec.error = error.message
            req.result = error
            blob = _enc.encode(error)
        else:
            blob = _enc.encode(value)
            req.result = blob
        if status is not Status.SUCCEEDED and rec.queue is Queue.LONG:
            await self.state.fail_unstarted_job(rec.id, "cancelled" if status is Status.CANCELLED
                                                else rec.error or "failed")
        if req.log is not None:
            req.log.line(f"request {status.value}" + (f": {rec.error}" if rec.error else ""))
        if rec.queue is Queue.LONG:
            await self.store.finish_request(rec.id, status, rec.finished_at, blob, rec.error)
        self.counters[f"{rec.queue.value}_{status.value}"] += 1
        if req.log is not None:
            req.log.close()
        req.topic.notify()
        if not req.done.done():
            req.done.set_result(None)

    # ---- cancel (out of band: never queued behind the work it cancels) -------------------

    async def cancel(self, req: Request) -> bool:
        rid = req.record.id
        if rid in self.long_pending:
            self._dequeue(req)
            self._unload(req)
            await self._finish(req, Status.CANCELLED)
            self._dispatch()
            return True
        if rid in self.long_running:
            if not req.cancel_requested:
                req.cancel_requested = True
                if req.log is not None:
                    req.log.line("cancel requested: stopping the worker's process group")
                worker = req.worker
                if worker is not None:
                    worker.signal_group(signal.SIGTERM)
                    asyncio.get_running_loop().call_later(
                        self.kill_grace, worker.signal_group, signal.SIGKILL)
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
        requeued = rerun = failed = 0
        writes = []
        for stored in await self.store.active_requests():
            op = _op_dec.decode(stored.op)
            req = Request(stored.record, op, stored.op)
            rec = req.record
            if rec.status is Status.RUNNING:
                if type(op).idempotent:
                    rec.status, rec.started_at = Status.PENDING, None
                    writes.append(self.store.mark_pending(rec.id))   # committed together
                    note = RequestLog(self.log_path(rec.id), req.topic)
                    note.line("the server restarted while this ran; running it again "
                              "(it is idempotent)")
                    note.close()
                    rerun += 1
                else:
                    await self._finish_stale(req)
                    failed += 1
                    continue
            else:
                requeued += 1
            self._enqueue(req)
        await asyncio.gather(*writes)
        self._dispatch()
        return requeued, rerun, failed

    async def _finish_stale(self, req: Request) -> None:
        req.log = RequestLog(self.log_path(req.record.id), req.topic)
        await self._finish(req, Status.FAILED, error=Error(
            ErrorCode.FAILED, INTERRUPTED, "it was not re-run because it is not idempotent; "
            "submit it again if needed"))

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
