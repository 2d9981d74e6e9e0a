"""The managed_jobs table: each job's record (msgpack) and task, with its status and
whether its cluster still has to be torn down as columns the queries filter on."""

from __future__ import annotations

import asyncio

import msgspec

from skyd.protocol import ManagedJobRecord
from skyd.store.schema import ACTIVE_MANAGED
from skyd.store.sqlite import Database

_enc = msgspec.msgpack.Encoder()
_mj_dec = msgspec.msgpack.Decoder(ManagedJobRecord)


class ManagedJobRows(Database):
    def add_managed_job(self, j: ManagedJobRecord, task: bytes) -> asyncio.Future:
        return self._write(
            "INSERT INTO managed_jobs (job_id, status, uid, user, teardown, task, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (j.job_id, j.status, j.uid, j.user, int(j.teardown_pending), task, _enc.encode(j)),
            patient=False)      # a submission: refused, not delayed, by a store fault

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
            f"SELECT record, task FROM managed_jobs WHERE status IN {ACTIVE_MANAGED}"
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
