"""A client that rides out restarts: `--async` submissions while the daemon is killed
(kill -9) and started again are each accepted exactly once — the client waits for the
daemon, and a submission retried after a lost connection carries its idempotency key."""

from __future__ import annotations

import signal
import threading
import time

from skyd import protocol

SUBMISSIONS = 40


def test_async_submissions_ride_out_kill_9_restarts(daemon):
    assert daemon.skyctl("launch", "-c", "rr", "--infra", "local", "true").returncode == 0
    ids: list[str] = []
    failures: list[str] = []
    done = threading.Event()

    def submit_all() -> None:
        for i in range(SUBMISSIONS):
            p = daemon.skyctl("exec", "rr", "--async", f"echo {i}", timeout=90)
            if p.returncode == 0:
                ids.append(p.stdout.strip())
            else:
                failures.append(p.stderr)
        done.set()

    t = threading.Thread(target=submit_all)
    t.start()
    for when in (8, 20):
        while len(ids) + len(failures) < when and not done.is_set():
            time.sleep(0.02)
        daemon.stop(signal.SIGKILL)
        time.sleep(1.0)                     # clients find a dead socket for a while
        daemon.start()
    t.join(timeout=300)
    assert not failures, failures[:3]
    assert len(ids) == SUBMISSIONS and len(set(ids)) == SUBMISSIONS
    execs = [r for r in daemon.call(protocol.ApiStatus(all_statuses=True, limit=500)) if r.name == "exec"]
    assert sorted(r.id for r in execs) == sorted(ids)       # none lost, none twice
