"""What the controller writes about a job: its record (every change persisted before it
is acted on), the notes of its controller log, and its own log of output over all its
attempts (each attempt's output copied from its cluster before the cluster goes).

A store fault (a full disk, a database locked by another process) delays a record's
write until it is taken (skyd.store waits it out), so it never fails the job; a full
disk costs log lines, never the job either."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import msgspec

from skyd import metrics
from skyd.clusters.service import Clusters
from skyd.infra.base import handle_dec
from skyd.managed.job import Job
from skyd.protocol import MANAGED_FINISHED, ManagedJobStatus
from skyd.store import Store
from skyd.streams import follow

log = logging.getLogger("skyd.managed.journal")

LOG_SAVE_TIMEOUT = 60.0       # fetching an attempt's output before its cluster goes
# A cancel request turns these into CANCELLING.
_CANCELLABLE = frozenset({ManagedJobStatus.STARTING, ManagedJobStatus.RUNNING,
                          ManagedJobStatus.RECOVERING, ManagedJobStatus.PENDING})


class Journal:
    def __init__(self, store: Store, clusters: Clusters, logs_dir: Path,
                 request_log: Callable[[str], Path]):
        self.store = store
        self.clusters = clusters
        self.logs_dir = logs_dir
        self.request_log = request_log      # a request's own log (scheduler)
        self.appender = Appender()

    def log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"{job_id}.log"

    def controller_log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"{job_id}.controller.log"

    # ---- the record ------------------------------------------------------------------------

    async def set(self, job: Job, **changes: Any) -> None:
        """Persist a change of the job (memory first, then durable), wake its followers."""
        status = changes.get("status")
        cancelled = changes.get("cancel_requested", job.record.cancel_requested)
        if cancelled and status in _CANCELLABLE:
            changes["status"] = status = ManagedJobStatus.CANCELLING
        before = job.record.status
        job.record = msgspec.structs.replace(job.record, **changes)
        await self.store.save_managed_job(job.record)
        if status is not None and status != before:
            reason = f": {job.record.reason}" if job.record.reason else ""
            self.note(job, f"{before} -> {status}{reason}")
            metrics.status_changed(job.record)
            if status in MANAGED_FINISHED:
                metrics.managed_job_finished(job.record)
        job.topic.notify()

    async def finish(self, job: Job, status: ManagedJobStatus, reason: str,
                     exit_code: int | None = None, teardown: bool | None = None) -> None:
        changes: dict[str, Any] = {"status": status, "reason": reason, "request_id": "",
                                   "ended_at": time.time()}
        if exit_code is not None:
            changes["exit_code"] = exit_code
        if teardown is not None:
            changes["teardown_pending"] = teardown
        elif status in MANAGED_FINISHED:
            changes["teardown_pending"] = job.record.cluster in self.clusters.clusters
        await self.set(job, **changes)

    # ---- the controller log ----------------------------------------------------------------

    def note(self, job: Job, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.appender.append(self.controller_log_path(job.record.job_id),
                             f"{stamp} managed job {job.record.job_id}: {text}\n".encode(),
                             job.topic.notify)

    async def append_request_log(self, job: Job, rid: str, what: str) -> None:
        if not rid:
            return
        data = await asyncio.to_thread(_read, self.request_log(rid))
        if data:
            self.appender.append(self.controller_log_path(job.record.job_id),
                                 f"----- {what} request {rid} -----\n".encode() + data,
                                 job.topic.notify)

    # ---- the job's output ------------------------------------------------------------------

    async def begin_attempt(self, job: Job, attempt: int) -> None:
        """Mark where this attempt's output starts in the job's log."""
        path = self.log_path(job.record.job_id)
        if attempt > 1:
            why = f" ({job.record.reason})" if job.record.reason else ""
            _append(path, f"[skyd] --- attempt {attempt}{why} ---\n".encode())
        size = path.stat().st_size if path.exists() else 0
        await self.set(job, log_offset=size)

    async def save_attempt_log(self, job: Job, lost: bool, wait_end: bool = False) -> None:
        """Copy this attempt's output from its cluster to the job's own log (the cluster is
        torn down next). Rewrites from the attempt's start, so a repeat is harmless."""
        rec = job.record
        if not rec.cluster_job_id:
            return
        jobs = self.clusters.jobs
        if wait_end:
            deadline = time.monotonic() + 10.0
            while (rec.cluster, rec.cluster_job_id) in jobs and time.monotonic() < deadline:
                job.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(job.wake.wait(), 1.0)
        live = jobs.get((rec.cluster, rec.cluster_job_id))
        handle = live.handle if live is not None else None
        if handle is None:
            row = await self.store.get_job(rec.cluster, rec.cluster_job_id)
            handle = handle_dec.decode(row[1]) if row and row[1] else None
        if handle is None:
            return
        runner, nodes = self.clusters.registry.runner_of(rec.cluster)
        path = self.log_path(rec.job_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        got = 0
        try:
            os.ftruncate(fd, rec.log_offset)
            os.lseek(fd, rec.log_offset, os.SEEK_SET)

            async def copy() -> None:
                nonlocal got
                async for data in follow(runner.log_source(handle, nodes, 0, False)):
                    if isinstance(data, bytes):
                        os.write(fd, data)
                        got += len(data)
            try:
                await asyncio.wait_for(copy(), LOG_SAVE_TIMEOUT)
            except (asyncio.TimeoutError, OSError) as e:
                _write_quietly(fd, f"[skyd] (the rest of this attempt's output could not be "
                                   f"fetched: {e or 'timed out'})\n".encode())
            if got == 0 and lost:
                _write_quietly(fd, b"[skyd] (no output could be fetched from the lost node)\n")
        finally:
            os.close(fd)
        job.topic.notify()


class Appender:
    """The controller logs' appends, off the loop (a submission's note is on its acceptance
    path) and in order: one thread of their own. `flushed()` waits for those asked so far:
    a reader calls it first, so what it reads holds every note made before."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyd-journal")
        self._closed = False

    def append(self, path: Path, data: bytes, then: Callable[[], None]) -> None:
        if self._closed:                    # at the stop, after close(): in place
            _append(path, data)
            then()
            return
        done = asyncio.get_running_loop().run_in_executor(self._thread, _append, path, data)

        def written(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("could not write to %s: %s", path, f.exception())
            then()
        done.add_done_callback(written)

    async def flushed(self) -> None:
        if not self._closed:
            await asyncio.get_running_loop().run_in_executor(self._thread, _nothing)

    async def close(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._thread.shutdown, True)


def _nothing() -> None:
    pass


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _write_quietly(fd, data)
    finally:
        os.close(fd)


def _write_quietly(fd: int, data: bytes) -> None:
    """Write a log's lines; a full disk loses them rather than failing the job."""
    try:
        os.write(fd, data)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
