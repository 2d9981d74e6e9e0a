"""What the daemon counts as it runs: the events behind its metrics and its dashboard.

Modules anywhere in the daemon report an event with one call (`request_finished`,
`status_changed`, `protocol_error`, `limit_hit`, `managed_job_finished`). Nothing is kept until the HTTP side
(skyd.server.http) calls `enable()`: with it off the calls cost a global lookup, and the
daemon imports neither prometheus-client nor aiohttp (14 MiB of its RSS together). While
on, the counts are plain integers and fixed-bucket histograms: a short request costs
~0.4 µs here, where prometheus-client's own objects take ~3 µs (a tenth of a short
request at 50 clients); the HTTP side turns them into metric families when scraped.

Standard library only: every layer of the daemon may import this module.
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from skyd.protocol import ManagedJobRecord, RequestRecord

# Seconds: short requests take milliseconds, long ones minutes.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Histogram:
    """Observations counted per bucket (upper bounds inclusive, as Prometheus's `le`)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, other: "Histogram") -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with +inf."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


class Counts:
    """Everything counted since the HTTP side was enabled."""

    def __init__(self) -> None:
        # (op, queue, final status) -> requests; op names and statuses are bounded sets.
        self.requests: collections.Counter[tuple[str, Any, Any]] = collections.Counter()
        self.duration: dict[Any, Histogram] = {}       # per queue: start to end
        self.queue_wait: dict[Any, Histogram] = {}     # per queue: accepted to start
        self.protocol_errors: collections.Counter[str] = collections.Counter()      # per kind
        self.limits_hit: collections.Counter[str] = collections.Counter()           # per limit
        self.managed_finished: collections.Counter[str] = collections.Counter()     # per status

    def duration_of(self, queue: Any) -> Histogram:
        h = self.duration.get(queue)
        if h is None:
            h = self.duration[queue] = Histogram()
        return h

    def wait_of(self, queue: Any) -> Histogram:
        h = self.queue_wait.get(queue)
        if h is None:
            h = self.queue_wait[queue] = Histogram()
        return h


counts: Counts | None = None

# Told of every new status of a request or a managed job, counts kept or not (the
# dashboard's recent lists, the watch op's feeds). Called in the loop; must not block.
listeners: list[Callable[[RequestRecord | ManagedJobRecord], None]] = []


def enable() -> Counts:
    global counts
    if counts is None:
        counts = Counts()
    return counts


def disable() -> None:
    global counts
    counts = None


def label(v: object) -> str:
    """A status or queue as its wire value, whether an enum member or a plain string."""
    return str(getattr(v, "value", v))


def request_finished(rec: RequestRecord) -> None:
    """A request reached its final status (its record has its times). Kept by the queue
    and status as they are (enum members): made label strings only when scraped."""
    status_changed(rec)
    c = counts
    if c is None:
        return
    queue, started = rec.queue, rec.started_at
    key = (rec.name, queue, rec.status)
    c.requests[key] = c.requests.get(key, 0) + 1
    if started is not None:
        c.wait_of(queue).observe(started - rec.created_at)
        if rec.finished_at is not None:
            c.duration_of(queue).observe(rec.finished_at - started)


def status_changed(rec: RequestRecord | ManagedJobRecord) -> None:
    """A request or a managed job has a new status (its record already says which)."""
    for listener in listeners:
        listener(rec)


def managed_job_finished(rec: ManagedJobRecord) -> None:
    c = counts
    if c is None:
        return
    c.managed_finished[rec.status] += 1


def protocol_error(kind: str) -> None:
    """A client sent something that is not the protocol (a malformed frame, a bad hello)."""
    if counts is not None:
        counts.protocol_errors[kind] += 1


def limit_hit(limit: str) -> None:
    """A configured limit refused or cut something (`limit`: its config name)."""
    if counts is not None:
        counts.limits_hit[limit] += 1
