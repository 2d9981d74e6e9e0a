"""The clusters table and each cluster's jobs (the jobs table): one row per cluster with
its nodes and the next job id, one per job with its infra's handle."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from skyd.protocol import ClusterRecord, ClusterState, HeldSlice, JobRecord, JobStatus, NodeInfo
from skyd.store.schema import FINISHED_JOBS
from skyd.store.sqlite import Database

_enc = msgspec.msgpack.Encoder()
_nodes_dec = msgspec.msgpack.Decoder(list[NodeInfo])
_held_dec = msgspec.msgpack.Decoder(list[HeldSlice])
_JOB_COLS = ("cluster, job_id, name, status, uid, user, submitted_at, started_at, ended_at, "
             "exit_code, request_id")


def _job_record(row: Any) -> JobRecord:
    return JobRecord(cluster=row[0], job_id=row[1], name=row[2], status=JobStatus(row[3]),
                     uid=row[4], user=row[5], submitted_at=row[6], started_at=row[7],
                     ended_at=row[8], exit_code=row[9], request_id=row[10])


def _cluster_record(row: Any) -> ClusterRecord:
    return ClusterRecord(name=row[0], status=ClusterState(row[1]), infra=row[2],
                         num_nodes=row[3], uid=row[4], user=row[5], launched_at=row[6],
                         last_use=row[7], resources=row[8],
                         nodes=_nodes_dec.decode(row[9]) if row[9] else [],
                         status_reason=row[10], autostop=row[12], autostop_down=bool(row[13]),
                         held=_held_dec.decode(row[14]) if row[14] else [])


class ClusterRows(Database):
    # ---- clusters ---------------------------------------------------------------------

    def save_cluster(self, c: ClusterRecord, next_job_id: int) -> asyncio.Future:
        return self._write(
            "INSERT INTO clusters (name, status, infra, num_nodes, uid, user, launched_at,"
            " last_use, resources, nodes, status_reason, next_job_id, autostop, autostop_down,"
            " held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET status = excluded.status, infra = excluded.infra,"
            " num_nodes = excluded.num_nodes, last_use = excluded.last_use,"
            " resources = excluded.resources, nodes = excluded.nodes,"
            " status_reason = excluded.status_reason, next_job_id = excluded.next_job_id,"
            " autostop = excluded.autostop, autostop_down = excluded.autostop_down,"
            " held = excluded.held",
            (c.name, c.status, c.infra, c.num_nodes, c.uid, c.user, c.launched_at, c.last_use,
             c.resources, _enc.encode(c.nodes), c.status_reason, next_job_id, c.autostop,
             int(c.autostop_down), _enc.encode(c.held) if c.held else None))

    def delete_cluster(self, name: str) -> asyncio.Future:
        return asyncio.gather(self._write("DELETE FROM jobs WHERE cluster = ?", (name,)),
                              self._write("DELETE FROM clusters WHERE name = ?", (name,)))

    async def load_clusters(self) -> list[tuple[ClusterRecord, int]]:
        rows = await self._all(
            "SELECT name, status, infra, num_nodes, uid, user, launched_at, last_use, resources,"
            " nodes, status_reason, next_job_id, autostop, autostop_down, held FROM clusters"
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
        rows = await self._all(f"SELECT {_JOB_COLS}, handle FROM jobs"
                               f" WHERE status NOT IN {FINISHED_JOBS}")
        return [(_job_record(r), r[11]) for r in rows]
