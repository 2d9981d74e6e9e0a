"""The store when its database cannot be written (real SQLite files, a lock held by another
connection as another process would): new work is refused with a clear retryable error,
what already happened waits, in order, and lands once the fault is gone. (The disk
really full, under a real daemon: tests/reliability/test_resource_faults.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import pytest

from skyd.protocol import ErrorCode, Queue, RequestRecord, Status
from skyd.store import Store
from skyd.store.faults import StoreUnavailable, store_fault


def _record(i: int) -> RequestRecord:
    return RequestRecord(id=str(uuid.uuid4()), name="launch", queue=Queue.LONG,
                         status=Status.PENDING, user="u", uid=1000, created_at=time.time() + i)


def _lock(path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


async def test_a_locked_database_refuses_new_work_and_holds_what_happened(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path, busy_timeout=0.2)
    await store.open()
    try:
        started = _record(0)
        await store.add_request(started, b"")
        other = _lock(path)
        try:
            running = store.mark_running(started.id, 1.0)
            finished = store.finish_request(started.id, Status.SUCCEEDED, 2.0, b"r", None)
            with pytest.raises(StoreUnavailable) as refused:
                await store.add_request(_record(1), b"")
            e = refused.value
            assert e.code is ErrorCode.UNAVAILABLE, e
            assert "locked by another process" in e.message and str(path) in e.message, e
            assert "bug" not in e.hint and e.hint, e
            await asyncio.sleep(0.6)          # a few more tries, all refused by the lock
            assert not running.done() and not finished.done()      # held, not failed
            assert store.fault is not None
        finally:
            other.execute("ROLLBACK")
            other.close()
        await asyncio.wait_for(asyncio.gather(running, finished), 5)
        rec, result = await store.get_request(started.id)
        assert (rec.status, rec.started_at, rec.finished_at, result) == \
            (Status.SUCCEEDED, 1.0, 2.0, b"r")                       # both, in order
        assert store.fault is None
        await store.add_request(_record(2), b"")                    # new work taken again
    finally:
        await store.close()


async def test_the_daemons_own_submission_waits_out_the_fault(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path, busy_timeout=0.1)
    await store.open()
    try:
        other = _lock(path)
        own = _record(0)
        try:
            stored = store.add_request(own, b"", patient=True)
            await asyncio.sleep(0.4)
            assert not stored.done()
        finally:
            other.execute("ROLLBACK")
            other.close()
        await asyncio.wait_for(stored, 5)
        assert (await store.get_request(own.id))[0].id == own.id
    finally:
        await store.close()


async def test_closing_through_a_lasting_fault_refuses_what_it_held(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path, busy_timeout=0.1)
    await store.open()
    r = _record(0)
    await store.add_request(r, b"")
    other = _lock(path)
    try:
        held = store.mark_running(r.id, 1.0)
        await asyncio.sleep(0.3)
        await asyncio.wait_for(store.close(), 5)          # does not wait for the fault to end
        assert isinstance(held.exception(), StoreUnavailable)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_bad_statement_is_not_a_fault(tmp_path):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (1)")
    for sql in ("SELEC 1", "INSERT INTO t VALUES (1)", "SELECT nope FROM t"):
        with pytest.raises(sqlite3.Error) as e:
            db.execute(sql)
        assert store_fault(e.value, tmp_path / "s.db") is None, sql
