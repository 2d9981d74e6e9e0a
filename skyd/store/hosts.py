"""The hosts table: each host's GPUs as last detected (and its CPUs and memory), so that
after a restart placement knows them before the hosts answer again. The GPUs are kept as
the infra's msgpack (skyd.infra.gpus), which this layer does not read."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from skyd.store.sqlite import Database


class HostRow(NamedTuple):
    key: str              # "local", or ip:port of a pool's host
    cpus: float
    memory_bytes: int
    gpus: bytes | None    # msgpack of the detected GPUs
    error: str            # the last detection failed: why
    probed_at: float


class HostRows(Database):
    def save_host(self, row: HostRow) -> asyncio.Future:
        """A detection's result; a failed one (`error`) keeps what was stored before."""
        if row.error:
            return self._write(
                "INSERT INTO hosts (key, error, probed_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET error = excluded.error,"
                " probed_at = excluded.probed_at", (row.key, row.error, row.probed_at))
        return self._write(
            "INSERT INTO hosts (key, cpus, memory_bytes, gpus, error, probed_at)"
            " VALUES (?, ?, ?, ?, '', ?) ON CONFLICT(key) DO UPDATE SET"
            " cpus = CASE WHEN excluded.cpus > 0 THEN excluded.cpus ELSE hosts.cpus END,"
            " memory_bytes = CASE WHEN excluded.cpus > 0 THEN excluded.memory_bytes"
            " ELSE hosts.memory_bytes END, gpus = excluded.gpus, error = '',"
            " probed_at = excluded.probed_at",
            (row.key, row.cpus, row.memory_bytes, row.gpus, row.probed_at))

    async def load_hosts(self) -> list[HostRow]:
        rows = await self._all("SELECT key, cpus, memory_bytes, gpus, error, probed_at"
                               " FROM hosts ORDER BY key")
        return [HostRow(*r) for r in rows]
