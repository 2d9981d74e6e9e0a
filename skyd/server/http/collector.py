"""/metrics: the daemon's live state and its counts as Prometheus metric families.

Read at scrape time, in the loop, from memory only (never the store): queues and slots
from the scheduler, managed jobs from the jobs controller, clusters, jobs and pool hosts
from the registry, connections from the daemon, and what skyd.metrics counted. No label
names a user or a request: every label takes a bounded set of values (ops, queues,
statuses, pools, configured limits).
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Callable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily, Metric)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from skyd import metrics, protocol
from skyd.metrics import label
from skyd.protocol import MANAGED_STEPS, SkydError

if TYPE_CHECKING:
    from skyd.server.face import Served

# Listed even before they are first hit, so that alerts and graphs have a series.
LIMITS = ("connections_per_user", "inflight_bytes", "max_frame", "handshake_max_frame",
          "handshake_timeout", "user_pending", "long_timeout", "request_log_bytes",
          "tcp_handshake_timeout", "tcp_auth_failures", "tcp_preauth_per_address")


class StateCollector(Collector):
    """Gauges of what the daemon holds now."""

    def __init__(self, daemon: Served, ready: Callable[[], bool], pages: Callable[[], int]):
        self.d = daemon
        self.ready = ready
        self.pages = pages

    def collect(self) -> Iterator[Metric]:
        d = self.d
        s = d.services
        yield InfoMetricFamily("skyd_build", "The running skyd.",
                               value={"version": s.version,
                                      "protocol": str(protocol.PROTOCOL_VERSION)})
        yield GaugeMetricFamily("skyd_ready", "1 once recovered and listening; 0 while "
                                "starting or draining.", value=int(self.ready()))
        yield from self._queues()
        yield from self._managed()
        yield from self._clusters()
        yield from self._hosts()
        yield GaugeMetricFamily("skyd_connections", "Open connections on the daemon's socket.",
                                value=sum(d.connections.per_uid.values()))
        yield GaugeMetricFamily("skyd_connected_users", "Users with a connection open.",
                                value=len(d.connections.per_uid))
        yield GaugeMetricFamily("skyd_inflight_frame_bytes", "Bytes of unfinished large frames "
                                "held for all connections (limit: inflight_bytes).",
                                value=d.frame_budget.used)
        yield GaugeMetricFamily("skyd_dashboard_pages", "Dashboard pages open.",
                                value=self.pages())
        # Rows per commit is how much group commit saves: one fsync per transaction.
        yield CounterMetricFamily("skyd_store_commits", "Transactions the store committed "
                                  "(one fsync each).", value=s.store.commits)
        yield CounterMetricFamily("skyd_store_rows_written", "Writes the store committed.",
                                  value=s.store.rows_written)

    def _queues(self) -> Iterator[Metric]:
        sched, jobs = self.d.services.scheduler, self.d.services.jobs
        rows = {  # queue: (running, pending, slots)
            "long": (len(sched.long_running), len(sched.long_pending), sched.long_slots),
            "short": (sched.short.in_use, sched.short.waiting, sched.short.size),
            # The jobs controller's launches and teardowns, a bounded queue of its own.
            "jobs": (jobs.admission.slots.in_use, jobs.admission.slots.waiting,
                     jobs.admission.slots.size),
        }
        families = [GaugeMetricFamily(f"skyd_{what}", help_, labels=["queue"])
                    for what, help_ in (("requests_running", "Requests running, per queue."),
                                        ("requests_pending", "Requests waiting for a slot, per queue."),
                                        ("queue_slots", "Requests a queue runs at once."))]
        for queue, values in rows.items():
            for family, value in zip(families, values):
                family.add_metric([queue], value)
        yield from families
        oldest = GaugeMetricFamily("skyd_oldest_pending_seconds", "Age of the longest-waiting "
                                   "long request (0: none waits).", labels=["queue"])
        first = next(iter(sched.long_pending.values()), None)
        oldest.add_metric(["long"], 0.0 if first is None else
                          max(0.0, time.time() - first.record.created_at))
        yield oldest

    def _managed(self) -> Iterator[Metric]:
        jobs = self.d.services.jobs.jobs.values()
        by_state = collections.Counter(label(j.record.status) for j in jobs)
        family = GaugeMetricFamily("skyd_managed_jobs", "Managed jobs the controller drives, "
                                   "by state (finished ones while their cluster is torn down).",
                                   labels=["state"])
        steps = [label(s) for s in MANAGED_STEPS]
        for state in (*steps, *sorted(set(by_state) - set(steps))):
            family.add_metric([state], by_state.get(state, 0))
        yield family

    def _clusters(self) -> Iterator[Metric]:
        state = self.d.services.state
        clusters = collections.Counter((label(e.record.status), e.record.infra)
                                       for e in state.clusters.values())
        family = GaugeMetricFamily("skyd_clusters", "Clusters by status and infra.",
                                   labels=["status", "infra"])
        for (status, infra), n in sorted(clusters.items()):
            family.add_metric([status, infra], n)
        yield family
        jobs = collections.Counter(label(live.record.status) for live in state.jobs.values())
        family = GaugeMetricFamily("skyd_cluster_jobs", "Jobs on clusters not yet finished, "
                                   "by status.", labels=["status"])
        for status in ("PENDING", "SETTING_UP", "RUNNING"):
            family.add_metric([status], jobs.pop(status, 0))
        for status, n in sorted(jobs.items()):
            family.add_metric([status], n)
        yield family

    def _hosts(self) -> Iterator[Metric]:
        state = self.d.services.state
        try:
            pools = state.hosts.pool_map()
        except SkydError:
            pools = {}
        owners = state.hosts.owners()
        total = GaugeMetricFamily("skyd_pool_hosts", "Hosts of each ssh node pool.",
                                  labels=["pool"])
        used = GaugeMetricFamily("skyd_pool_hosts_in_use", "Hosts serving a cluster.",
                                 labels=["pool"])
        down = GaugeMetricFamily("skyd_pool_hosts_unreachable", "Hosts that did not answer "
                                 "the last health check.", labels=["pool"])
        for name, pool in sorted(pools.items()):
            total.add_metric([name], len(pool.hosts))
            used.add_metric([name], sum((h.ip, h.port) in owners for h in pool.hosts))
            down.add_metric([name], sum(h.address in state.hosts.trouble for h in pool.hosts))
        yield from (total, used, down)
        yield from self._gpus()

    def _gpus(self) -> Iterator[Metric]:
        """GPUs per pool ("local": the daemon's host) and model: all, and held by clusters."""
        counts: collections.Counter[tuple[str, str, bool]] = collections.Counter()
        for host in self.d.services.state.placements.ledger.hosts.values():
            for i, g in host.gpus.items():
                for pool in host.pools:
                    counts[(pool, g.model, i in host.used_gpus)] += 1
        total = GaugeMetricFamily("skyd_gpus", "GPUs detected, per pool and model.",
                                  labels=["pool", "model"])
        used = GaugeMetricFamily("skyd_gpus_in_use", "GPUs held by clusters (or placed for "
                                 "a launch), per pool and model.", labels=["pool", "model"])
        for pool, model in sorted({(p, m) for p, m, _ in counts}):
            total.add_metric([pool, model], counts[(pool, model, True)] + counts[(pool, model, False)])
            used.add_metric([pool, model], counts[(pool, model, True)])
        yield from (total, used)


class CountsCollector(Collector):
    """Counters and histograms of what skyd.metrics counted since the HTTP side started."""

    def __init__(self, counts: metrics.Counts):
        self.c = counts

    def collect(self) -> Iterator[Metric]:
        c = self.c
        # Counted by enum members (cheap on the request path); labelled here, where a
        # status counted both as a member and as a plain string becomes one series.
        by_label: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for (op, queue, status), n in list(c.requests.items()):
            by_label[(op, label(queue), label(status))] += n
        requests = CounterMetricFamily("skyd_requests", "Requests finished, by op, queue and "
                                       "final status.", labels=["op", "queue", "status"])
        for labels, n in sorted(by_label.items()):
            requests.add_metric(list(labels), n)
        yield requests
        for name, help_, hists in (
                ("skyd_request_duration_seconds", "Time requests ran, from start to their "
                 "final status, per queue.", c.duration),
                ("skyd_request_queue_wait_seconds", "Time requests waited for a slot, from "
                 "acceptance to start, per queue.", c.queue_wait)):
            merged: dict[str, metrics.Histogram] = {}
            for queue, h in list(hists.items()):
                merged.setdefault(label(queue), metrics.Histogram()).add(h)
            family = HistogramMetricFamily(name, help_, labels=["queue"])
            for queue, h in sorted(merged.items()):
                family.add_metric([queue], [(floatToGoString(le), n) for le, n in h.cumulative()],
                                  sum_value=h.sum)
            yield family
        errors = CounterMetricFamily("skyd_protocol_errors", "Frames that were not the "
                                     "protocol (malformed, wrong handshake), by kind.",
                                     labels=["kind"])
        for kind, n in sorted(c.protocol_errors.items()):
            errors.add_metric([kind], n)
        yield errors
        limits = CounterMetricFamily("skyd_limits_hit", "Times a configured limit refused or "
                                     "cut something, by limit.", labels=["limit"])
        for limit in sorted({*LIMITS, *c.limits_hit}):
            limits.add_metric([limit], c.limits_hit.get(limit, 0))
        yield limits
        finished = CounterMetricFamily("skyd_managed_jobs_finished", "Managed jobs that "
                                       "reached a final state, by state.", labels=["state"])
        states = collections.Counter({label(s): 0 for s in protocol.MANAGED_FINISHED})
        for state, n in list(c.managed_finished.items()):
            states[label(state)] += n
        for state, n in sorted(states.items()):
            finished.add_metric([state], n)
        yield finished
