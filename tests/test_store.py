"""The store on real SQLite files: WAL + synchronous=FULL, migrations, group commit."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
import uuid

import msgspec
import pytest

from skyd import protocol
from skyd.protocol import Queue, RequestRecord, Status
from skyd.store import MIGRATIONS, Store
from skyd.taskspec import Task


def _record(i: int) -> RequestRecord:
    return RequestRecord(id=str(uuid.uuid4()), name="launch", queue=Queue.LONG,
                         status=Status.PENDING, user="u", uid=1000, created_at=time.time() + i)


async def test_concurrent_submissions_share_commits(tmp_path):
    store = Store(tmp_path / "s.db")
    await store.open()
    try:
        recs = [_record(i) for i in range(500)]
        await asyncio.gather(*(store.add_request(r, b"\x80") for r in recs))
        assert store.rows_written == 500
        assert store.commits < 50, store.commits      # grouped, not one fsync each
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        ids = [r[0] for r in db.execute("SELECT id FROM requests ORDER BY seq")]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert ids == [r.id for r in recs]                 # arrival order kept


async def test_commits_are_synchronous_full(tmp_path):
    """A request is durable once "accepted": the connection that commits every write runs
    with synchronous=FULL (2; a per-connection setting: the file does not keep it), in WAL."""
    store = Store(tmp_path / "s.db")
    await store.open()
    try:
        await store.add_request(_record(0), b"\x80")
        def pragma(name: str):
            return store._w.execute(f"PRAGMA {name}").fetchone()[0]
        assert await store._on_writer(pragma, "synchronous") == 2       # FULL
        assert await store._on_writer(pragma, "journal_mode") == "wal"
    finally:
        await store.close()


async def test_one_bad_write_does_not_fail_its_batch(tmp_path):
    store = Store(tmp_path / "s.db")
    await store.open()
    try:
        good = _record(0)
        dup = _record(1)
        await store.add_request(dup, b"")
        results = await asyncio.gather(store.add_request(good, b""), store.add_request(dup, b""),
                                       return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert (await store.get_request(good.id))[0].id == good.id
    finally:
        await store.close()


async def test_prefix_lookup_and_listing(tmp_path):
    store = Store(tmp_path / "s.db")
    await store.open()
    try:
        recs = [_record(i) for i in range(30)]
        await asyncio.gather(*(store.add_request(r, b"") for r in recs))
        target = recs[7].id
        assert await store.request_ids_with_prefix(target[:12]) == [target]
        listed = await store.list_requests(uid=1000, limit=5)
        assert [r.id for r in listed] == [r.id for r in reversed(recs)][:5]
        assert await store.list_requests(uid=42, limit=5) == []
    finally:
        await store.close()


def test_the_queries_for_unfinished_rows_use_their_partial_indexes(tmp_path):
    """Recovery reads the unfinished requests, jobs and managed jobs at every start: the
    status lists in those queries (built from the enums) must be the partial indexes' own,
    or SQLite scans the whole table (years of history)."""
    from skyd.store import schema
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS:
            for stmt in schema.statements(script):
                db.execute(stmt)
        for sql, index in [
                (f"SELECT id FROM requests WHERE status IN {schema.ACTIVE_REQUESTS}", "requests_active"),
                (f"SELECT job_id FROM jobs WHERE status NOT IN {schema.FINISHED_JOBS}", "jobs_active"),
                (f"SELECT record FROM managed_jobs WHERE status IN {schema.ACTIVE_MANAGED}"
                 " OR teardown = 1 ORDER BY job_id", "managed_jobs_unfinished")]:
            plan = " ".join(r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert f"INDEX {index}" in plan, (sql, plan)


async def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    store = Store(path)
    with pytest.raises(RuntimeError, match="newer than this skyd"):
        await store.open()
    await store.close()


def test_burst_of_async_submissions_through_the_daemon(make_daemon):
    d = make_daemon("--long-slots", "1")
    op = protocol.Launch(task=Task(setup="sleep 5"), cluster="burst")

    def submit(_: int) -> str:
        return d.submit_async(op)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(200)))
    assert len(set(ids)) == 200
    d.kill9()
    with sqlite3.connect(d.state_dir / "skyd.db") as db:
        stored = {r[0] for r in db.execute("SELECT id FROM requests")}
        ops = [msgspec.msgpack.decode(r[0]) for r in db.execute("SELECT op FROM requests LIMIT 1")]
    assert stored == set(ids)
    assert ops[0]["op"] == "launch"


async def test_a_read_after_a_commit_sees_it_while_other_reads_run(tmp_path):
    """Read-your-writes under concurrent readers: a row read back right after its commit is
    there. (Reads interleaved statement by statement on the one reader connection once
    shared a read transaction, so a read could see a snapshot older than a commit it
    followed: 32–36 of 200 here, and a managed job whose finished cluster job read as still
    running was judged killed and run again.)"""
    store = Store(tmp_path / "s.db")
    await store.open()
    stop = asyncio.Event()

    async def listing() -> None:
        while not stop.is_set():
            await store.list_requests(None, 200)
    readers = [asyncio.create_task(listing()) for _ in range(4)]
    try:
        missed = 0
        for i in range(200):
            rec = _record(i)
            await store.add_request(rec, b"")
            missed += await store.get_request(rec.id) is None
        assert missed == 0, f"{missed} of 200 rows not seen right after their commit"
    finally:
        stop.set()
        await asyncio.gather(*readers)
        await store.close()
