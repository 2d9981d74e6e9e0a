"""All SQL lives here. SQLite in WAL mode, synchronous=FULL, the daemon the single writer.

Writes go through one writer task that batches whatever arrived while the previous
transaction was committing (group commit): a burst of submissions shares one fsync,
and every caller still awaits its own row being durable. Reads use a second
connection, so a long listing never waits behind a commit.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterable

import aiosqlite
import msgspec

from skyd.protocol import (MANAGED_STEPS, ClusterRecord, JobRecord, ManagedJobRecord, NodeInfo,
                           Queue, RequestRecord, Status)

_enc = msgspec.msgpack.Encoder()
_nodes_dec = msgspec.msgpack.Decoder(list[NodeInfo])
_mj_dec = msgspec.msgpack.Decoder(ManagedJobRecord)
# As written in the v3 partial index, so that SQLite can use it.
_ACTIVE_MJ = "(" + ", ".join(f"'{s}'" for s in MANAGED_STEPS) + ")"

MIGRATIONS: list[str] = [
    # v1: requests, clusters, jobs
    """
    CREATE TABLE requests (
        seq         INTEGER PRIMARY KEY,       -- arrival order
        id          TEXT NOT NULL UNIQUE,      -- uuid4, never reused
        name        TEXT NOT NULL,
        queue       TEXT NOT NULL,
        status      TEXT NOT NULL,
        uid         INTEGER NOT NULL,
        user        TEXT NOT NULL,
        cluster     TEXT,
        op          BLOB NOT NULL,             -- msgpack of the Op
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL,
        result      BLOB,
        error       TEXT
    );
    CREATE INDEX requests_active ON requests(status) WHERE status IN ('pending', 'running');
    CREATE INDEX requests_finished ON requests(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX requests_by_user ON requests(uid, seq);
    CREATE TABLE clusters (
        name          TEXT PRIMARY KEY,
        status        TEXT NOT NULL,
        infra         TEXT NOT NULL,
        num_nodes     INTEGER NOT NULL,
        uid           INTEGER NOT NULL,
        user          TEXT NOT NULL,
        launched_at   REAL NOT NULL,
        last_use      REAL NOT NULL,
        resources     TEXT NOT NULL DEFAULT '',
        nodes         BLOB,
        status_reason TEXT NOT NULL DEFAULT '',
        next_job_id   INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE jobs (
        cluster      TEXT NOT NULL,
        job_id       INTEGER NOT NULL,
        name         TEXT NOT NULL,
        status       TEXT NOT NULL,
        uid          INTEGER NOT NULL,
        user         TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        started_at   REAL,
        ended_at     REAL,
        exit_code    INTEGER,
        request_id   TEXT,
        handle       BLOB,                     -- infra-specific: pids, log paths
        PRIMARY KEY (cluster, job_id)
    );
    CREATE INDEX jobs_active ON jobs(status)
        WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'FAILED_SETUP', 'CANCELLED');
    """,
    # v2: autostop
    """
    ALTER TABLE clusters ADD COLUMN autostop REAL NOT NULL DEFAULT -1;
    ALTER TABLE clusters ADD COLUMN autostop_down INTEGER NOT NULL DEFAULT 0;
    """,
    # v3: managed jobs
    """
    CREATE TABLE managed_jobs (
        job_id      INTEGER PRIMARY KEY,       -- assigned by the daemon, in arrival order
        status      TEXT NOT NULL,
        uid         INTEGER NOT NULL,
        user        TEXT NOT NULL,
        teardown    INTEGER NOT NULL DEFAULT 0, -- its cluster still has to be torn down
        task        BLOB NOT NULL,             -- msgpack of the Task
        record      BLOB NOT NULL              -- msgpack of the ManagedJobRecord
    );
    CREATE INDEX managed_jobs_unfinished ON managed_jobs(job_id)
        WHERE status IN ('PENDING', 'STARTING', 'RUNNING', 'RECOVERING', 'CANCELLING')
           OR teardown = 1;
    CREATE INDEX managed_jobs_by_user ON managed_jobs(uid, job_id);
    """,
]

_REQ_COLS = "id, name, queue, status, uid, user, cluster, created_at, started_at, finished_at, error"
_JOB_COLS = ("cluster, job_id, name, status, uid, user, submitted_at, started_at, ended_at, "
             "exit_code, request_id")


class StoredRequest(msgspec.Struct):
    """A request row with what the scheduler needs to run it again."""
    seq: int
    record: RequestRecord
    op: bytes


def _request_record(row: Any) -> RequestRecord:
    return RequestRecord(id=row[0], name=row[1], queue=Queue(row[2]), status=Status(row[3]),
                         uid=row[4], user=row[5], cluster=row[6], created_at=row[7],
                         started_at=row[8], finished_at=row[9], error=row[10])


def _job_record(row: Any) -> JobRecord:
    return JobRecord(cluster=row[0], job_id=row[1], name=row[2], status=row[3], uid=row[4],
                     user=row[5], submitted_at=row[6], started_at=row[7], ended_at=row[8],
                     exit_code=row[9], request_id=row[10])


def _cluster_record(row: Any) -> ClusterRecord:
    return ClusterRecord(name=row[0], status=row[1], infra=row[2], num_nodes=row[3], uid=row[4],
                         user=row[5], launched_at=row[6], last_use=row[7], resources=row[8],
                         nodes=_nodes_dec.decode(row[9]) if row[9] else [],
                         status_reason=row[10], autostop=row[12], autostop_down=bool(row[13]))


class _Write:
    __slots__ = ("sql", "params", "future")

    def __init__(self, sql: str, params: tuple, future: asyncio.Future):
        self.sql, self.params, self.future = sql, params, future


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._pending: list[_Write] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self.commits = 0          # transactions committed (for metrics and tests)
        self.rows_written = 0

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        self._w = await aiosqlite.connect(self.path, isolation_level=None)
        # busy_timeout first: switching to WAL may need to wait for another opener.
        await self._w.execute("PRAGMA busy_timeout = 5000")
        await self._w.execute("PRAGMA journal_mode = WAL")
        await self._w.execute("PRAGMA synchronous = FULL")
        await self._w.execute("PRAGMA foreign_keys = ON")
        await self._migrate()
        self._r = await aiosqlite.connect(self.path, isolation_level=None)
        await self._r.execute("PRAGMA busy_timeout = 5000")
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="store-writer")

    async def _migrate(self) -> None:
        assert self._w is not None
        async with self._w.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        assert row is not None            # PRAGMA user_version always answers one row
        (version,) = row
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path} has schema v{version}, newer than this skyd "
                               f"(v{len(MIGRATIONS)}): upgrade skyd")
        for target in range(version + 1, len(MIGRATIONS) + 1):
            await self._w.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _statements(MIGRATIONS[target - 1]):
                    await self._w.execute(stmt)
                await self._w.execute(f"PRAGMA user_version = {target}")
                await self._w.execute("COMMIT")
            except BaseException:
                await self._w.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        for conn in (self._r, self._w):
            if conn is not None:
                await conn.close()
        self._r = self._w = None

    # ---- the writer (group commit) -----------------------------------------------------

    def _write(self, sql: str, params: tuple) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(sql, params, fut))
        self._wake.set()
        return fut

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._pending:
            await self._write("SELECT 1", ())

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Write]) -> None:
        assert self._w is not None
        try:
            await self._run_batch(batch)
        except Exception:
            # One bad statement must not fail its neighbours: redo them one by one.
            await self._rollback()
            for item in batch:
                try:
                    await self._run_batch([item])
                except Exception as e:  # noqa: BLE001 - reported to that caller
                    await self._rollback()
                    if not item.future.done():
                        item.future.set_exception(e)
                else:
                    if not item.future.done():
                        item.future.set_result(None)
            return
        for item in batch:
            if not item.future.done():
                item.future.set_result(None)

    async def _run_batch(self, batch: list[_Write]) -> None:
        assert self._w is not None
        await self._w.execute("BEGIN IMMEDIATE")
        i = 0
        while i < len(batch):
            j = i + 1
            while j < len(batch) and batch[j].sql == batch[i].sql:
                j += 1
            if j - i == 1:
                await self._w.execute(batch[i].sql, batch[i].params)
            else:
                await self._w.executemany(batch[i].sql, [w.params for w in batch[i:j]])
            i = j
        await self._w.execute("COMMIT")
        self.commits += 1
        self.rows_written += len(batch)

    async def _rollback(self) -> None:
        assert self._w is not None
        try:
            await self._w.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - no transaction open
            pass

    # ---- reads helpers -------------------------------------------------------------------

    async def _all(self, sql: str, params: Iterable = ()) -> list:
        assert self._r is not None
        async with self._r.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    # ---- requests ----------------------------------------------------------------------

    def add_request(self, rec: RequestRecord, op: bytes) -> asyncio.Future:
        return self._write(
            "INSERT INTO requests (id, name, queue, status, uid, user, cluster, op, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.id, rec.name, rec.queue.value, rec.status.value, rec.uid, rec.user,
             rec.cluster, op, rec.created_at))

    def add_finished_request(self, rec: RequestRecord, op: bytes, result: bytes) -> asyncio.Future:
        """A request that is done the moment it is stored (jobs_launch: the job is queued)."""
        return self._write(
            "INSERT INTO requests (id, name, queue, status, uid, user, cluster, op, created_at,"
            " started_at, finished_at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.id, rec.name, rec.queue.value, rec.status.value, rec.uid, rec.user,
             rec.cluster, op, rec.created_at, rec.started_at, rec.finished_at, result))

    def mark_running(self, request_id: str, started_at: float) -> asyncio.Future:
        return self._write("UPDATE requests SET status = 'running', started_at = ? WHERE id = ?",
                           (started_at, request_id))

    def mark_pending(self, request_id: str) -> asyncio.Future:
        return self._write(
            "UPDATE requests SET status = 'pending', started_at = NULL WHERE id = ?", (request_id,))

    def finish_request(self, request_id: str, status: Status, finished_at: float,
                       result: bytes | None, error: str | None) -> asyncio.Future:
        return self._write(
            "UPDATE requests SET status = ?, finished_at = ?, result = ?, error = ? WHERE id = ?",
            (status.value, finished_at, result, error, request_id))

    async def active_requests(self) -> list[StoredRequest]:
        rows = await self._all(
            f"SELECT seq, {_REQ_COLS}, op FROM requests"
            " WHERE status IN ('pending', 'running') ORDER BY seq")
        return [StoredRequest(r[0], _request_record(r[1:12]), r[12]) for r in rows]

    async def get_request(self, request_id: str) -> tuple[RequestRecord, bytes | None] | None:
        rows = await self._all(f"SELECT {_REQ_COLS}, result FROM requests WHERE id = ?",
                               (request_id,))
        return (_request_record(rows[0]), rows[0][11]) if rows else None

    async def request_ids_with_prefix(self, prefix: str, limit: int = 10,
                                      uid: int | None = None) -> list[str]:
        # A range scan on the unique index: ids are lowercase hex and dashes.
        # `uid`: only that user's requests (what a non-admin may name).
        mine = "" if uid is None else " AND uid = ?"
        rows = await self._all(f"SELECT id FROM requests WHERE id >= ? AND id < ?{mine} LIMIT ?",
                               (prefix, prefix + "\uffff", *(() if uid is None else (uid,)),
                                limit))
        return [r[0] for r in rows]

    async def list_requests(self, uid: int | None, limit: int,
                            before_seq: int | None = None) -> list[RequestRecord]:
        where, params = [], []
        if uid is not None:
            where.append("uid = ?")
            params.append(uid)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = f"SELECT {_REQ_COLS} FROM requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [_request_record(r) for r in await self._all(sql, params)]

    async def count_requests(self) -> dict[str, int]:
        rows = await self._all("SELECT status, COUNT(*) FROM requests GROUP BY status")
        return {r[0]: r[1] for r in rows}

    async def finished_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        rows = await self._all(
            "SELECT id FROM requests WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?",
            (cutoff, limit))
        return [r[0] for r in rows]

    async def delete_requests(self, ids: list[str]) -> None:
        if ids:
            await asyncio.gather(*(self._write("DELETE FROM requests WHERE id = ?", (i,))
                                   for i in ids))

    # ---- clusters ---------------------------------------------------------------------

    def save_cluster(self, c: ClusterRecord, next_job_id: int) -> asyncio.Future:
        return self._write(
            "INSERT INTO clusters (name, status, infra, num_nodes, uid, user, launched_at,"
            " last_use, resources, nodes, status_reason, next_job_id, autostop, autostop_down)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET status = excluded.status, infra = excluded.infra,"
            " num_nodes = excluded.num_nodes, last_use = excluded.last_use,"
            " resources = excluded.resources, nodes = excluded.nodes,"
            " status_reason = excluded.status_reason, next_job_id = excluded.next_job_id,"
            " autostop = excluded.autostop, autostop_down = excluded.autostop_down",
            (c.name, c.status, c.infra, c.num_nodes, c.uid, c.user, c.launched_at, c.last_use,
             c.resources, _enc.encode(c.nodes), c.status_reason, next_job_id, c.autostop,
             int(c.autostop_down)))

    def delete_cluster(self, name: str) -> asyncio.Future:
        return asyncio.gather(self._write("DELETE FROM jobs WHERE cluster = ?", (name,)),
                              self._write("DELETE FROM clusters WHERE name = ?", (name,)))

    async def load_clusters(self) -> list[tuple[ClusterRecord, int]]:
        rows = await self._all(
            "SELECT name, status, infra, num_nodes, uid, user, launched_at, last_use, resources,"
            " nodes, status_reason, next_job_id, autostop, autostop_down FROM clusters"
            " ORDER BY launched_at")
        return [(_cluster_record(r), r[11]) for r in rows]

    # ---- jobs ---------------------------------------------------------------------------

    def save_job(self, j: JobRecord, handle: bytes | None) -> asyncio.Future:
        return self._write(
            f"INSERT OR REPLACE INTO jobs ({_JOB_COLS}, handle)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (j.cluster, j.job_id, j.name, j.status, j.uid, j.user, j.submitted_at,
             j.started_at, j.ended_at, j.exit_code, j.request_id, handle))

    async def jobs_of(self, cluster: str, limit: int = 1000) -> list[JobRecord]:
        rows = await self._all(f"SELECT {_JOB_COLS} FROM jobs WHERE cluster = ?"
                               " ORDER BY job_id DESC LIMIT ?", (cluster, limit))
        return [_job_record(r) for r in rows]

    async def get_job(self, cluster: str, job_id: int) -> tuple[JobRecord, bytes | None] | None:
        rows = await self._all(f"SELECT {_JOB_COLS}, handle FROM jobs"
                               " WHERE cluster = ? AND job_id = ?", (cluster, job_id))
        return (_job_record(rows[0]), rows[0][11]) if rows else None

    async def job_of_request(self, cluster: str, request_id: str) -> JobRecord | None:
        rows = await self._all(f"SELECT {_JOB_COLS} FROM jobs WHERE cluster = ?"
                               " AND request_id = ?", (cluster, request_id))
        return _job_record(rows[0]) if rows else None

    async def active_jobs(self) -> list[tuple[JobRecord, bytes | None]]:
        rows = await self._all(
            f"SELECT {_JOB_COLS}, handle FROM jobs"
            " WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'FAILED_SETUP', 'CANCELLED')")
        return [(_job_record(r), r[11]) for r in rows]


    # ---- managed jobs ---------------------------------------------------------------------

    def add_managed_job(self, j: ManagedJobRecord, task: bytes) -> asyncio.Future:
        return self._write(
            "INSERT INTO managed_jobs (job_id, status, uid, user, teardown, task, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (j.job_id, j.status, j.uid, j.user, int(j.teardown_pending), task, _enc.encode(j)))

    def save_managed_job(self, j: ManagedJobRecord) -> asyncio.Future:
        return self._write(
            "UPDATE managed_jobs SET status = ?, teardown = ?, record = ? WHERE job_id = ?",
            (j.status, int(j.teardown_pending), _enc.encode(j), j.job_id))

    async def max_managed_job_id(self) -> int:
        rows = await self._all("SELECT MAX(job_id) FROM managed_jobs")
        return rows[0][0] or 0

    async def unfinished_managed_jobs(self) -> list[tuple[ManagedJobRecord, bytes]]:
        """Jobs still to drive: not finished, or finished with their cluster still up."""
        rows = await self._all(
            f"SELECT record, task FROM managed_jobs WHERE status IN {_ACTIVE_MJ}"
            " OR teardown = 1 ORDER BY job_id")
        return [(_mj_dec.decode(r[0]), r[1]) for r in rows]

    async def managed_jobs(self, uid: int | None, ids: list[int] | None = None,
                           limit: int = 0) -> list[ManagedJobRecord]:
        where, params = [], []
        if uid is not None:
            where.append("uid = ?")
            params.append(uid)
        if ids:
            where.append(f"job_id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        sql = "SELECT record FROM managed_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY job_id DESC"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        return [_mj_dec.decode(r[0]) for r in await self._all(sql, params)]


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def now() -> float:
    return time.time()
