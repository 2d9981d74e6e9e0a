"""The two queues: FIFO order, bounds never exceeded, cancel of pending and running
requests (the whole process group gone), and the FIFO semaphore itself."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import pytest

from conftest import pid_alive, wait_until
from skyd import protocol
from skyd.requests.slots import FifoSlots
from skyd.taskspec import Task


def _launch(cluster: str, setup: str, run: str | None = None) -> protocol.Launch:
    return protocol.Launch(task=Task(setup=setup, run=run), cluster=cluster)


def test_long_queue_is_fifo_under_concurrent_submission(make_daemon, workdir):
    d = make_daemon("--long-slots", "1")
    order = workdir / "order"
    # A first request holds the only slot while the others queue behind it.
    blocker = d.submit_async(_launch("blk", "sleep 1"))
    ids = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # Submissions race; the acceptance order is the order they must run in.
        futs = [pool.submit(d.frames, _launch(f"q{i}", f"echo q{i} >> {order}"), False)
                for i in range(12)]
        for f in futs:
            msgs = f.result()
            ids.append(msgs[-1].request_id)
    recs = [d.wait_request(rid) for rid in [blocker, *ids]]
    assert all(r.status is protocol.Status.SUCCEEDED for r in recs)
    by_acceptance = sorted(recs[1:], key=lambda r: r.created_at)
    started = sorted(recs[1:], key=lambda r: r.started_at)
    assert [r.id for r in started] == [r.id for r in by_acceptance]
    ran = order.read_text().split()
    assert ran == [r.cluster for r in by_acceptance]


def test_long_slots_are_never_exceeded(make_daemon, workdir):
    d = make_daemon("--long-slots", "2")
    spans = workdir / "spans"
    ids = [d.submit_async(_launch(f"b{i}", f"echo start $(date +%s.%N) >> {spans}; sleep 0.4; "
                                           f"echo end $(date +%s.%N) >> {spans}"))
           for i in range(6)]
    for rid in ids:
        assert d.wait_request(rid, 15).status is protocol.Status.SUCCEEDED   # 6 x 15 s < 120
    events = sorted((float(t), kind) for kind, t in
                    (line.split() for line in spans.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2          # both slots used, never a third


def test_requests_on_one_cluster_run_in_order(make_daemon, workdir):
    d = make_daemon("--long-slots", "4")
    out = workdir / "seq"
    first = d.submit_async(_launch("same", f"sleep 0.5; echo launch >> {out}", "true"))
    second = d.submit_async(protocol.Exec(task=Task(run=f"echo exec >> {out}"), cluster="same"))
    assert d.wait_request(first).status is protocol.Status.SUCCEEDED
    assert d.wait_request(second).status is protocol.Status.SUCCEEDED
    d.wait_job("same", 2)
    assert out.read_text().split() == ["launch", "exec"]


def test_cancel_pending_request_never_runs(make_daemon, workdir):
    d = make_daemon("--long-slots", "1")
    blocker = d.submit_async(_launch("blk", "sleep 2"))
    marker = workdir / "should-not-exist"
    pending = d.submit_async(_launch("p1", f"touch {marker}"))
    assert d.request(pending).status is protocol.Status.PENDING
    p = d.skyctl("api", "cancel", pending[:10])
    assert p.returncode == 0 and pending in p.stdout + p.stderr     # the CLI says it on stderr
    assert d.request(pending).status is protocol.Status.CANCELLED
    assert d.wait_request(blocker).status is protocol.Status.SUCCEEDED
    assert not marker.exists()
    # the cancelled launch created no cluster
    assert [c.name for c in d.call(protocol.ClusterStatus())] == ["blk"]


def test_cancel_running_request_kills_its_process_group(daemon, workdir):
    pids = workdir / "pids"
    rid = daemon.submit_async(_launch(
        "r1", f"sleep 300 & echo $! >> {pids}; sh -c 'sleep 300' & echo $! >> {pids}; "
              f"echo $$ >> {pids}; wait", run="true"))
    assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 3, 10)
    procs = [int(x) for x in pids.read_text().split()]
    assert all(pid_alive(p) for p in procs)
    done = daemon.call(protocol.ApiCancel(request_ids=[rid]))
    assert done == [rid]
    rec = daemon.wait_request(rid)
    assert rec.status is protocol.Status.CANCELLED
    assert wait_until(lambda: not any(pid_alive(p) for p in procs), 5), \
        [p for p in procs if pid_alive(p)]
    # the launch's job never started: it is cancelled too
    jobs = daemon.call(protocol.JobQueue(cluster="r1"))
    assert [j.status for j in jobs] == ["CANCELLED"]


def test_sync_client_sees_cancel_with_exit_code_3(daemon, workdir):
    import subprocess
    import sys
    import os
    env = dict(os.environ, SKYD_HOST=daemon.host, NO_COLOR="1")
    client = subprocess.Popen([sys.executable, "-m", "skyctl", "launch", "-c", "s1",
                               "--env", "X=1", str(_write(workdir, "setup: sleep 60\nrun: echo hi\n"))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert wait_until(lambda: any(r.status is protocol.Status.RUNNING and r.name == "launch"
                                  for r in daemon.call(protocol.ApiStatus())), 10)
    daemon.skyctl("api", "cancel", "--all", check=True)
    out, err = client.communicate(timeout=20)
    assert client.returncode == 3, err
    assert "cancelled" in err


def _write(workdir: Path, body: str) -> Path:
    p = workdir / "task.yaml"
    p.write_text(body)
    return p


def test_short_requests_many_concurrent_clients(make_daemon, workdir):
    import socket
    import time
    # A pool host that accepts connections and never says a word: each `infra` probe of
    # it holds its short slot until that host goes away.
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    pools = workdir / "pools.yaml"
    pools.write_text(f"silent:\n  hosts:\n    - ip: 127.0.0.1\n"
                     f"      port: {silent.getsockname()[1]}\n")
    d = make_daemon("--short-slots", "2", "--node-pools", str(pools))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        probes = [pool.submit(d.call, protocol.InfraStatus()) for _ in range(5)]
        try:
            # The bound holds: two run, three wait in the short queue.
            assert wait_until(lambda: d.call(protocol.ApiInfo()).short_pending == 3, 8)
            for _ in range(10):
                info = d.call(protocol.ApiInfo())
                assert (info.short_running, info.short_pending) == (2, 3)
                time.sleep(0.05)
        finally:
            silent.close()            # the probes fail at once; the waiting ones run
        hosts = [f.result(timeout=60) for f in probes]
        results = list(pool.map(lambda _: d.call(protocol.ApiInfo()).short_slots, range(64)))
        statuses = list(pool.map(lambda _: d.call(protocol.ClusterStatus()), range(64)))
    assert [[h.reachable for h in found] for found in hosts] == [[False]] * 5
    info = d.call(protocol.ApiInfo())
    assert (info.short_peak, info.short_running, info.short_pending) == (2, 0, 0)
    assert results == [2] * 64
    assert statuses == [[]] * 64


async def test_fifo_slots_admit_in_arrival_order_and_bound_concurrency():
    slots = FifoSlots(2)
    order, active, peak = [], 0, 0

    async def worker(i: int) -> None:
        nonlocal active, peak
        await slots.acquire()
        try:
            order.append(i)
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.005)
            active -= 1
        finally:
            slots.release()

    await asyncio.gather(*(worker(i) for i in range(20)))
    assert order == list(range(20))
    assert peak == 2 and slots.in_use == 0


async def test_fifo_slots_cancelled_waiter_does_not_leak_a_slot():
    slots = FifoSlots(1)
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release()
    assert slots.in_use == 0 and slots.waiting == 0
    await asyncio.wait_for(slots.acquire(), 1)
    assert slots.in_use == 1
