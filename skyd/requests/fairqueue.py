"""The long queue: which waiting request starts next when a slot is free.

Round robin across users, the one served least recently first; FIFO within a user; a
user at their share of slots waits. A request on a target (the cluster it names) waits
for the earlier ones on the same target, whoever sent them. A held request (the workload
said it must wait, e.g. for room on hosts) keeps its place on its target but has no turns
until it is released. No I/O here: the scheduler starts what this hands it.
"""

from __future__ import annotations

import collections
from typing import Iterator

from skyd.requests.request import Request


class FairQueue:
    def __init__(self, user_slots: int, uncapped: frozenset[int]):
        self.user_slots = user_slots      # long slots one user may hold (0: no cap)
        self.uncapped = uncapped          # users without per-user caps
        self.pending: dict[str, Request] = {}     # insertion order is arrival order
        self.running: dict[str, Request] = {}
        self.held: dict[str, Request] = {}        # pending, waiting for the workload: no turns
        self._by_user: dict[int, dict[str, Request]] = {}         # each FIFO
        self._by_target: dict[str, dict[str, None]] = {}          # arrival order
        self._user_running: collections.Counter[int] = collections.Counter()
        self._user_waiting: collections.Counter[int] = collections.Counter()  # counted ones
        self._served: dict[int, int] = {}     # uid -> when it last got a slot (a sequence)
        self._serve_seq = 0
        # Requests pending or running per target (None: no target): lets a submission
        # behind a busy target skip the dispatch scan altogether.
        self._load: collections.Counter[str | None] = collections.Counter()

    # ---- what is queued ----------------------------------------------------------------

    def busy(self, target: str | None) -> bool:
        """A request on the target is pending or running."""
        return target in self._load

    def on(self, target: str) -> Iterator[Request]:
        """The requests on the target, running then pending, in the order they run."""
        for req in self.running.values():
            if req.record.cluster == target:
                yield req
        for rid in self._by_target.get(target, ()):
            yield self.pending[rid]

    def ahead(self, slots: int) -> int:
        """How many a request queued now waits for."""
        return len(self.pending) + max(0, len(self.running) - slots + 1)

    # ---- the pending cap: long requests one user may have waiting ------------------------

    def waiting(self, uid: int) -> int:
        return self._user_waiting[uid]

    def count(self, uid: int) -> None:
        self._user_waiting[uid] += 1

    def uncount(self, uid: int) -> None:
        self._user_waiting[uid] -= 1
        if self._user_waiting[uid] <= 0:
            del self._user_waiting[uid]

    # ---- in and out --------------------------------------------------------------------

    def add(self, req: Request, held: bool = False) -> None:
        rec = req.record
        self.pending[rec.id] = req
        if held:
            self.held[rec.id] = req
        else:
            self._by_user.setdefault(rec.uid, {})[rec.id] = req
        if rec.cluster is not None:
            self._by_target.setdefault(rec.cluster, {})[rec.id] = None
        self._load[rec.cluster] += 1

    def release(self, request_id: str) -> bool:
        """A held request may take its turns now (False: it is not held)."""
        req = self.held.pop(request_id, None)
        if req is None:
            return False
        self._by_user.setdefault(req.record.uid, {})[request_id] = req
        return True

    def remove(self, req: Request) -> None:
        """A pending request leaves the queue without running (cancelled)."""
        self._dequeue(req)
        self._unload(req)

    def ended(self, req: Request) -> None:
        """A running request has ended: its slot and its target are free."""
        self.running.pop(req.record.id, None)
        uid = req.record.uid
        self._user_running[uid] -= 1
        if self._user_running[uid] <= 0:
            del self._user_running[uid]
        self._unload(req)

    def take(self, free: int) -> list[Request]:
        """Up to `free` requests that may start now, in turn; they count as running."""
        if free <= 0 or not self.pending:
            return []
        busy = {r.record.cluster for r in self.running.values() if r.record.cluster}
        if None not in self._load and len(busy) == len(self._load):
            return []           # every pending request waits behind a busy target
        served = self._served
        turn = collections.deque(sorted(self._by_user, key=lambda u: served.get(u, 0)))
        started: list[Request] = []
        while turn and len(started) < free:
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
            self.running[req.record.id] = req
            started.append(req)
            if uid in self._by_user:
                turn.append(uid)
        return started

    # ---- inside ------------------------------------------------------------------------

    def _at_cap(self, uid: int) -> bool:
        cap = self.user_slots
        return bool(cap) and uid not in self.uncapped and self._user_running[uid] >= cap

    def _next_of(self, uid: int, busy: set[str]) -> Request | None:
        """The user's oldest request that may start now: not behind its target."""
        for req in self._by_user[uid].values():
            target = req.record.cluster
            if target is None:
                return req
            if target not in busy and next(iter(self._by_target[target])) == req.record.id:
                return req
        return None

    def _dequeue(self, req: Request) -> None:
        rec = req.record
        del self.pending[rec.id]
        if self.held.pop(rec.id, None) is None:
            mine = self._by_user[rec.uid]
            del mine[rec.id]
            if not mine:
                del self._by_user[rec.uid]
        if rec.cluster is not None:
            on_target = self._by_target[rec.cluster]
            del on_target[rec.id]
            if not on_target:
                del self._by_target[rec.cluster]
        if req.counted:
            req.counted = False
            self.uncount(rec.uid)

    def _unload(self, req: Request) -> None:
        target = req.record.cluster
        self._load[target] -= 1
        if self._load[target] <= 0:
            del self._load[target]
