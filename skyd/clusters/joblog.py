"""A cluster job's output as a log source (skyd.streams.follow): nothing until the job has
started, then its infra's source (local files, an ssh tail)."""

from __future__ import annotations

from typing import Hashable

from skyd.clusters.jobqueue import LiveJob
from skyd.clusters.service import Clusters
from skyd.infra.base import JobHandle, handle_dec
from skyd.streams import LogSource


class JobLog(LogSource):
    """One job's output from byte `offset`. Until the job has started (its launch is
    setting up, or it waits for room on the cluster) there is no log: a follower waits on
    the job's topic; then it reads what the job's infra offers, woken as that source is."""

    def __init__(self, state: Clusters, cluster: str, job_id: int, follow: bool):
        self.state, self.cluster, self.job_id, self.follow = state, cluster, job_id, follow
        self.inner: LogSource | None = None
        self.none = False           # the job has no log (it never started)

    def _live(self) -> LiveJob | None:
        return self.state.jobs.get((self.cluster, self.job_id))

    def _waiting(self, live: LiveJob | None) -> bool:
        return self.follow and live is not None and not (live.handle and live.handle.spawned)

    def mark(self) -> Hashable:
        if self.inner is not None:
            return ("log", self.inner.mark())
        live = self._live()
        return ("start", live.topic.version if live is not None else -1)

    def finished(self) -> bool:
        if self.inner is not None:
            return self.inner.finished()
        # Not before the infra's source has been asked: a job that ended before the first
        # read (a fast job, a late follower) still has its whole log to give.
        return self.none

    async def read(self, offset: int) -> bytes | str:
        if self.inner is None:
            live = self._live()
            if self._waiting(live) or self.none:
                return b""
            handle = live.handle if live is not None else await self._stored_handle()
            if handle is None:
                self.none = True
                return b""
            runner, nodes = self.state.registry.runner_of(self.cluster)
            self.inner = runner.log_source(handle, nodes, offset, self.follow,
                                          live.topic if live is not None else None,
                                          lambda: self._live() is None)
        return await self.inner.read(offset)

    async def wait_change(self, seen: Hashable) -> None:
        assert isinstance(seen, tuple)
        kind, mark = seen
        if self.inner is not None:
            if kind == "log":
                await self.inner.wait_change(mark)
            return                  # it has started since the mark
        live = self._live()
        if live is not None:
            await live.topic.wait(mark)

    async def _stored_handle(self) -> JobHandle | None:
        row = await self.state.store.get_job(self.cluster, self.job_id)
        return handle_dec.decode(row[1]) if row and row[1] else None

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
