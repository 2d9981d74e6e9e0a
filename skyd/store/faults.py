"""Store faults: SQLite errors that say the database cannot be written now (a full disk,
a lock held by another process past the busy timeout, a failing disk), as opposed to a
bad statement. The one place they become an error a client can act on: a retryable
UNAVAILABLE that says what failed and where, never "a bug in skyd"."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from skyd.protocol import ErrorCode, SkydError

# Primary result codes (the low byte of an extended one) of a database that cannot be
# written for now; any other error is the statement's own.
_FULL = {sqlite3.SQLITE_FULL}
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_DISK = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY}


class StoreUnavailable(SkydError):
    """The database cannot be written now; the same write may succeed later."""

    def __init__(self, message: str, hint: str):
        super().__init__(ErrorCode.UNAVAILABLE, message, hint)


def store_fault(e: BaseException, db: Path) -> StoreUnavailable | None:
    """The fault `e` is, for the database at `db`; None when it is not one."""
    code = getattr(e, "sqlite_errorcode", None)
    if not isinstance(e, sqlite3.OperationalError) or code is None:
        return None
    primary = code & 0xFF
    state = db.parent
    if primary in _FULL:
        return StoreUnavailable(f"the server cannot record this now: the disk under its state "
                                f"directory {state} is full",
                                f"retry once space is freed on that disk (df {state})")
    if primary in _LOCKED:
        return StoreUnavailable(f"the server cannot record this now: its database {db} is "
                                "locked by another process",
                                f"retry in a moment; fuser -v {db} shows who holds it")
    if primary in _DISK:
        return StoreUnavailable(f"the server cannot record this now: writing its database "
                                f"{db} failed ({e})",
                                f"retry in a moment; check the disk under {state}")
    return None
