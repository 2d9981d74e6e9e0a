"""Idempotent submissions: a retried submission whose first attempt was accepted answers
the first attempt's request, also after the daemon was killed with -9 in between; a loop
of submissions ridden through two kill -9 restarts is accepted exactly once each. A real
daemon; the submissions wait behind a launch whose setup holds its cluster, so they cost
a durable row each and nothing else."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol
from skyd.protocol import ErrorCode, Status, Submit
from skyd.taskspec import Task

CLUSTER = "held"


def _hold(d) -> str:
    """A cluster busy with a long setup: every request on it waits (a row, no process)."""
    return d.submit_async(protocol.Launch(task=Task(setup="sleep 600", run="true"),
                                          cluster=CLUSTER))


def _submit(d, op: protocol.Op, key: str, wait: bool = False) -> protocol.Accepted:
    """One attempt with an idempotency key, as the real client sends it."""
    with Connection(str(d.socket), "test", timeout=20).connect() as c:
        c.sock.sendall(protocol.encode_frame(Submit(op, wait, idempotency_key=key)))
        msg = c.read()
    if isinstance(msg, protocol.Error):
        raise ServerError(msg)
    assert isinstance(msg, protocol.Accepted), msg
    return msg


def _exec_requests(d) -> list[protocol.RequestRecord]:
    return [r for r in d.call(protocol.ApiStatus(all_statuses=True, limit=10_000))
            if r.name == "exec"]


def _clean(d) -> None:
    d.call(protocol.ApiCancel(all=True, all_users=True))
    d.call(protocol.Down(cluster=CLUSTER))


def test_a_retry_answers_the_first_attempts_request(daemon):
    d = daemon
    _hold(d)
    op = protocol.Exec(task=Task(run="echo once"), cluster=CLUSTER)
    first = _submit(d, op, "key-1")
    again = _submit(d, op, "key-1")
    assert again.request_id == first.request_id and again.queue is protocol.Queue.LONG
    other = _submit(d, op, "key-2")
    assert other.request_id != first.request_id
    assert len(_exec_requests(d)) == 2
    # The same key for another kind of request is a client's bug: said, not guessed.
    with pytest.raises(ServerError) as e:
        _submit(d, protocol.Stop(cluster=CLUSTER), "key-1")
    assert e.value.error.code is ErrorCode.CONFLICT and "exec" in e.value.error.message
    # With wait, a retry follows the first attempt's request like the first would have.
    with Connection(str(d.socket), "test", timeout=20).connect() as c:
        c.sock.sendall(protocol.encode_frame(Submit(op, True, idempotency_key="key-1")))
        assert c.read().request_id == first.request_id
    # Without a key, a submission is always a new request.
    assert _submit(d, op, "").request_id not in (first.request_id, other.request_id)
    _clean(d)


def test_a_retry_after_kill_9_answers_the_first_request(make_daemon):
    d = make_daemon()
    _hold(d)
    exec_op = protocol.Exec(task=Task(run="true"), cluster=CLUSTER)
    first = _submit(d, exec_op, "exec-k")
    job_op = protocol.JobsLaunch(task=Task(run="true"), name="once")
    job = _submit(d, job_op, "job-k")
    assert job.job_id is not None
    d.kill9()          # the client never saw those answers: it sends them again
    d.start()
    assert _submit(d, exec_op, "exec-k").request_id == first.request_id
    again = _submit(d, job_op, "job-k")
    assert (again.request_id, again.job_id) == (job.request_id, job.job_id)
    assert len(_exec_requests(d)) == 1
    assert [j.name for j in d.call(protocol.JobsQueue())].count("once") == 1
    d.call(protocol.JobsCancel(all=True))
    _clean(d)


def test_submissions_through_kill_9_restarts_are_accepted_exactly_once(make_daemon):
    """As the restart-riding client does: each submission keeps its key across retries
    while the daemon is killed with -9 and started again, twice."""
    d = make_daemon()
    _hold(d)
    total, kills_at = 150, (50, 100)
    accepted: list[str] = []
    retries = 0
    restarted = threading.Event()

    def killer() -> None:
        for at in kills_at:
            while len(accepted) < at:
                time.sleep(0.002)
            d.kill9()
            d.start()
        restarted.set()

    t = threading.Thread(target=killer)
    t.start()
    try:
        for i in range(total):
            key = os.urandom(16).hex()
            deadline = time.monotonic() + 60
            while True:
                try:
                    accepted.append(_submit(d, protocol.Exec(task=Task(run=f"echo {i}"),
                                                             cluster=CLUSTER), key).request_id)
                    break
                except (Unreachable, ConnectionError, OSError):
                    retries += 1
                    assert time.monotonic() < deadline, "the daemon did not come back"
                    time.sleep(0.02)
    finally:
        t.join(120)
    assert restarted.is_set()
    assert retries > 0                      # the loop did ride through the restarts
    execs = _exec_requests(d)
    assert len(accepted) == len(set(accepted)) == total
    assert sorted(r.id for r in execs) == sorted(accepted)      # no duplicate, none lost
    assert all(r.status is Status.PENDING for r in execs)
    _clean(d)


async def test_keys_are_each_users_own_and_go_with_their_request(tmp_path):
    """The store's rows: one key of two users are two keys; retention removing a request
    removes its key with it (ON DELETE CASCADE), so the key names nothing afterwards."""
    import time as clock

    from skyd.store import Store
    store = Store(tmp_path / "s.db")
    await store.open()
    try:
        recs = [protocol.RequestRecord(id=f"r{uid}", name="exec", queue=protocol.Queue.LONG,
                                       status=Status.PENDING, user=f"u{uid}", uid=uid,
                                       created_at=clock.time()) for uid in (1001, 1002)]
        for rec in recs:
            await asyncio.gather(store.add_request(rec, b"\x80"),
                                 store.add_submission_key(rec.uid, "same", rec.id, "exec",
                                                          rec.created_at))
        assert await store.submission(1001, "same") == ("r1001", "exec")
        assert await store.submission(1002, "same") == ("r1002", "exec")
        with pytest.raises(Exception, match="FOREIGN KEY"):     # no key without its request
            await store.add_submission_key(1001, "orphan", "no-such-request", "exec", 0.0)
        await store.delete_requests(["r1001"])
        assert await store.submission(1001, "same") is None
        assert await store.submission(1002, "same") == ("r1002", "exec")
    finally:
        await store.close()
