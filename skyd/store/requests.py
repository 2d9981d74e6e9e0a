"""The requests table: every long request (durable before it is accepted), its outcome,
and the finished ones kept for `api status -a` until retention removes them.

Storing a new request fails at once through a store fault (faults.py: it is not
accepted); every later change of it waits the fault out (sqlite.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from skyd.protocol import Queue, RequestRecord, Status
from skyd.store.schema import ACTIVE_REQUESTS
from skyd.store.sqlite import Database

_REQ_COLS = "id, name, queue, status, uid, user, cluster, created_at, started_at, finished_at, error"


class StoredRequest(msgspec.Struct):
    """A request row with what the scheduler needs to run it again."""
    seq: int
    record: RequestRecord
    op: bytes
    cancel_requested: bool = False     # an acknowledged cancel: never run it again


def _request_record(row: Any) -> RequestRecord:
    return RequestRecord(id=row[0], name=row[1], queue=Queue(row[2]), status=Status(row[3]),
                         uid=row[4], user=row[5], cluster=row[6], created_at=row[7],
                         started_at=row[8], finished_at=row[9], error=row[10])


class RequestRows(Database):
    def add_request(self, rec: RequestRecord, op: bytes, patient: bool = False) -> asyncio.Future:
        """`patient`: wait out a store fault rather than fail (the daemon's own submissions,
        which have no client to retry them)."""
        return self._write(
            "INSERT INTO requests (id, name, queue, status, uid, user, cluster, op, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.id, rec.name, rec.queue.value, rec.status.value, rec.uid, rec.user,
             rec.cluster, op, rec.created_at), patient)

    def add_finished_request(self, rec: RequestRecord, op: bytes, result: bytes) -> asyncio.Future:
        """A request that is done the moment it is stored (jobs_launch: the job is queued)."""
        return self._write(
            "INSERT INTO requests (id, name, queue, status, uid, user, cluster, op, created_at,"
            " started_at, finished_at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.id, rec.name, rec.queue.value, rec.status.value, rec.uid, rec.user,
             rec.cluster, op, rec.created_at, rec.started_at, rec.finished_at, result),
            patient=False)

    def mark_running(self, request_id: str, started_at: float) -> asyncio.Future:
        return self._write("UPDATE requests SET status = ?, started_at = ? WHERE id = ?",
                           (Status.RUNNING.value, started_at, request_id))

    def mark_cancel_requested(self, request_id: str) -> asyncio.Future:
        """A cancel of a running request was asked for: after a restart it is finished
        as cancelled, never run again."""
        return self._write("UPDATE requests SET cancel_requested = 1 WHERE id = ?", (request_id,))

    def mark_pending(self, request_id: str) -> asyncio.Future:
        return self._write("UPDATE requests SET status = ?, started_at = NULL WHERE id = ?",
                           (Status.PENDING.value, request_id))

    def finish_request(self, request_id: str, status: Status, finished_at: float,
                       result: bytes | None, error: str | None) -> asyncio.Future:
        return self._write(
            "UPDATE requests SET status = ?, finished_at = ?, result = ?, error = ? WHERE id = ?",
            (status.value, finished_at, result, error, request_id))

    async def active_requests(self) -> list[StoredRequest]:
        rows = await self._all(
            f"SELECT seq, {_REQ_COLS}, op, cancel_requested FROM requests"
            f" WHERE status IN {ACTIVE_REQUESTS} ORDER BY seq")
        return [StoredRequest(r[0], _request_record(r[1:12]), r[12], bool(r[13])) for r in rows]

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
