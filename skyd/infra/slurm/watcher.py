"""The daemon's view of every slurm cluster's allocation: ONE `squeue` for all of them
per interval — never a process per cluster — backing off while nothing changes; what it
sees becomes the clusters' status (reported through a callback, as the ssh runner
reports node health): a pending allocation's reason, an allocation Slurm ended (time
limit, preemption, node failure, scancel) with why. Run at start-up first of all, it
reconciles with what Slurm did while the daemon was down."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from skyd.infra.slurm.allocation import FORMAT, Allocation, job_name, newest, parse_lines, \
    valid_job_id
from skyd.infra.slurm.board import Board, publish
from skyd.infra.slurm.commands import UNKNOWN_JOB, Slurm, failure
from skyd.protocol import ClusterRecord, ClusterState, SkydError

log = logging.getLogger("skyd.infra.slurm")

TICK = 1.0                  # seconds between looks at the set of clusters (memory only)
NAMES_PER_CALL = 64 * 1024  # bytes of job names per squeue (one argument's limit is 128 KiB)

# Told a cluster's new status and why: (cluster, status, reason).
Report = Callable[[str, ClusterState, str], None]


def allocation_of(record: ClusterRecord) -> str:
    """The job id of the cluster's allocation ("" when none is known, or not a job id)."""
    job = next((n.allocation for n in record.nodes if n.allocation), "")
    return job if valid_job_id(job) else ""


def cluster_view(record: ClusterRecord, alloc: Allocation | None) -> tuple[ClusterState, str] | None:
    """What the cluster's status should be given its allocation (None: nothing to say).
    A cluster being launched says what Slurm does with its allocation; a cluster that was
    up is STOPPED once its allocation ended (`start` or `launch` asks for a new one)."""
    status, job = record.status, allocation_of(record)
    if status == ClusterState.INIT:
        if alloc is None:
            return None
        text = alloc.describe(time_left=False)
        return status, f"waiting for Slurm: {text}" if alloc.waiting else text
    if status in (ClusterState.UP, ClusterState.UNHEALTHY):
        if alloc is None:
            return ClusterState.STOPPED, f"Slurm no longer knows its allocation (job {job})"
        if alloc.state == "SUSPENDED":
            return ClusterState.UNHEALTHY, f"Slurm suspended its allocation (job {job})"
        if alloc.holding:
            return ClusterState.UP, ""
        if alloc.waiting:          # preempted and requeued: its nodes (and jobs) are gone
            return ClusterState.STOPPED, f"Slurm requeued its allocation: {alloc.describe()}"
        return ClusterState.STOPPED, f"its allocation ended: {alloc.describe()}"
    if status == ClusterState.STOPPED and alloc is not None and alloc.ended:
        # how it ended, as it settles (COMPLETING, then CANCELLED)
        return status, f"its allocation ended: {alloc.describe()}"
    return None


class AllocationWatcher:
    """`slurm`: what every squeue runs through (this host's commands, or the login node's
    as the daemon's own login there); None: each owner's (`owners(uid, user)`: the login
    node as that user), one squeue per user with clusters. `state_dir`: where the boards
    of users whose clusters are launched (or started) go (board.py); None: none are
    written."""

    def __init__(self, slurm: Slurm | None, interval: float, max_interval: float,
                 state_dir: str | None = None,
                 owners: Callable[[int, str], Slurm] | None = None):
        if slurm is None and owners is None:
            raise ValueError("the watcher needs a Slurm, or one per owner")
        self.slurm = slurm
        self.owners = owners
        self._job_owners: dict[str, tuple[int, str]] = {}   # allocation -> (uid, user)
        self.bounds = (interval, max_interval)
        self.state_dir = state_dir
        self._poke: asyncio.Event | None = None
        self.polls = 0                  # squeue calls made, for the figures

    def poke(self) -> None:
        """Look again soon (a job of a slurm cluster ended badly)."""
        if self._poke is not None:
            self._poke.set()

    async def run(self, clusters: Callable[[], list[ClusterRecord]], report: Report) -> None:
        """Forever: look when the interval is up, the set of clusters changed, or poked.
        The interval is the shortest while a cluster is being launched or something
        changed, and doubles (to the longest) while nothing does."""
        self._poke = asyncio.Event()
        delay, due, seen_keys, last_error = self.bounds[0], 0.0, None, ""
        while True:
            records = clusters()
            keys = sorted((r.name, r.status, allocation_of(r)) for r in records)
            now = time.monotonic()
            if records and (now >= due or keys != seen_keys or self._poke.is_set()):
                self._poke.clear()
                changed = keys != seen_keys
                polled_at = time.time()
                allocs, unseen, error = await self.poll(records)
                if error and error != last_error:
                    log.warning("slurm: cannot see the allocations: %s", error)
                last_error = error
                # A cluster whose owner's squeue failed is left as it is, not taken for gone.
                seen = [r for r in clusters() if r.uid not in unseen]
                if seen:
                    changed |= self.apply(seen, allocs, report)
                await self.publish(records, allocs, polled_at, error, unseen)
                seen_keys = sorted((r.name, r.status, allocation_of(r)) for r in clusters())
                busy = changed or any(r.status == ClusterState.INIT for r in records)
                delay = self.bounds[0] if busy else min(delay * 2, self.bounds[1])
                due = time.monotonic() + delay
            elif not records:
                seen_keys = keys
            try:
                await asyncio.wait_for(self._poke.wait(), TICK)
            except asyncio.TimeoutError:
                pass

    async def publish(self, records: list[ClusterRecord], allocs: list[Allocation],
                      polled_at: float, error: str, unseen: set[int]) -> None:
        """The boards of the users with a cluster being launched or started (INIT, or
        STOPPED: `start`), for their waiting launches to read."""
        waiting = {r.uid: r.user for r in records
                   if r.status in (ClusterState.INIT, ClusterState.STOPPED)}
        if self.state_dir is None or not waiting:
            return
        boards = {uid: Board(polled_at, [a for a in allocs if a.user == user],
                             error if uid in unseen else "")
                  for uid, user in waiting.items()}
        try:
            await asyncio.to_thread(publish, self.state_dir, boards)
        except OSError as e:
            log.warning("slurm: cannot write the boards: %s", e)

    def _slurm(self, uid: int, user: str) -> Slurm:
        if self.slurm is not None:
            return self.slurm
        assert self.owners is not None
        return self.owners(uid, user)

    async def poll(self, records: list[ClusterRecord]) -> tuple[list[Allocation], set[int], str]:
        """Every allocation Slurm remembers of these clusters: one squeue (more only for
        thousands of clusters, whose names would not fit one argument; or, with no
        shared Slurm, one per owner). Also the owners (uids) whose clusters could not be
        seen, and why (every owner's, with a shared Slurm)."""
        self._job_owners = {allocation_of(r): (r.uid, r.user) for r in records}
        groups: dict[tuple[int, str], list[str]] = {}
        for r in records:
            key = (-1, "") if self.slurm is not None else (r.uid, r.user)
            groups.setdefault(key, []).append(r.name)
        allocs: list[Allocation] = []
        unseen: set[int] = set()
        error = ""
        for (uid, user), clusters in sorted(groups.items()):
            try:
                allocs += await self._squeue(self._slurm(uid, user), clusters)
            except SkydError as e:
                error = error or e.message
                unseen |= {r.uid for r in records} if uid < 0 else {uid}
        return allocs, unseen, error

    async def _squeue(self, slurm: Slurm, clusters: list[str]) -> list[Allocation]:
        allocs: list[Allocation] = []
        for names in _chunks([job_name(c) for c in clusters]):
            self.polls += 1
            rc, out, err = await slurm.arun("squeue", "-h", "-a", "-t", "all", "-o",
                                            FORMAT, f"--name={','.join(names)}")
            if rc != 0:
                raise failure("squeue", rc, err)
            allocs += parse_lines(out)
        return allocs

    @staticmethod
    def apply(records: list[ClusterRecord], allocs: list[Allocation], report: Report) -> bool:
        """Report every cluster whose status Slurm's view changes; whether any did."""
        by_id = {a.job_id: a for a in allocs}
        changed = False
        for r in records:
            job = allocation_of(r)
            if job:
                alloc = by_id.get(job)
                if alloc is not None and (alloc.user, alloc.name) != (r.user, job_name(r.name)):
                    alloc = None            # not this cluster's (Slurm reused a lost id)
            else:
                alloc = newest(allocs, r.name, r.user, live_only=True)
            view = cluster_view(r, alloc)
            if view is not None and view != (r.status, r.status_reason):
                report(r.name, *view)
                changed = True
        return changed

    async def ended(self, job_id: str) -> str:
        """Why the allocation no longer holds its nodes ("" while it does, or when Slurm
        cannot say): one squeue. The watcher looks again soon, for the cluster's status."""
        self.poke()
        owner = self._job_owners.get(job_id)
        if not valid_job_id(job_id) or (self.slurm is None and owner is None):
            return ""
        try:
            rc, out, err = await self._slurm(*(owner or (-1, ""))).arun(
                "squeue", "-h", "-a", "-t", "all", f"--jobs={job_id}", "-o", FORMAT)
        except SkydError:
            return ""
        if rc != 0:
            return f"Slurm no longer knows its allocation (job {job_id})" \
                if any(s in err for s in UNKNOWN_JOB) else ""
        alloc = next(iter(parse_lines(out)), None)
        if alloc is None:
            return f"Slurm no longer knows its allocation (job {job_id})"
        if alloc.holding:
            return ""
        return f"Slurm requeued its allocation: {alloc.describe()}" if alloc.waiting else \
            f"its allocation ended: {alloc.describe()}"


def _chunks(names: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for name in names:
        if out[-1] and size + len(name) + 1 > NAMES_PER_CALL:
            out.append([])
            size = 0
        out[-1].append(name)
        size += len(name) + 1
    return out
