"""One client connection: handshake, then read a frame, dispatch it, write the answer.

Bad input of any kind becomes an Error frame; the connection (when it can still be
framed) and the daemon carry on. A client that goes away mid-request leaves an
accepted request running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Awaitable, Callable, TypeVar

import msgspec

from skyd import metrics, protocol
from skyd.streams import FileLog, LogSource, follow, wait_any
from skyd.server import handlers  # noqa: F401 - registers every handler
from skyd.server.dispatch import handler_for
from skyd.server.handlers.clusters import JobLogStream, LogStream
from skyd.server.idempotency import Earlier, WithInsert
from skyd.server.services import Services
from skyd.server.watchers import Feed
from skyd.protocol import (Accepted, Chunk, End, Error, ErrorCode, Following, Hello, Notice,
                           Queue, Result, SkydError, Status, Submit, Welcome)
from skyd.identity import Caller
from skyd.requests.scheduler import stored_error

log = logging.getLogger("skyd.server.session")
T = TypeVar("T")
_dec = msgspec.msgpack.Decoder(protocol.ClientMsg)


# Frames up to this size are read whole: a StreamReader buffers about this much per
# connection anyway. Larger ones are reserved against the daemon's FrameBudget first.
SMALL_FRAME = 64 * 1024
BODY_CHUNK = 256 * 1024
# A watch connection's send buffers (the kernel's, then asyncio's): small, so that a client
# that stops reading leaves its events in its bounded feed. A dropped one is closed once
# its last frames are read, or after this many seconds.
WATCH_BUFFER_BYTES = 4096
WATCH_DROP_GRACE = 5.0


class FrameBudget:
    """Bytes of unfinished large frames that all connections together may hold (0: no cap)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.used = 0

    def take(self, n: int) -> bool:
        if self.cap and self.used + n > self.cap:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class _Hangup(Exception):
    """The stream can no longer be framed: answer, then close the connection."""


class _Skip(Exception):
    """The frame was answered with an Error; read the next one."""


def _decode_error(e: msgspec.ValidationError) -> Error:
    text = str(e)
    if text.startswith("Invalid value") and text.endswith("at `$.op.op`"):
        return Error(ErrorCode.UNKNOWN_OP, f"unknown operation: {text.split(chr(39))[1]!r}",
                     "upgrade skyd if the client is newer: skyctl api info shows both versions")
    if "at `$.op.task" in text:
        return Error(ErrorCode.INVALID_TASK, f"invalid task: {text}")
    return Error(ErrorCode.BAD_REQUEST, f"malformed request: {text}")


class Session:
    def __init__(self, services: Services, budget: "FrameBudget", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, caller: Caller):
        self.s = services
        self.budget = budget
        self.reader, self.writer = reader, writer
        self.caller = caller

    # ---- framing ----------------------------------------------------------------------

    async def _read(self, limit: int | None = None) -> Any:
        head = await self.reader.readexactly(4)
        (size,) = protocol.HEADER.unpack(head)
        limit = limit or self.s.config.max_frame
        if size > limit:
            metrics.limit_hit("max_frame" if limit == self.s.config.max_frame else "handshake_max_frame")
            await self._send(Error(ErrorCode.TOO_LARGE,
                                   f"frame of {size} bytes exceeds the limit of {limit} bytes"
                                   + ("" if limit == self.s.config.max_frame else
                                      " before the handshake")))
            raise _Hangup
        reserved = 0
        if size > SMALL_FRAME:
            budget: FrameBudget = self.budget
            if not budget.take(size):
                metrics.limit_hit("inflight_bytes")
                await self._send(Error(ErrorCode.BUSY,
                                       f"server busy: {budget.used} bytes of unfinished frames "
                                       f"are in flight (limit {budget.cap}); a frame of {size} "
                                       "bytes does not fit now", "retry in a moment"))
                raise _Hangup
            reserved = size
        try:
            body = await (self._read_body(size) if reserved else self.reader.readexactly(size))
            try:
                return _dec.decode(body)
            except msgspec.ValidationError as e:
                await self._send(_decode_error(e))
            except msgspec.DecodeError as e:
                await self._send(Error(ErrorCode.BAD_REQUEST, f"malformed frame: {e}"))
            metrics.protocol_error("malformed_frame")
            raise _Skip
        finally:
            if reserved:
                self.budget.give(reserved)

    async def _read_body(self, size: int) -> bytearray:
        """A large body in chunks: the StreamReader never buffers more than its limit."""
        body = bytearray()
        while len(body) < size:
            chunk = await self.reader.read(min(BODY_CHUNK, size - len(body)))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(body), size)
            body += chunk
        return body

    async def _send(self, msg: Any) -> None:
        self.writer.write(protocol.encode_frame(msg))
        await self.writer.drain()

    # ---- the connection ---------------------------------------------------------------

    async def run(self, hello: Hello | None = None) -> None:
        """Serve the connection; `hello`: already read (TCP reads it to authenticate)."""
        try:
            if await self._handshake(hello):
                while True:
                    try:
                        msg = await self._read()
                    except _Skip:
                        continue
                    if not isinstance(msg, Submit):
                        metrics.protocol_error("not_a_request")
                        await self._send(Error(ErrorCode.BAD_REQUEST, "expected a request frame"))
                        continue
                    await self._handle(msg)
        except (asyncio.IncompleteReadError, ConnectionError, _Hangup):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one connection's bug must not take the daemon down
            log.exception("connection from uid %s failed", self.caller.uid)
        finally:
            self.writer.close()

    async def _handshake(self, hello: Any = None) -> bool:
        if hello is None and (hello := await self._read_hello()) is None:
            return False
        if not isinstance(hello, Hello):
            metrics.protocol_error("no_hello")
            await self._send(Error(ErrorCode.BAD_REQUEST, "a connection starts with a hello frame"))
            return False
        if hello.protocol > protocol.PROTOCOL_VERSION:
            metrics.protocol_error("version")
            await self._send(Error(ErrorCode.UNSUPPORTED_VERSION,
                                   f"this client speaks protocol v{hello.protocol}, newer than the "
                                   f"server's v{protocol.PROTOCOL_VERSION}",
                                   "upgrade skyd on the server, or use a matching skyctl"))
            return False
        if hello.protocol < protocol.MIN_PROTOCOL_VERSION:
            metrics.protocol_error("version")
            await self._send(Error(ErrorCode.UNSUPPORTED_VERSION,
                                   f"this client speaks protocol v{hello.protocol}; the server "
                                   f"needs v{protocol.MIN_PROTOCOL_VERSION} or newer",
                                   "upgrade skyctl: pip install -U skyd"))
            return False
        c = self.caller
        await self._send(Welcome(protocol.PROTOCOL_VERSION, self.s.version, c.user, c.uid, c.admin))
        return True

    async def _read_hello(self) -> Any:
        cfg = self.s.config
        try:
            async with asyncio.timeout(cfg.handshake_timeout if cfg.handshake_timeout > 0
                                       else None):
                return await self._read(min(cfg.handshake_max_frame, cfg.max_frame))
        except _Skip:
            return None
        except TimeoutError:
            metrics.limit_hit("handshake_timeout")
            self.writer.write(protocol.encode_frame(Error(
                ErrorCode.BAD_REQUEST, f"no hello within {cfg.handshake_timeout:g} s: "
                                       "closing the connection")))
            return None

    async def _handle(self, sub: Submit) -> None:
        op = sub.op
        try:
            if op.schedule is Queue.INLINE:
                value = await handler_for(type(op))(self.s, self.caller, op)
                if isinstance(value, Feed):
                    await self._watch(value)
                    return
                await self._send(Result("", Status.SUCCEEDED, value))
            elif op.schedule is Queue.SHORT:
                await self._short(op, sub.wait)
            elif isinstance(op, protocol.JobsLaunch):     # the one op on the jobs queue
                jobs_op = op
                got = await self._once(sub, lambda w: self.s.jobs.submit(jobs_op, self.caller,
                                                                          with_insert=w))
                if isinstance(got, Earlier):
                    await self._replay_job(got.request_id, sub.wait)
                    return
                request, job, ahead = got
                await self._send(Accepted(request.id, Queue.JOBS, ahead, job_id=job.job_id))
                if sub.wait:
                    await self._send(Result(request.id, Status.SUCCEEDED, job))
            else:
                long = await self._once(sub, lambda w: self.s.scheduler.submit_long(
                    op, self.caller, with_insert=w))
                rid, ahead = ((long.request_id, 0) if isinstance(long, Earlier)
                              else (long[0].record.id, long[1]))
                await self._send(Accepted(rid, Queue.LONG, ahead))
                if sub.wait:
                    await self.stream_request(rid, 0, True, into_job=sub.follow_job and
                                              isinstance(op, (protocol.Launch, protocol.Exec)))
        except SkydError as e:
            await self._send(e.to_wire())
        except (ConnectionError, asyncio.IncompleteReadError, _Hangup, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001
            log.exception("request %s failed inside the server", type(op).__name__)
            await self._send(Error(ErrorCode.INTERNAL, f"internal error: {type(e).__name__}: {e}",
                                   "this is a bug in skyd; the server log has the details"))

    async def _once(self, sub: Submit, submit: Callable[[WithInsert | None], Awaitable[T]]
                    ) -> T | Earlier:
        """Submit, or with an idempotency key, answer an earlier accepted attempt's request."""
        if not sub.idempotency_key:
            return await submit(None)
        return await self.s.submissions.once(self.caller.uid, sub.idempotency_key,
                                             str(type(sub.op).__struct_config__.tag), submit)

    async def _replay_job(self, rid: str, wait: bool) -> None:
        """A retried jobs launch: the job its first attempt queued."""
        row = await self.s.store.get_request(rid)
        if row is None or row[1] is None:
            raise SkydError(ErrorCode.NOT_FOUND, f"request {rid} no longer exists")
        job = msgspec.msgpack.decode(row[1], type=protocol.ManagedJobRecord)
        await self._send(Accepted(rid, Queue.JOBS, 0, job_id=job.job_id))
        if wait:
            await self._send(Result(rid, Status.SUCCEEDED, job))

    async def _short(self, op: protocol.Op, wait: bool) -> None:
        s = self.s.scheduler
        req = s.new_short(op, self.caller)
        handler = handler_for(type(op))
        call = lambda: handler(self.s, self.caller, op)  # noqa: E731
        if not wait:
            s.spawn_short(req, call)
            await self._send(Accepted(req.record.id, Queue.SHORT, s.short.waiting))
            return
        if isinstance(op, protocol.ApiLogs):
            await s.run_short(req, call, lambda rid: self.stream_request(rid, op.offset,
                                                                         op.follow))
            return

        async def send(value: Any) -> None:
            if isinstance(value, LogStream):
                await self._send(End(await self._follow(value.source, value.offset)))
                value = await value.final()
            await self._send(Result(req.record.id, Status.SUCCEEDED, value))
        await s.run_short(req, call, send)

    async def stream_request(self, rid: str, offset: int, follow_log: bool,
                             into_job: bool = False) -> None:
        """A request's log from `offset` (following it while it runs), then its result;
        `into_job` (a launch or exec): once it has queued its job, that job's log and
        record instead of the request's result, all in this one stream."""
        s = self.s.scheduler
        req = s.active(rid) if follow_log else None
        source = FileLog(s.log_path(rid), req.topic if req is not None else None,
                         req.done.done if req is not None else lambda: True)
        await self._send(End(await self._follow(source, offset)))
        if req is not None:
            await req.done
        result = await self._result(rid)
        launched = _launched(result) if into_job else None
        if launched is None or launched.job_id is None:
            await self._send(result)
            return
        await self._send(Following(launched.cluster, launched.job_id))
        job = JobLogStream(self.s, launched.cluster, launched.job_id, follow=True, offset=0)
        await self._send(End(await self._follow(job.source, 0)))
        launched.job = await job.final()
        await self._send(Result(rid, result.status, launched))

    async def _watch(self, feed: Feed) -> None:
        """Send the feed's events until the client hangs up (or sends anything: a watch is
        a connection's last request). Its buffers are small; a client that does not read
        leaves its events in the feed, which drops it past its bound."""
        transport = self.writer.transport
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WATCH_BUFFER_BYTES)
        transport.set_write_buffer_limits(high=WATCH_BUFFER_BYTES)
        whose = "every user's" if feed.uid is None else "your"
        await self._send(Notice(f"watching {whose} requests, managed jobs and clusters"))
        hangup = asyncio.ensure_future(self.reader.read(1))
        try:
            while not hangup.done():
                if feed.dropped:
                    metrics.limit_hit("watch_buffer")
                    self.writer.write(protocol.encode_frame(Error(
                        ErrorCode.BUSY, f"watch dropped: more than {feed.size} events were "
                                        "waiting to be read", "read the events as they come, "
                                        "then watch again")))
                    asyncio.get_running_loop().call_later(WATCH_DROP_GRACE, transport.abort)
                    raise _Hangup
                full = transport.get_write_buffer_size() > WATCH_BUFFER_BYTES
                if feed.events and not full:
                    self.writer.write(b"".join(map(protocol.encode_frame, feed.events)))
                    feed.events.clear()
                    continue
                waits = [feed.topic.wait(feed.topic.version), asyncio.shield(hangup)]
                await wait_any(*waits, self.writer.drain()) if full else await wait_any(*waits)
            raise _Hangup
        finally:
            hangup.cancel()
            self.s.watchers.unsubscribe(feed)

    async def _follow(self, source: LogSource, offset: int) -> int:
        """Send a log source's chunks and notices from `offset`; the offset reached."""
        # Closed at once when the client goes: a source may hold processes (ssh tails).
        async with contextlib.aclosing(follow(source, offset)) as chunks:
            async for data in chunks:
                if isinstance(data, str):
                    await self._send(Notice(data))
                    continue
                offset += len(data)
                await self._send(Chunk(data))
        return offset

    async def _result(self, rid: str) -> Result:
        req = self.s.scheduler.active(rid)
        if req is not None and not req.done.done():
            return Result(rid, req.record.status)
        if req is not None:
            return _result_of(rid, req.record.status, req.result)
        for rec in self.s.scheduler.short_ring:
            if rec.id == rid:
                return Result(rid, rec.status,
                              error=Error(ErrorCode.FAILED, rec.error) if rec.error else None)
        row = await self.s.store.get_request(rid)
        if row is None:
            raise SkydError(ErrorCode.NOT_FOUND, f"request {rid} no longer exists")
        rec, blob = row
        if not rec.status.finished:
            return Result(rid, rec.status)
        return _result_of(rid, rec.status, blob)


def _launched(result: Result) -> protocol.LaunchResult | None:
    """A launch's or exec's result, when it succeeded."""
    if result.status is not Status.SUCCEEDED or not isinstance(result.value, msgspec.Raw):
        return None
    return msgspec.msgpack.decode(result.value, type=protocol.LaunchResult)


def _result_of(rid: str, status: Status, stored: Any) -> Result:
    err = stored_error(status, stored)
    if err is not None:
        return Result(rid, status, error=err)
    if status is Status.CANCELLED:
        return Result(rid, status, error=Error(ErrorCode.FAILED, "the request was cancelled"))
    return Result(rid, status, msgspec.Raw(stored) if stored else None)
