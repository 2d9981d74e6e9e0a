"""Crash consistency: bursts of --async requests from several clients while the daemon is
killed with -9 at random moments, then stopped with SIGTERM mid-burst; after every restart
what was accepted is there, exactly once, and ends as the restart rules say; no id is
handed out again; waiting requests run in their original order; every task (cluster jobs
and managed jobs alike, each appending to a marker file) runs at most once, and exactly
once if it succeeded. profiling/soak/burst.py holds the scenario and the checks; `python3
-m profiling.soak crash` runs it with 10,000 requests."""

from __future__ import annotations

import random
import time

import pytest

from conftest import wait_until
from profiling.soak.burst import Burst, stop_schedule
from skyd import protocol
from skyd.taskspec import Task


# ~40 s here: a 12 s burst of 160 requests from 4 clients, 3 kill -9 and a SIGTERM, then
# until everything has run (bounded at 90 s).
@pytest.mark.timeout(170)
def test_a_burst_killed_three_times_and_stopped_loses_nothing_and_runs_nothing_twice(
        make_daemon, workdir, seed):
    d = make_daemon("--long-slots", "2", "--jobs-parallelism", "2")
    burst = Burst(d, workdir, clients=4, requests=160, clusters=4, duration=12.0, seed=seed)
    burst.prepare()
    stops = stop_schedule(random.Random(seed), 12.0, kills=3)
    burst.run(stops)
    burst.settle(90)
    t = burst.verify()
    where = (f"seed {seed} (SKYD_TEST_SEED={seed} replays it), stops {t.stops}, accepted "
             f"{t.accepted}, refused {dict(t.refused)}, unknown {t.unknown}")
    assert t.failures() == {}, where
    # the burst really happened around the stops: plenty accepted, some refused or cut off
    # while the daemon was down, some of everything ran
    assert t.accepted >= 70 and len(t.stops) == 4, where
    assert t.unreachable + t.unknown + sum(t.refused.values()) > 0, where
    assert t.tasks_run >= t.accepted * 0.6, where


def _launch(cluster: str, setup: str) -> protocol.Launch:
    return protocol.Launch(task=Task(setup=setup, run="true"), cluster=cluster)


@pytest.mark.timeout(60)
def test_an_acknowledged_cancel_survives_kill9(make_daemon, workdir):
    """`api cancel` answered with the id: the request is cancelled, also when the daemon
    dies the next moment. Its setup must not run again."""
    d = make_daemon()
    marker = workdir / "setup-runs"
    rid = d.submit_async(_launch("cancelled", f"echo run >> {marker}; sleep 30"))
    assert wait_until(marker.exists, 15)
    assert d.call(protocol.ApiCancel(request_ids=[rid])) == [rid]
    d.kill9()
    d.start()
    time.sleep(1.5)             # a re-run's setup would have started by now
    assert d.wait_request(rid, 3).status is protocol.Status.CANCELLED
    assert marker.read_text() == "run\n"
