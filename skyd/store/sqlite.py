"""The database under the store: SQLite in WAL mode, synchronous=FULL, the daemon the single
writer.

Writes go through one writer task that batches whatever arrived while the previous
transaction was committing (group commit): a burst of submissions shares one fsync,
and every caller still awaits its own row being durable. Reads use a second
connection, so a long listing never waits behind a commit. The tables' rows are written
and read by the classes built on this one (requests.py, clusters.py, managed.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterable

import aiosqlite

from skyd.store.schema import MIGRATIONS, statements


class _Write:
    __slots__ = ("sql", "params", "future")

    def __init__(self, sql: str, params: tuple, future: asyncio.Future):
        self.sql, self.params, self.future = sql, params, future


class Database:
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
                for stmt in statements(MIGRATIONS[target - 1]):
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

    # ---- reads -------------------------------------------------------------------------

    async def _all(self, sql: str, params: Iterable = ()) -> list:
        assert self._r is not None
        async with self._r.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())
