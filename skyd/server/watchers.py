"""The watch op's feeds: each watcher's events, from the daemon's own notifications.

Requests and managed jobs say when their status changes through skyd.metrics' listeners
(the dashboard's source too); clusters through the registry's listeners. The hub listens
only while someone watches, turns each change into an `Event` and offers it to the feeds
that may see it: the owner's, and admins' watching every user. Nothing is read from the
store. Each feed holds at most `size` unsent events: one that falls further behind is
dropped (its session then says so and hangs up), so a slow watcher never holds the loop
or more than its bound.
"""

from __future__ import annotations

import collections
import time

from skyd import metrics
from skyd.clusters.registry import Registry
from skyd.protocol import ClusterState, Event, ManagedJobRecord, Queue, RequestRecord
from skyd.streams import Topic

TERMINATED = "terminated"      # a cluster's status once it is torn down


class Feed:
    """One watcher's unsent events; `uid` None: every user's."""

    def __init__(self, uid: int | None, size: int):
        self.uid = uid
        self.size = size
        self.events: collections.deque[Event] = collections.deque()
        self.dropped = False
        self.topic = Topic()        # moves on each new event, and on the drop

    def offer(self, event: Event) -> None:
        if self.dropped or (self.uid is not None and event.uid != self.uid):
            return
        if len(self.events) >= self.size:
            self.dropped = True
            self.events.clear()
        else:
            self.events.append(event)
        self.topic.notify()


class Hub:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.feeds: set[Feed] = set()
        self._clusters: dict[str, tuple[ClusterState, int, str]] = {}   # name: status, uid, user

    def subscribe(self, uid: int | None, size: int) -> Feed:
        if not self.feeds:
            self._clusters = {name: (e.record.status, e.record.uid, e.record.user)
                              for name, e in self.registry.clusters.items()}
            metrics.listeners.append(self._status_changed)
            self.registry.listeners.append(self._cluster_changed)
        feed = Feed(uid, size)
        self.feeds.add(feed)
        return feed

    def unsubscribe(self, feed: Feed) -> None:
        self.feeds.discard(feed)
        if not self.feeds:
            metrics.listeners.remove(self._status_changed)
            self.registry.listeners.remove(self._cluster_changed)
            self._clusters = {}

    def _publish(self, event: Event) -> None:
        for feed in self.feeds:
            feed.offer(event)

    def _status_changed(self, rec: RequestRecord | ManagedJobRecord) -> None:
        if isinstance(rec, ManagedJobRecord):
            self._publish(Event(kind="managed_job", id=str(rec.job_id), status=rec.status.value,
                                name=rec.name, cluster=rec.cluster, user=rec.user, uid=rec.uid,
                                at=time.time(), detail=rec.reason))
        # Short requests take milliseconds (the shell's own lookups among them), and a jobs
        # launch's request is its managed job's event: long requests only.
        elif rec.queue is Queue.LONG:
            self._publish(Event(kind="request", id=rec.id, status=rec.status.value,
                                name=rec.name, cluster=rec.cluster or "", user=rec.user,
                                uid=rec.uid, at=time.time(), detail=rec.error or ""))

    def _cluster_changed(self, name: str) -> None:
        """Told of every change of the cluster or its jobs: an event when its status moved."""
        entry = self.registry.get(name)
        before = self._clusters.get(name)
        if entry is None:
            if before is None:
                return
            del self._clusters[name]
            _, uid, user = before
            status, detail = TERMINATED, ""
        else:
            rec = entry.record
            if before is not None and before[0] == rec.status:
                return
            self._clusters[name] = (rec.status, rec.uid, rec.user)
            uid, user, status, detail = rec.uid, rec.user, rec.status.value, rec.status_reason
        self._publish(Event(kind="cluster", id=name, status=status, cluster=name, user=user,
                            uid=uid, at=time.time(), detail=detail))
