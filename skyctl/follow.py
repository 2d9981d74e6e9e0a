"""Following a request, a job or a managed job: its log as it is written, then how it
ended. A daemon restart is survived by reconnecting and resuming from the last byte seen;
Ctrl-C detaches (the work goes on) and says how to come back."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import msgspec

from skyctl import output
from skyctl.connection import Unreachable, reconnect
from skyctl.context import Ctx
from skyctl.exits import DETACHED, FAILED, NOT_FINISHED, OK, exit_code
from skyctl.output import LogWriter, Sink
from skyd import protocol
from skyd.protocol import Accepted, Chunk, End, Error, Following, Notice, Result, Status


class Submitted(NamedTuple):
    code: int
    result: Result | None        # None: it did not end (an error frame, --async, Ctrl-C)
    request_id: str | None
    job_offset: int = 0          # follow_job: bytes of the job's log already received


def follow_request(ctx: Ctx, op: protocol.Op, wait: bool = True, log: Sink | None = None,
                   follow_job: bool = False) -> Submitted:
    """Submit `op`; with `wait`, follow its log to its result (without: return once it is
    accepted, with its id). `follow_job` (launch, exec): the daemon streams on into the
    job the request queues, and its result carries the job's record (see finish_job)."""
    got = _RequestStream(wait, log or LogWriter())
    frames = ctx.conn.submit(op, wait, follow_job=follow_job)
    while True:
        try:
            for msg in frames:
                if (done := got.take(msg)) is not None:
                    return done
            return Submitted(FAILED, None, got.rid)
        except KeyboardInterrupt:
            return got.detached()
        except (ConnectionError, OSError):
            if got.rid is None:
                raise Unreachable("the daemon closed the connection before accepting the request")
            output.info("Lost the connection to skyd; reconnecting...")
            ctx.conn.close()
            ctx.conn = reconnect(ctx.path, ctx.source)
            if got.job is not None:     # the request is done: finish_job follows the rest
                return got.job_left()
            output.info(f"Reconnected; following request {got.rid} again.")
            frames = ctx.conn.submit(protocol.ApiLogs(request_id=got.rid, follow=True,
                                                      offset=got.offset))


class _RequestStream:
    """What a request's frames said so far: its id, the bytes of log received, and (in a
    `follow_job` stream, once the request's log has ended) the job being followed."""

    def __init__(self, wait: bool, log: Sink):
        self.wait, self.log = wait, log
        self.rid: str | None = None
        self.offset = 0
        self.job: Following | None = None

    def take(self, msg: protocol.ServerMsg) -> Submitted | None:
        """Act on one frame; what the request came to, once the stream is over."""
        if isinstance(msg, Accepted):
            self.rid = msg.request_id
            if not self.wait:
                return Submitted(OK, None, self.rid)
            ahead = f", {msg.ahead} ahead in the {msg.queue.value} queue" if msg.ahead else ""
            output.info(f"Request {self.rid} accepted{ahead}.")
        elif isinstance(msg, Chunk):
            self.offset += len(msg.data)
            self.log.write(msg.data)
        elif isinstance(msg, Notice):
            output.info(msg.message)
        elif isinstance(msg, End):
            self.offset = msg.offset
        elif isinstance(msg, Following):
            self.log.close()
            self.job, self.offset = msg, 0
        elif isinstance(msg, Error):
            self.log.close()
            output.error(msg.message, msg.hint)
            return Submitted(exit_code(msg.code), None, self.rid)
        elif isinstance(msg, Result):
            self.log.close()
            return Submitted(_result_code(msg), msg, msg.request_id)
        return None

    def detached(self) -> Submitted:
        """Ctrl-C: how to come back to what was being followed, the request or its job."""
        if self.job is not None:
            output.info(_job_detached(self.job.cluster, self.job.job_id))
        elif self.rid:
            output.info(f"\nDetached; request {self.rid} keeps running.\n"
                        f"  follow it:  skyctl api logs {self.rid}\n"
                        f"  cancel it:  skyctl api cancel {self.rid}")
        return Submitted(DETACHED, None, self.rid)

    def job_left(self) -> Submitted:
        """The stream broke in the job phase: the request succeeded; the job's log is
        left to follow from the offset reached."""
        assert self.job is not None and self.rid is not None
        launched = protocol.LaunchResult(self.job.cluster, self.job.job_id)
        return Submitted(OK, Result(self.rid, Status.SUCCEEDED, msgspec.to_builtins(launched)),
                         self.rid, self.offset)


def _result_code(msg: Result) -> int:
    if msg.status is Status.SUCCEEDED:
        return OK
    if msg.error is not None:
        output.error(msg.error.message, msg.error.hint)
    else:
        output.error(f"request {msg.request_id} {msg.status.value}")
    if msg.status is Status.CANCELLED or msg.error is None:
        return exit_code(msg.status)
    return exit_code(msg.error.code)


class Streamed(NamedTuple):
    code: int | None             # set when it ended early: an error, Ctrl-C, a lost stream
    value: Any                   # the final record, when it ended normally
    offset: int                  # bytes of log received


def follow_stream(ctx: Ctx, make_op: Callable[[int], protocol.Op], detached: str,
                  log: Sink, offset: int = 0) -> Streamed:
    """Follow a log stream (a job's output) to its final record; `make_op(offset)` asks
    for it from a byte offset, so a daemon restart resumes where it was."""
    while True:
        try:
            for msg in ctx.conn.submit(make_op(offset)):
                if isinstance(msg, Chunk):
                    offset += len(msg.data)
                    log.write(msg.data)
                elif isinstance(msg, Notice):
                    output.info(msg.message)
                elif isinstance(msg, Error):
                    log.close()
                    output.error(msg.message, msg.hint)
                    return Streamed(exit_code(msg.code), None, offset)
                elif isinstance(msg, Result):
                    log.close()
                    if msg.error is not None:
                        output.error(msg.error.message, msg.error.hint)
                        return Streamed(exit_code(msg.error.code), None, offset)
                    return Streamed(None, msg.value, offset)
            return Streamed(FAILED, None, offset)
        except KeyboardInterrupt:
            output.info(detached)
            return Streamed(DETACHED, None, offset)
        except (ConnectionError, OSError):
            output.info("Lost the connection to skyd; reconnecting...")
            ctx.conn.close()
            ctx.conn = reconnect(ctx.path, ctx.source)


def _job_detached(cluster: str, job_id: int | None) -> str:
    ref = f"{cluster} {job_id or ''}".rstrip()
    return (f"\nStopped following; the job keeps running.\n  follow it:  skyctl logs {ref}"
            f"\n  cancel it:  skyctl cancel {ref}")


def follow_job(ctx: Ctx, cluster: str, job_id: int | None, follow: bool = True,
               log: Sink | None = None,
               offset: int = 0) -> tuple[int, protocol.JobRecord | None, int]:
    """A job's output, then (code, its record, bytes of log seen). The code is the job's:
    0 succeeded (or not finished, without `follow`), 1 failed, 3 cancelled."""
    got = follow_stream(
        ctx, lambda at: protocol.JobLogs(cluster=cluster, job_id=job_id, follow=follow, offset=at),
        _job_detached(cluster, job_id), log or LogWriter(), offset)
    if got.code is not None:
        return got.code, None, got.offset
    job = msgspec.convert(got.value, protocol.JobRecord)
    return _job_code(job), job, got.offset


def finish_job(ctx: Ctx, sub: Submitted, launched: protocol.LaunchResult,
               log: Sink) -> tuple[int, protocol.JobRecord | None]:
    """The job a `follow_job` launch queued: its code and record. Streamed to its end,
    they came with the result; else (an older daemon, a lost connection) follow the rest."""
    if launched.job is not None:
        return _job_code(launched.job), launched.job
    code, job, _ = follow_job(ctx, launched.cluster, launched.job_id, log=log,
                              offset=sub.job_offset)
    return code, job


def _job_code(job: protocol.JobRecord) -> int:
    if job.status in protocol.JOB_FINISHED:
        code = f" (exit status {job.exit_code})" if job.exit_code not in (None, 0) else ""
        output.info(f"Job {job.job_id} on {job.cluster} finished: {job.status}{code}.")
    return _logged(job.status)


def _logged(status: str) -> int:
    """A log's code: the job's outcome once it has one; before that, what was there was
    printed, and that is a success (logs --status is the command that says "not yet")."""
    code = exit_code(status)
    return OK if code == NOT_FINISHED else code


def follow_managed(ctx: Ctx, job_id: int | None, follow: bool = True, controller: bool = False,
                   log: Sink | None = None,
                   offset: int = 0) -> tuple[int, protocol.ManagedJobRecord | None, int]:
    """A managed job's output over all its attempts (or its controller's log), then
    (code, its record, bytes seen); the code is the job's, as for follow_job."""
    ref = "" if job_id is None else f" {job_id}"
    got = follow_stream(
        ctx, lambda at: protocol.JobsLogs(job_id=job_id, controller=controller, follow=follow,
                                          offset=at),
        f"\nStopped following; the managed job keeps running.\n"
        f"  follow it:  skyctl jobs logs{ref}\n  cancel it:  skyctl jobs cancel{ref}",
        log or LogWriter(), offset)
    if got.code is not None:
        return got.code, None, got.offset
    job = msgspec.convert(got.value, protocol.ManagedJobRecord)
    if job.status in protocol.MANAGED_FINISHED and not controller:
        why = f": {job.reason}" if job.reason and job.status != "SUCCEEDED" else ""
        output.info(f"Managed job {job.job_id} finished: {job.status}{why}.")
    return _logged(job.status), job, got.offset
