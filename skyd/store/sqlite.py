"""The database under the store: SQLite in WAL mode, synchronous=FULL, the daemon the single
writer.

Writes go through one writer task that batches whatever arrived while the previous
transaction was committing (group commit): a burst of submissions shares one fsync,
and every caller still awaits its own row being durable. A batch is one call on the
writer's own thread (BEGIN, its statements, COMMIT), so the loop hands it over and is
woken once, however many rows it holds. Reads use a second connection (aiosqlite), so a
long listing never waits behind a commit; each read runs whole in one call there, so it
sees every commit awaited before it. The tables' rows are written
and read by the classes built on this one (requests.py, clusters.py, managed.py).

When the database cannot be written (a full disk, a lock held by another process: see
faults.py), a write that records new work fails at once with a retryable error (nothing
was accepted), while a write that records what already happened (a request started or
ended, a job's step) is kept, in order, and tried again with a bounded back-off until
the database takes it: work in flight finishes once the fault is gone, without a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import aiosqlite

from skyd.store.faults import StoreUnavailable, store_fault
from skyd.store.schema import MIGRATIONS, statements

log = logging.getLogger("skyd.store")

# Seconds between tries of the writes a fault holds back: doubling, up to the cap.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0


class _Write:
    __slots__ = ("sql", "params", "future", "patient")

    def __init__(self, sql: str, params: tuple, future: asyncio.Future, patient: bool):
        self.sql, self.params, self.future = sql, params, future
        self.patient = patient      # tried again through a fault (else failed with it)


class Database:
    def __init__(self, path: Path, busy_timeout: float = 5.0):
        self.path = path
        # How long a write waits for a lock another process holds before it is a fault.
        self.busy_timeout = busy_timeout
        # The writer's connection lives on the writer's thread and is used only there.
        self._w: sqlite3.Connection | None = None
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="skyd-store-writer")
        self._r: aiosqlite.Connection | None = None
        self._pending: list[_Write] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self.commits = 0          # transactions committed (for metrics and tests)
        self.rows_written = 0
        self.fault: StoreUnavailable | None = None   # what writes wait out now, if anything
        self._fault_since = 0.0
        self._in_flight = False   # a batch is being committed
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._on_writer(self._open_writer)
            self._r = await aiosqlite.connect(self.path, isolation_level=None)
            await self._r.execute_fetchall(
                f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            await self.close()          # the writer's connection and thread too
            raise
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="store-writer")

    def _on_writer(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, *args)

    def _open_writer(self) -> None:
        w = sqlite3.connect(self.path, isolation_level=None)
        try:
            # busy_timeout first: switching to WAL may need to wait for another opener.
            w.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            w.execute("PRAGMA journal_mode = WAL")
            w.execute("PRAGMA synchronous = FULL")
            w.execute("PRAGMA foreign_keys = ON")
            _migrate(w, self.path)
        except BaseException:
            w.close()
            raise
        self._w = w

    async def close(self) -> None:
        if self._writer is not None:
            self._closing = True        # a fault now fails what it would have held
            try:
                await self.flush()
            except StoreUnavailable as e:
                log.error("closing the store with writes it could not record: %s", e.message)
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        if self._r is not None:
            await self._r.close()
        if self._w is not None:
            await self._on_writer(self._w.close)
        self._r = self._w = None
        self._writer_thread.shutdown(wait=False)

    # ---- the writer (group commit) -----------------------------------------------------

    def _write(self, sql: str, params: tuple, patient: bool = True) -> asyncio.Future:
        """Queue a write; the future is done once it is committed. `patient=False` for a
        write that records new work: through a fault it fails at once (StoreUnavailable)
        rather than waiting for the fault to end."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(sql, params, fut, patient))
        self._wake.set()
        return fut

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (or, while closing, refused)."""
        if self._pending or self._in_flight:
            await self._write("SELECT 1", ())

    async def _write_loop(self) -> None:
        delay = RETRY_FIRST
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._in_flight = True
            try:
                held = await self._commit(batch)
            finally:
                self._in_flight = False
            if not held:
                delay = RETRY_FIRST
                continue
            # Ahead of anything queued since, in their order; tried again after a pause.
            self._pending[:0] = held
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            self._wake.set()

    async def _commit(self, batch: list[_Write]) -> list[_Write]:
        """Commit the batch; the writes a fault held back (to be tried again)."""
        assert self._w is not None
        try:
            await self._run_batch(batch)
        except Exception as e:  # noqa: BLE001 - reported to the callers
            await self._rollback()
            fault = store_fault(e, self.path)
            if fault is not None:
                return self._hold(batch, fault)
            # One bad statement must not fail its neighbours: redo them one by one.
            for i, item in enumerate(batch):
                try:
                    await self._run_batch([item])
                except Exception as e:  # noqa: BLE001 - reported to that caller
                    await self._rollback()
                    fault = store_fault(e, self.path)
                    if fault is not None:
                        return self._hold(batch[i:], fault)
                    if not item.future.done():
                        item.future.set_exception(e)
                else:
                    self._committed([item])
            return []
        self._committed(batch)
        return []

    def _committed(self, items: list[_Write]) -> None:
        if self.fault is not None:
            log.warning("the database takes writes again, after %.1f s",
                        time.monotonic() - self._fault_since)
            self.fault = None
        for item in items:
            if not item.future.done():
                item.future.set_result(None)

    def _hold(self, items: list[_Write], fault: StoreUnavailable) -> list[_Write]:
        """A fault: what records new work fails with it; the rest is held to be tried
        again (while closing, nothing is: it fails too)."""
        if self.fault is None:
            log.warning("%s; writes of what already happened wait until it can be written, "
                        "new work is refused meanwhile", fault.message)
            self._fault_since = time.monotonic()
        self.fault = fault
        held = []
        for item in items:
            if item.patient and not self._closing:
                held.append(item)
            elif not item.future.done():
                item.future.set_exception(fault)
        return held

    async def _run_batch(self, batch: list[_Write]) -> None:
        await self._on_writer(self._run_batch_here, batch)
        self.commits += 1
        self.rows_written += len(batch)

    def _run_batch_here(self, batch: list[_Write]) -> None:
        """On the writer's thread: one transaction, runs of one statement as executemany.
        (It reads only each write's sql and params, which nothing changes once queued.)"""
        conn = self._w
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        i = 0
        while i < len(batch):
            j = i + 1
            while j < len(batch) and batch[j].sql == batch[i].sql:
                j += 1
            if j - i == 1:
                conn.execute(batch[i].sql, batch[i].params)
            else:
                conn.executemany(batch[i].sql, [w.params for w in batch[i:j]])
            i = j
        conn.execute("COMMIT")

    async def _rollback(self) -> None:
        await self._on_writer(self._rollback_here)

    def _rollback_here(self) -> None:
        assert self._w is not None
        try:
            self._w.execute("ROLLBACK")
        except sqlite3.Error:
            pass            # no transaction open (or SQLite already rolled it back)

    # ---- reads -------------------------------------------------------------------------

    async def _all(self, sql: str, params: Iterable = ()) -> list:
        """One read, whole, in one call on the reader's thread. Never a statement left open
        across awaits: reads interleaved on one connection would share one read
        transaction, and with it a snapshot older than commits already awaited."""
        assert self._r is not None
        try:
            return list(await self._r.execute_fetchall(sql, tuple(params)))
        except sqlite3.OperationalError as e:
            fault = store_fault(e, self.path)
            if fault is None:
                raise
            raise fault from e


def _migrate(w: sqlite3.Connection, path: Path) -> None:
    (version,) = w.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise RuntimeError(f"{path} has schema v{version}, newer than this skyd "
                           f"(v{len(MIGRATIONS)}): upgrade skyd")
    for target in range(version + 1, len(MIGRATIONS) + 1):
        w.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements(MIGRATIONS[target - 1]):
                w.execute(stmt)
            w.execute(f"PRAGMA user_version = {target}")
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
