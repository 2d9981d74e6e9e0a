"""Requests waiting for room on hosts (claims), and the order in which freed room goes to
them: fair across people — the one holding the smallest share of the GPUs goes next
(then the one served least recently) — and, within one person's claims, by priority,
then in order of arrival. Each pass places what fits now, best fit (placement.py), as a
reservation in the ledger under the cluster's name; the claim is then told.

A person's first claim that does not fit holds back their later ones (their own order is
kept), but not other people's: freed room goes to whoever's claim fits (backfill). So
that backfill cannot starve a big request for ever, a claim passed over MAX_OVERTAKES
times has the hosts closest to fitting it fenced: nothing else is placed there until it
fits.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Callable

from skyd.clusters.ledger import Ledger
from skyd.clusters.placement import (Demand, candidates, never_fits, place, resolve,
                                     surely_blocked, why_waiting)
from skyd.protocol import HeldSlice

MAX_OVERTAKES = 32


@dataclass
class Caps:
    """Per-user caps (0: none). `uncapped`: the host's operators."""
    gpus: int = 0
    clusters: int = 0
    uncapped: frozenset[int] = frozenset()


@dataclass(eq=False)
class Claim:
    key: str                     # the cluster it is for
    uid: int
    user: str
    demand: Demand
    notify: Callable[["Claim"], None]   # placed (`slices`), refused (`error`) or a new `reason`
    priority: int = 500
    new_cluster: bool = True     # counts against max_clusters_per_user once placed
    seq: int = 0
    reason: str = ""
    slices: list[HeldSlice] | None = None
    error: str = ""
    overtaken: int = 0
    checked: int = -1            # ledger.freed when it last did not fit
    fence: frozenset[str] = field(default_factory=frozenset)

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class Claims:
    def __init__(self, ledger: Ledger, caps: Caps | None = None,
                 clusters_of: Callable[[int], int] = lambda uid: 0,
                 avoid: Callable[[], frozenset[str]] = frozenset):
        self.ledger = ledger
        self.caps = caps or Caps()
        self.clusters_of = clusters_of      # a user's clusters (and reservations)
        self.avoid = avoid                  # hosts that did not answer lately
        self.by_key: dict[str, Claim] = {}
        self.by_user: dict[int, list[Claim]] = {}     # each in (priority, arrival) order
        self._seq = itertools.count(1)
        self._served: dict[int, int] = {}
        self._serve_seq = itertools.count(1)
        self.fenced: dict[str, str] = {}    # host -> the claim it is kept for

    def __len__(self) -> int:
        return len(self.by_key)

    # ---- in and out --------------------------------------------------------------------

    def add(self, claim: Claim) -> Claim:
        """Queue a claim (replacing one for the same cluster). Nothing is placed here:
        run() does, in fair order; its reason is said by explain()."""
        self.drop(claim.key)
        claim.seq = next(self._seq)
        self.by_key[claim.key] = claim
        bisect.insort(self.by_user.setdefault(claim.uid, []), claim, key=lambda c: c.sort_key)
        return claim

    def drop(self, key: str) -> Claim | None:
        claim = self.by_key.pop(key, None)
        if claim is None:
            return None
        mine = self.by_user[claim.uid]
        mine.remove(claim)
        if not mine:
            del self.by_user[claim.uid]
        self._unfence(claim)
        return claim

    def position(self, key: str) -> int:
        """Claims of the same person ahead of this one."""
        claim = self.by_key.get(key)
        return self.by_user[claim.uid].index(claim) if claim else 0

    # ---- the pass ------------------------------------------------------------------------

    def run(self) -> list[Claim]:
        """Place what fits now, in fair order. Returns the claims placed (each left the
        queue, its slices reserved in the ledger). Reasons are not computed here (the
        hot path): explain() does, when someone will read them."""
        ledger = self.ledger
        told: list[Claim] = []
        total = ledger.total_gpus() or 1

        def turn(uid: int) -> tuple[float, int, int]:
            return (ledger.user_gpus.get(uid, 0) / total, self._served.get(uid, 0), uid)
        # Whose turn: a heap by share (a placement changes only the placed person's).
        order = [turn(uid) for uid in self.by_user]
        heapq.heapify(order)
        while order:
            uid = heapq.heappop(order)[2]
            mine = self.by_user.get(uid)
            if not mine:
                continue
            head = mine[0]
            if head.checked == ledger.freed and not head.fence:
                continue        # nothing was freed since it last did not fit
            slices = None
            if not self._capped(head) and not surely_blocked(ledger, head.demand):
                fenced = frozenset(h for h, k in self.fenced.items() if k != head.key) \
                    if self.fenced else frozenset()
                slices = place(ledger, head.demand, fenced, self.avoid())
            if slices is None:
                head.checked = ledger.freed
                continue        # blocked: the person's later claims wait behind it
            self.drop(head.key)
            ledger.hold(head.key, head.uid, head.user, slices, reserved=True)
            head.slices, head.reason = slices, ""
            self._served[uid] = next(self._serve_seq)
            told.append(head)
            self._overtake(head)
            if uid in self.by_user:
                heapq.heappush(order, turn(uid))
        return told

    def explain(self, claims: list[Claim] | None = None) -> list[Claim]:
        """Say why each claim waits (by default each person's first: the ones the next
        pass looks at); returns those whose reason changed."""
        if claims is None:
            claims = [mine[0] for mine in self.by_user.values()]
        changed = []
        for claim in claims:
            fenced = frozenset(h for h, k in self.fenced.items() if k != claim.key)
            why = self._capped(claim) or why_waiting(self.ledger, claim.demand, fenced)
            ahead = self.position(claim.key)
            if ahead:
                why += f" ({ahead} of your requests ahead of it)"
            if why != claim.reason:
                claim.reason = why
                changed.append(claim)
        return changed

    def _capped(self, claim: Claim) -> str:
        caps = self.caps
        if claim.uid in caps.uncapped:
            return ""
        held = self.ledger.user_gpus.get(claim.uid, 0)
        want = claim.demand.gpus * claim.demand.num_nodes if not claim.demand.pinned else \
            claim.demand.gpus * len(claim.demand.pinned)
        if caps.gpus and want and held + want > caps.gpus:
            return (f"waiting for {claim.demand.describe()}: max_gpus_per_user is {caps.gpus} "
                    f"and you hold {held}")
        if caps.clusters and claim.new_cluster and self.clusters_of(claim.uid) >= caps.clusters:
            return (f"waiting: max_clusters_per_user is {caps.clusters} and you have "
                    f"{self.clusters_of(claim.uid)}")
        return ""

    def _overtake(self, placed: Claim) -> None:
        """Every other person's blocked first claim was passed over once more; one passed
        over too often gets the hosts closest to fitting it fenced."""
        for uid, mine in self.by_user.items():
            head = mine[0]
            if uid == placed.uid or head.fence or not head.demand.options or head.checked < 0:
                continue
            if head.demand.pool == placed.demand.pool:
                head.overtaken += 1
                if head.overtaken >= MAX_OVERTAKES:
                    self._fence(head)

    def _fence(self, claim: Claim) -> None:
        d = claim.demand
        if not d.options or d.pinned or d.same_host:
            return
        model = resolve(self.ledger, d.options[0].model)
        hosts = [h for h in candidates(self.ledger, d) if h.key not in self.fenced
                 and h.count(model) >= d.options[0].count]
        hosts.sort(key=lambda h: (-len(h.free_gpus(model)), h.order))
        claim.fence = frozenset(h.key for h in hosts[:d.num_nodes])
        for key in claim.fence:
            self.fenced[key] = claim.key

    def _unfence(self, claim: Claim) -> None:
        for key in claim.fence:
            if self.fenced.get(key) == claim.key:
                del self.fenced[key]
        claim.fence = frozenset()

    # ---- after the hosts changed -----------------------------------------------------------

    def refuse_impossible(self) -> list[Claim]:
        """Claims no host could ever hold any more (the GPUs detected changed): they
        leave the queue with `error` set."""
        refused = []
        verdicts: dict[Demand, str] = {}
        for claim in list(self.by_key.values()):
            if claim.demand not in verdicts:
                verdicts[claim.demand] = never_fits(self.ledger, claim.demand)
            if verdicts[claim.demand]:
                self.drop(claim.key)
                claim.error = verdicts[claim.demand]
                refused.append(claim)
        return refused
