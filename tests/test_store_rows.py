"""Every row the store writes reads back as written (skyd/store/, directly on a
real SQLite file): requests through their lifecycle, clusters, jobs, managed jobs; a
mixed group commit; migrations from an old file and their rollback. What the daemon's
recovery rebuilds itself from after a restart, so a field dropped or swapped here is a
silent loss there."""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec
import pytest

from skyd.protocol import (ClusterRecord, ClusterState, JobRecord, JobStatus, ManagedJobRecord,
                           ManagedJobStatus, NodeInfo, Queue, RequestRecord, Status)
from skyd.store import MIGRATIONS, Store, StoredRequest


@pytest.fixture
async def store(tmp_path):
    s = Store(tmp_path / "s.db")
    await s.open()
    yield s
    await s.close()


def req(i: int, uid: int = 1000, rid: str | None = None, cluster: str | None = "c") -> RequestRecord:
    return RequestRecord(id=rid or f"{i:08x}-0000-4000-8000-000000000000", name=f"op{i}",
                         queue=Queue.LONG if i % 2 else Queue.SHORT, status=Status.PENDING,
                         user=f"u{uid}", uid=uid, created_at=100.0 + i, cluster=cluster)


# ---- requests --------------------------------------------------------------------------------

async def test_a_request_reads_back_as_written_through_its_lifecycle(store):
    r = req(1)
    await store.add_request(r, b"op-bytes")
    assert await store.get_request(r.id) == (r, None)
    assert await store.active_requests() == [StoredRequest(1, r, b"op-bytes")]

    await store.mark_running(r.id, 150.5)
    running = msgspec.structs.replace(r, status=Status.RUNNING, started_at=150.5)
    assert await store.get_request(r.id) == (running, None)
    await store.mark_pending(r.id)                       # recovery puts it back in line
    assert await store.get_request(r.id) == (r, None)
    await store.mark_running(r.id, 151.0)
    await store.finish_request(r.id, Status.FAILED, 152.25, b"res", "it broke")
    done = msgspec.structs.replace(r, status=Status.FAILED, started_at=151.0, finished_at=152.25,
                                   error="it broke")
    assert await store.get_request(r.id) == (done, b"res")
    assert await store.active_requests() == []
    assert await store.list_requests(None, 10) == [done]
    assert await store.count_requests() == {"failed": 1}


async def test_a_request_stored_finished(store):
    r = msgspec.structs.replace(req(2, cluster=None), status=Status.SUCCEEDED, started_at=101.0,
                                finished_at=102.0)
    await store.add_finished_request(r, b"op", b"result")
    assert await store.get_request(r.id) == (r, b"result")
    assert await store.active_requests() == []
    assert await store.get_request("no-such-id") is None


async def test_active_requests_in_arrival_order_with_their_ops(store):
    recs = [req(i) for i in range(4)]
    for i, r in enumerate(recs):
        await store.add_request(r, bytes([i]))
    await store.mark_running(recs[1].id, 200.0)
    await store.finish_request(recs[2].id, Status.CANCELLED, 201.0, None, None)
    active = await store.active_requests()
    assert [(a.seq, a.record.id, a.record.status, a.op) for a in active] == [
        (1, recs[0].id, Status.PENDING, b"\x00"), (2, recs[1].id, Status.RUNNING, b"\x01"),
        (4, recs[3].id, Status.PENDING, b"\x03")]
    assert await store.count_requests() == {"pending": 2, "running": 1, "cancelled": 1}


async def test_listing_pages_newest_first_by_user(store):
    recs = [req(i, uid=1000 + i % 2) for i in range(12)]
    for r in recs:
        await store.add_request(r, b"")
    seq = {a.record.id: a.seq for a in await store.active_requests()}
    ids = [r.id for r in reversed(recs)]
    assert [r.id for r in await store.list_requests(None, 5)] == ids[:5]
    assert await store.list_requests(None, 100) == list(reversed(recs))
    older = await store.list_requests(None, 3, before_seq=seq[recs[6].id])
    assert [r.id for r in older] == [recs[5].id, recs[4].id, recs[3].id]
    mine = await store.list_requests(1001, 100, before_seq=seq[recs[6].id])
    assert [r.id for r in mine] == [recs[5].id, recs[3].id, recs[1].id]
    assert [r.id for r in await store.list_requests(1000, 2)] == [recs[10].id, recs[8].id]


async def test_prefix_lookup_limit_owner_and_bounds(store):
    ids = [f"abc{c}{i:x}-x" for i, c in enumerate("def" * 4)]   # the letter after the prefix
    for i, rid in enumerate(ids):
        await store.add_request(req(i, uid=1000 + i % 3, rid=rid), b"")
    for rid in ("abb-x", "abd-x", "ab"):
        await store.add_request(req(99, rid=rid), b"")
    assert len(await store.request_ids_with_prefix("abc")) == 10          # the default limit
    assert sorted(await store.request_ids_with_prefix("abc", limit=50)) == sorted(ids)
    assert sorted(await store.request_ids_with_prefix("abc", limit=50, uid=1001)) == sorted(
        ids[1::3])
    assert await store.request_ids_with_prefix("abcf5", uid=1002) == ["abcf5-x"]
    assert await store.request_ids_with_prefix("abcf5", uid=1000) == []
    assert await store.request_ids_with_prefix("zz") == []


async def test_retention_finds_and_deletes_what_finished_before_a_cutoff(store):
    recs = [req(i) for i in range(5)]
    for i, r in enumerate(recs):
        await store.add_request(r, b"")
        if i < 4:
            await store.finish_request(r.id, Status.SUCCEEDED, 10.0 * i, None, None)
    assert sorted(await store.finished_before(20.0)) == [recs[0].id, recs[1].id]  # 20.0: not before
    assert len(await store.finished_before(1e9, limit=3)) == 3
    assert sorted(await store.finished_before(1e9)) == sorted(r.id for r in recs[:4])  # not pending
    await store.delete_requests([recs[0].id, recs[1].id])
    await store.delete_requests([])
    assert await store.get_request(recs[0].id) is None
    assert sorted(await store.finished_before(1e9)) == [recs[2].id, recs[3].id]
    assert await store.count_requests() == {"succeeded": 2, "pending": 1}


# ---- clusters and their jobs --------------------------------------------------------------

def cluster(name: str, at: float, **kw) -> ClusterRecord:
    return ClusterRecord(name=name, status=ClusterState.UP, infra="local", num_nodes=2, user="alice",
                         uid=1001, launched_at=at, **kw)


async def test_clusters_read_back_and_are_updated_in_place(store):
    nodes = [NodeInfo(rank=0, ip="127.0.0.1", host="local", path="/n0", cpus=2.0,
                      memory_bytes=1 << 30),
             NodeInfo(rank=1, ip="10.0.0.2", host="u@10.0.0.2:2222", user="u", port=2222,
                      identity_file="/k", proxy_jump="j", login_uid=1001)]
    c1 = cluster("c1", 50.0, resources="cpus=2", nodes=nodes, last_use=60.0,
                 status_reason="why", autostop=5.5, autostop_down=True)
    c0 = cluster("c0", 40.0)
    await store.save_cluster(c1, 3)
    await store.save_cluster(c0, 1)
    assert await store.load_clusters() == [(c0, 1), (c1, 3)]          # by launch time
    # Saved again: what changes is updated, who launched it and when stay.
    c1b = msgspec.structs.replace(c1, status=ClusterState.STOPPED, infra="ssh", num_nodes=1, last_use=70.0,
                                  resources="cpus=4", nodes=nodes[:1], status_reason="",
                                  autostop=-1.0, autostop_down=False)
    await store.save_cluster(msgspec.structs.replace(c1b, user="mallory", uid=6,
                                                     launched_at=10.0), 9)
    assert await store.load_clusters() == [(c0, 1), (c1b, 9)]
    # Read back as the enum (what the daemon compares and sends), not a bare string.
    assert {type(c.status) for c, _ in await store.load_clusters()} == {ClusterState}


async def test_jobs_read_back_replace_and_go_with_their_cluster(store):
    jobs = [JobRecord(cluster="c1", job_id=i, name=f"j{i}", status=s, user="alice", uid=1001,
                      submitted_at=10.0 + i)
            for i, s in enumerate(JobStatus, start=1)]
    full = JobRecord(cluster="c2", job_id=1, name="other", status=JobStatus.SUCCEEDED, user="bob",
                     uid=1002, submitted_at=1.0, started_at=2.0, ended_at=3.0, exit_code=7,
                     request_id="r-1")
    await store.save_cluster(cluster("c1", 1.0), 8)
    await store.save_cluster(cluster("c2", 2.0), 2)
    for j in jobs:
        await store.save_job(j, f"h{j.job_id}".encode())
    await store.save_job(full, None)
    assert await store.get_job("c2", 1) == (full, None)
    assert await store.get_job("c1", 3) == (jobs[2], b"h3")
    assert await store.get_job("c1", 99) is None
    assert await store.jobs_of("c1") == list(reversed(jobs))
    assert {type(j.status) for j in await store.jobs_of("c1")} == {JobStatus}
    assert await store.jobs_of("c1", limit=2) == [jobs[6], jobs[5]]
    assert await store.job_of_request("c2", "r-1") == full
    assert await store.job_of_request("c1", "r-1") is None
    active = await store.active_jobs()
    assert sorted((j.cluster, j.job_id, h) for j, h in active) == [
        ("c1", 1, b"h1"), ("c1", 2, b"h2"), ("c1", 3, b"h3")]
    done = msgspec.structs.replace(jobs[2], status=JobStatus.SUCCEEDED, started_at=20.0, ended_at=21.0,
                                   exit_code=0)
    await store.save_job(done, b"h3b")
    assert await store.get_job("c1", 3) == (done, b"h3b")
    await store.delete_cluster("c1")
    assert [c.name for c, _ in await store.load_clusters()] == ["c2"]
    assert await store.jobs_of("c1") == [] and await store.get_job("c1", 1) is None
    assert await store.jobs_of("c2") == [full]


# ---- managed jobs ----------------------------------------------------------------------------

def mjob(i: int, status: ManagedJobStatus = ManagedJobStatus.PENDING, uid: int = 1001, **kw) -> ManagedJobRecord:
    return ManagedJobRecord(job_id=i, name=f"m{i}", status=status, user=f"u{uid}", uid=uid,
                            submitted_at=float(i), **kw)


async def test_managed_jobs_read_back_and_the_unfinished_are_found(store):
    assert await store.max_managed_job_id() == 0
    assert await store.managed_jobs(None) == []
    M = ManagedJobStatus
    jobs = [mjob(1), mjob(2, M.RUNNING, uid=1002, cluster="m2", attempt=2, reason="r"),
            mjob(3, M.SUCCEEDED), mjob(4, M.FAILED, teardown_pending=True), mjob(5, M.CANCELLING),
            mjob(6, M.CANCELLED, uid=1002)]
    for j in jobs:
        await store.add_managed_job(j, f"task{j.job_id}".encode())
    assert await store.max_managed_job_id() == 6
    assert await store.managed_jobs(None) == list(reversed(jobs))
    assert {type(j.status) for j in await store.managed_jobs(None)} == {M}
    assert await store.managed_jobs(1002) == [jobs[5], jobs[1]]
    assert await store.managed_jobs(None, ids=[2, 4]) == [jobs[3], jobs[1]]
    assert await store.managed_jobs(1001, ids=[2, 4]) == [jobs[3]]
    assert await store.managed_jobs(None, limit=2) == [jobs[5], jobs[4]]
    assert await store.managed_jobs(None, limit=1) == [jobs[5]]
    assert await store.unfinished_managed_jobs() == [
        (jobs[0], b"task1"), (jobs[1], b"task2"), (jobs[3], b"task4"), (jobs[4], b"task5")]
    # Its teardown done, a finished job is no longer anybody's work; a job that finished
    # with its cluster still up becomes some.
    j4 = msgspec.structs.replace(jobs[3], teardown_pending=False)
    j3 = msgspec.structs.replace(jobs[2], teardown_pending=True, exit_code=0)
    j1 = msgspec.structs.replace(jobs[0], status=M.STARTING, attempt=1)
    for j in (j4, j3, j1):
        await store.save_managed_job(j)
    assert [j for j, _ in await store.unfinished_managed_jobs()] == [j1, jobs[1], j3, jobs[4]]
    assert await store.managed_jobs(None, ids=[4]) == [j4]


async def test_a_listing_or_a_retention_pass_takes_at_most_1000_rows(store):
    recs = [req(i) for i in range(1001)]
    await asyncio.gather(*(store.add_request(r, b"") for r in recs))
    await asyncio.gather(*(store.finish_request(r.id, Status.SUCCEEDED, 1.0, None, None)
                           for r in recs))
    assert len(await store.finished_before(2.0)) == 1000
    await asyncio.gather(*(store.save_job(JobRecord(cluster="c", job_id=i, name="j",
                                                    status=JobStatus.SUCCEEDED, user="u", uid=1,
                                                    submitted_at=1.0), None)
                           for i in range(1001)))
    assert len(await store.jobs_of("c")) == 1000


# ---- the writer ------------------------------------------------------------------------------

async def test_each_awaited_write_is_one_commit(store):
    assert (store.commits, store.rows_written) == (0, 0)
    for i in range(3):
        await store.add_request(req(i), b"")
    assert (store.commits, store.rows_written) == (3, 3)


async def test_a_mixed_batch_runs_each_statement_with_its_own_arguments(store):
    a, b, c, d = req(1), req(2), req(3), req(4)
    await store.add_request(a, b"a")
    before = store.commits
    # Queued together: one transaction, runs of the same statement batched, in order.
    await asyncio.gather(store.add_request(b, b"b"), store.add_request(c, b"c"),
                         store.mark_running(a.id, 5.0), store.mark_running(b.id, 6.0),
                         store.finish_request(c.id, Status.SUCCEEDED, 7.0, b"rc", None),
                         store.add_request(d, b"d"), store.mark_pending(b.id))
    assert store.commits == before + 1 and store.rows_written == 8
    got = {r.id: r for r in await store.list_requests(None, 10)}
    assert got == {
        a.id: msgspec.structs.replace(a, status=Status.RUNNING, started_at=5.0),
        b.id: b,
        c.id: msgspec.structs.replace(c, status=Status.SUCCEEDED, finished_at=7.0),
        d.id: d}


async def test_flush_waits_for_writes_nobody_awaited(store):
    await store.flush()                          # nothing queued: returns at once
    futs = [store.add_request(req(i), b"") for i in range(5)]
    await store.flush()
    assert all(f.done() and f.exception() is None for f in futs)
    assert len(await store.list_requests(None, 10)) == 5


async def test_close_is_safe_twice_and_before_open(tmp_path):
    await Store(tmp_path / "never.db").close()
    s = Store(tmp_path / "s.db")
    await s.open()
    s.add_request(req(1), b"")                   # queued, not awaited: close commits it
    await s.close()
    await s.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1


# ---- the file across versions -------------------------------------------------------------

async def test_reopening_keeps_everything(tmp_path):
    s = Store(tmp_path / "s.db")
    await s.open()
    r = req(1)
    await s.add_request(r, b"op")
    await s.close()
    s = Store(tmp_path / "s.db")
    await s.open()                               # at the current version: no migration
    try:
        assert await s.get_request(r.id) == (r, None)
    finally:
        await s.close()


def _v1_file(path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("INSERT INTO requests (id, name, queue, status, uid, user, op, created_at)"
                   " VALUES ('old', 'launch', 'long', 'pending', 1000, 'u', x'80', 1.0)")
        db.execute("PRAGMA user_version = 1")


async def test_an_old_file_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "s.db"
    _v1_file(path)
    s = Store(path)
    await s.open()
    try:
        assert (await s.get_request("old"))[0].name == "launch"
        await s.save_cluster(cluster("c", 1.0, autostop=3.0, autostop_down=True), 1)   # v2
        assert (await s.load_clusters())[0][0].autostop == 3.0
        await s.add_managed_job(mjob(1), b"t")                                       # v3
        assert await s.max_managed_job_id() == 1
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_a_migration_that_fails_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "s.db"
    _v1_file(path)
    with sqlite3.connect(path) as db:            # v2's second column already there: it fails
        db.execute("ALTER TABLE clusters ADD COLUMN autostop_down INTEGER")
    s = Store(path)
    with pytest.raises(sqlite3.OperationalError, match="duplicate column name: autostop_down"):
        await s.open()
    await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = [r[1] for r in db.execute("PRAGMA table_info(clusters)")]
        assert "autostop" not in columns          # v2's first statement rolled back too
