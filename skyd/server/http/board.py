"""The dashboard's view of the daemon: what one person may see, as one JSON document.

While a page is open the board looks at the daemon's memory every TICK seconds (the
queues, live requests, clusters and their running jobs, managed jobs, the pools' hosts);
each page is sent the document again only when it changed. Pages of the same viewer (a
person, or "every user" for admins) share one document per tick, so ten open pages cost
one build. Finished requests and managed jobs are not in the daemon's memory: each viewer's
most recent ones are read from the store once, when their first page opens, and kept up
to date from then on by skyd.metrics' events.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, Callable, Iterable

import msgspec

from skyd import metrics
from skyd.identity import Caller
from skyd.protocol import MANAGED_FINISHED, ManagedJobRecord, Queue, RequestRecord, SkydError
from skyd.server.services import Services
from skyd.streams import Topic

TICK = 0.5            # seconds between looks at the state while a page is open
RECENT = 200          # requests and managed jobs a page lists, newest first

# A viewer: a person's uid, or None for admins (who see every user's work).
Key = int | None
_json = msgspec.json.Encoder()


def key_of(caller: Caller) -> Key:
    return None if caller.admin else caller.uid


class _Recent:
    """One viewer's most recent finished requests and managed jobs (newest last)."""

    def __init__(self) -> None:
        self.pages = 0
        self.requests: dict[str, RequestRecord] = {}
        self.managed: dict[int, ManagedJobRecord] = {}
        self.loaded: asyncio.Future | None = None

    @staticmethod
    def add(into: dict, key: Any, record: Any) -> None:
        into.pop(key, None)
        into[key] = record
        while len(into) > RECENT:
            del into[next(iter(into))]


class Board:
    def __init__(self, services: Services, ready: Callable[[], bool]):
        self.s = services
        self.ready = ready
        self.tick = Topic()
        self.closing = False
        self._viewers: dict[Key, _Recent] = {}
        self._built: dict[Key, tuple[int, bytes]] = {}     # per viewer: (tick, document)
        self._ticker: asyncio.Task | None = None

    # ---- events -----------------------------------------------------------------------

    def listen(self, counts: metrics.Counts) -> None:
        metrics.listeners.append(self._status_changed)

    def _status_changed(self, rec: RequestRecord | ManagedJobRecord) -> None:
        if isinstance(rec, RequestRecord):
            if rec.status.finished:
                self._request_finished(rec)
        elif rec.status in MANAGED_FINISHED:
            self._managed_job_finished(rec)

    def _request_finished(self, rec: RequestRecord) -> None:
        if rec.queue is Queue.SHORT:    # milliseconds each: counted, not listed
            return
        for key in (None, rec.uid):
            recent = self._viewers.get(key)
            if recent is not None:
                recent.add(recent.requests, rec.id, rec)

    def _managed_job_finished(self, rec: ManagedJobRecord) -> None:
        for key in (None, rec.uid):
            recent = self._viewers.get(key)
            if recent is not None:
                recent.add(recent.managed, rec.job_id, rec)

    # ---- pages --------------------------------------------------------------------------

    @property
    def pages(self) -> int:
        return sum(r.pages for r in self._viewers.values())

    async def join(self, caller: Caller) -> None:
        """A page opens: load its viewer's recent work once, and tick while pages are open."""
        key = key_of(caller)
        recent = self._viewers.setdefault(key, _Recent())
        recent.pages += 1
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="dashboard")
        if recent.loaded is None:
            recent.loaded = asyncio.ensure_future(self._load(key, recent))
        await asyncio.shield(recent.loaded)

    def leave(self, caller: Caller) -> None:
        key = key_of(caller)
        recent = self._viewers.get(key)
        if recent is None:
            return
        recent.pages -= 1
        if recent.pages <= 0:
            del self._viewers[key]
            self._built.pop(key, None)

    async def _load(self, key: Key, recent: _Recent) -> None:
        # What finished meanwhile came through the events and is newer: it stays last.
        store = self.s.store
        requests, managed = await asyncio.gather(store.list_requests(key, RECENT),
                                                 store.managed_jobs(key, limit=RECENT))
        seen_r, seen_m = dict(recent.requests), dict(recent.managed)
        recent.requests = {r.id: r for r in reversed(requests)}
        recent.managed = {j.job_id: j for j in reversed(managed)}
        for rid, rec in seen_r.items():
            recent.add(recent.requests, rid, rec)
        for jid, job in seen_m.items():
            recent.add(recent.managed, jid, job)

    async def _tick(self) -> None:
        while self._viewers and not self.closing:
            await asyncio.sleep(TICK)
            self.tick.notify()

    def close(self) -> None:
        if self._status_changed in metrics.listeners:
            metrics.listeners.remove(self._status_changed)
        self.closing = True
        self.tick.notify()
        if self._ticker is not None:
            self._ticker.cancel()

    # ---- the document -------------------------------------------------------------------

    def document(self, caller: Caller) -> bytes:
        """What `caller` may see now, as JSON (built once per tick per viewer)."""
        key = key_of(caller)
        built = self._built.get(key)
        if built is not None and built[0] == self.tick.version:
            return built[1]
        doc = _json.encode(self._build(key))
        self._built[key] = (self.tick.version, doc)
        return doc

    def _build(self, key: Key) -> dict[str, Any]:
        def mine(uid: int) -> bool:
            return key is None or uid == key

        recent = self._viewers.get(key) or _Recent()
        return {
            "ready": self.ready(),
            "version": self.s.version,
            "queues": self._queues(),
            "requests": self._requests(recent, mine),
            "clusters": self._clusters(mine),
            "managed": self._managed(recent, mine),
            "hosts": self._hosts(mine),
        }

    def _queues(self) -> list[dict[str, Any]]:
        sched, jobs = self.s.scheduler, self.s.jobs
        return [
            {"queue": "long", "running": len(sched.long_running), "pending": len(sched.long_pending),
             "slots": sched.long_slots, "peak": sched.long_peak},
            {"queue": "short", "running": sched.short.in_use, "pending": sched.short.waiting,
             "slots": sched.short.size, "peak": sched.short.peak},
            # The jobs controller's own launches and teardowns; its queued jobs wait for one.
            {"queue": "managed launches", "running": jobs.admission.slots.in_use,
             "pending": jobs.admission.slots.waiting + len(jobs.admission.pending),
             "slots": jobs.admission.slots.size, "peak": jobs.admission.slots.peak},
        ]

    def _requests(self, recent: _Recent, mine: Callable[[int], bool]) -> list[RequestRecord]:
        sched = self.s.scheduler
        merged = dict(recent.requests)
        for req in (*sched.long_pending.values(), *sched.long_running.values()):
            if mine(req.record.uid):
                merged[req.record.id] = req.record
        return _newest(merged.values(), lambda r: r.created_at)

    def _managed(self, recent: _Recent, mine: Callable[[int], bool]) -> list[ManagedJobRecord]:
        merged = dict(recent.managed)
        for job in self.s.jobs.jobs.values():
            if mine(job.record.uid):
                merged[job.record.job_id] = job.record
        return _newest(merged.values(), lambda j: j.job_id)

    def _clusters(self, mine: Callable[[int], bool]) -> list[dict[str, Any]]:
        state = self.s.state
        jobs: dict[str, list] = {}
        for (cluster, _), live in state.jobs.items():
            jobs.setdefault(cluster, []).append(live.record)
        return [{"cluster": e.record, "jobs": sorted(jobs.get(name, ()), key=lambda j: j.job_id)}
                for name, e in sorted(state.clusters.items()) if mine(e.record.uid)]

    def _hosts(self, mine: Callable[[int], bool]) -> list[dict[str, Any]]:
        """The pools' hosts from memory (`skyctl infra` probes them; this does not)."""
        state = self.s.state
        try:
            pools = state.hosts.pool_map()
        except SkydError as e:
            return [{"pool": "", "address": "", "error": e.message}]
        owners = state.hosts.owners()
        rows = []
        for name, pool in sorted(pools.items()):
            for h in pool.hosts:
                cluster = owners.get((h.ip, h.port))
                entry = state.clusters.get(cluster) if cluster else None
                if entry is not None and not mine(entry.record.uid):
                    cluster = "(in use)"       # someone else's: its name stays private
                rows.append({"pool": name, "address": h.address, "cluster": cluster,
                             "error": state.hosts.trouble.get(h.address, ""),
                             "shared_login": pool.shared_login})
        return rows


def _newest(records: Iterable[Any], order: Callable[[Any], float]) -> list[Any]:
    return heapq.nlargest(RECENT, records, key=order)
