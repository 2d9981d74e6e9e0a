"""A managed job's output as log sources (skyd.streams.follow): its controller log, and its
output over all its attempts."""

from __future__ import annotations

from typing import Hashable

from skyd.clusters.joblog import JobLog
from skyd.managed.controller import ACTIVE, JobsController
from skyd.protocol import ManagedJobStatus
from skyd.streams import FileLog, LogSource, Topic, read_from, wait_any

ATTEMPT_END_WAIT = 1.0   # seconds between looks once the followed attempt has ended


def controller_log(ctl: JobsController, job_id: int, follow: bool) -> FileLog:
    """What the controller did for the job (the daemon writes it: woken by the job's
    topic)."""
    job = ctl.live(job_id)
    return ControllerLog(ctl, job_id, job.topic if job is not None and follow else None)


class ControllerLog(FileLog):
    """Read once the journal's appends asked so far are written (they are made off the
    loop: skyd.managed.journal.Appender)."""

    def __init__(self, ctl: JobsController, job_id: int, topic: Topic | None):
        super().__init__(ctl.controller_log_path(job_id), topic, lambda: ctl.live(job_id) is None)
        self.ctl = ctl

    async def read(self, offset: int) -> bytes:
        await self.ctl.journal.appender.flushed()
        return await super().read(offset)


class ManagedJobLog(LogSource):
    """A managed job's output over all its attempts: what its own log holds (earlier
    attempts, copied from their clusters), then the running attempt live from its cluster
    (at its place in the job's log: from `log_offset`). Status changes come as notices.
    Woken by the job's topic, and while an attempt is followed, by that attempt's wake."""

    def __init__(self, ctl: JobsController, job_id: int, follow: bool):
        self.ctl, self.job_id, self.follow = ctl, job_id, follow
        self.last: str | None = None                # the status last told
        self.attempt: JobLog | None = None          # the running attempt's log, once read
        self.attempt_of: tuple[str, int] | None = None
        self.in_attempt = False                     # the last read went to the attempt

    def mark(self) -> Hashable:
        job = self.ctl.live(self.job_id)
        return (job.topic.version if job is not None else -1, self.attempt_of,
                self.attempt.mark() if self.attempt is not None else None)

    def finished(self) -> bool:
        job = self.ctl.live(self.job_id)
        return not self.follow or job is None or job.record.status not in ACTIVE

    async def read(self, offset: int) -> bytes | str:
        self.in_attempt = False
        data = read_from(self.ctl.log_path(self.job_id), offset)
        if data:
            return data
        job = self.ctl.live(self.job_id)
        if job is None or job.record.status not in ACTIVE:
            return b""                      # finished: its log is complete
        rec = job.record
        if self.follow and rec.status != self.last:
            self.last = rec.status
            return f"managed job {rec.job_id}: {rec.status}" + \
                (f" ({rec.reason})" if rec.reason else "")
        if rec.status == ManagedJobStatus.RUNNING and rec.cluster_job_id and offset >= rec.log_offset:
            attempt = self.attempt
            if attempt is None or self.attempt_of != (rec.cluster, rec.cluster_job_id):
                if attempt is not None:
                    attempt.close()
                self.attempt_of = (rec.cluster, rec.cluster_job_id)
                attempt = self.attempt = JobLog(self.ctl.state, rec.cluster,
                                                rec.cluster_job_id, self.follow)
            self.in_attempt = True
            return await attempt.read(offset - rec.log_offset)
        return b""

    async def wait_change(self, seen: Hashable) -> None:
        assert isinstance(seen, tuple)
        version, attempt_of, attempt_mark = seen
        job = self.ctl.live(self.job_id)
        if job is None or attempt_of != self.attempt_of:
            return
        if not self.in_attempt or self.attempt is None:
            await job.topic.wait(version)
        elif self.attempt.finished():
            # Its attempt has ended: the controller moves the job on (and copies the
            # attempt's output into the job's own log).
            await job.topic.wait(version, ATTEMPT_END_WAIT)
        else:
            await wait_any(job.topic.wait(version), self.attempt.wait_change(attempt_mark))

    def close(self) -> None:
        if self.attempt is not None:
            self.attempt.close()
